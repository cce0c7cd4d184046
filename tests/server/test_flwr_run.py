"""`flwr run .` with Flower's own tooling: a local SuperLink in simulation mode, config from
pyproject.toml, the same ServerApp and ClientApp as `fedseg simulate`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedseg.checkpoint import load_checkpoint
from tests.deployment.cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def superlink(tmp_path):
    """The README's recipe: `fedseg deploy local` starts a simulation SuperLink (no runtime
    dependency installation) and makes it the default connection with 3 simulated units."""
    home = tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    port = free_port()
    while any(_busy(port + k) for k in (1, 2)):
        port = free_port()
    started = subprocess.run([str(BIN / "fedseg"), "deploy", "local", "--units", "3", "--port", str(port)],
                             env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "flwr run . --stream" in started.stdout
    try:
        yield env
    finally:
        stopped = subprocess.run([str(BIN / "fedseg"), "deploy", "local", "--stop"], env=env, capture_output=True,
                                 text=True, timeout=60)
        assert "stopped the local SuperLink (pid" in stopped.stdout, stopped.stdout + stopped.stderr


def _busy(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_flwr_run_trains_with_pyproject_config(superlink, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "--stream", "--run-config", f"num-server-rounds=2 output-dir='{out}'"],
        env=superlink, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"outputs: {out}" in result.stdout + result.stderr      # the run says where its outputs go
    checkpoint = load_checkpoint(out, name="model.npz")
    assert checkpoint is not None and checkpoint.round == 2
    history = checkpoint.history
    assert [r["round"] for r in history] == [0, 1, 2]
    assert history[-1]["auc"] > 0.74           # CDNOW split over 3 units by the pyproject default
    assert history[-1]["units_trained"] == 3
