"""Fixtures of the value-loop tests: the small CDNOW federation of tests/federated."""

from tests.federated.conftest import cdnow_units  # noqa: F401 - a fixture, re-exported for this folder
