"""Fixtures shared with the federated tests: a small real CDNOW federation written to files."""

from tests.federated.conftest import cdnow_units  # noqa: F401
