"""Flower's telemetry is off in every process fedseg runs, unless the operator turned it on."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fresh_python(code: str, **env: str) -> str:
    """What ``code`` prints in a fresh interpreter whose environment does not name
    FLWR_TELEMETRY_ENABLED (unless given in ``env``)."""
    clean = {k: v for k, v in os.environ.items() if k != "FLWR_TELEMETRY_ENABLED"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.strip()


def _read_by_flower(package: str, **env: str) -> str:
    """FLWR_TELEMETRY_ENABLED as Flower's telemetry module read it, after importing ``package``
    first (as the CLI, a ClientApp or a test does)."""
    return _fresh_python(f"import {package}; import flwr.supercore.telemetry as t; print(t.FLWR_TELEMETRY_ENABLED)",
                         **env)


@pytest.mark.parametrize("package", ["fedseg.cli", "clients.client_app", "server.server_app", "privacy.secagg.flower",
                                     "audit.flower_app", "simulations.runner"])
def test_importing_any_fedseg_package_turns_flowers_telemetry_off(package):
    """Before: "1" (Flower's default), so every simulation and deployed unit POSTed a machine id and
    the host's platform details to telemetry.flower.ai from a background thread."""
    assert _read_by_flower(package) == "0"


def test_an_operators_own_choice_is_kept():
    assert _read_by_flower("fedseg.cli", FLWR_TELEMETRY_ENABLED="1") == "1"


def test_flowers_programs_started_by_fedseg_deploy_inherit_it():
    code = "from fedseg.flower_exec import flower_env; print(flower_env().get('FLWR_TELEMETRY_ENABLED'))"
    assert _fresh_python(code) == "0"
