"""Fixtures for every test folder: the small CDNOW federation (tests/support/flower.py)."""

from tests.support.flower import cdnow_units  # noqa: F401 - a session fixture, shared by every folder
