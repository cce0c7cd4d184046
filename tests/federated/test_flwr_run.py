"""`flwr run .` with Flower's own tooling: a local SuperLink in simulation mode, config from
pyproject.toml, the same ServerApp and ClientApp as `fedseg simulate`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedseg.checkpoint import load_checkpoint
from tests.deployment.cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def superlink(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    port = free_port()
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    log = open(tmp_path / "superlink.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--disable-runtime-dependency-installation",
         "--port", str(port), "--fleet-api-address", f"127.0.0.1:{free_port()}",
         "--control-api-address", f"127.0.0.1:{free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    try:
        deadline = time.time() + 60
        while "Application startup complete" not in (tmp_path / "superlink.log").read_text():
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("SuperLink did not start:\n" + (tmp_path / "superlink.log").read_text())
            time.sleep(0.5)
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_flwr_run_trains_with_pyproject_config(superlink, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "local", "--stream",
         "--run-config", f"num-server-rounds=2 output-dir='{out}'", "--federation-config", "num-supernodes=3"],
        env=superlink, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    checkpoint = load_checkpoint(out, name="model.npz")
    assert checkpoint is not None and checkpoint.round == 2
    history = checkpoint.history
    assert [r["round"] for r in history] == [0, 1, 2]
    assert history[-1]["auc"] > 0.74           # CDNOW split over 3 units by the pyproject default
    assert history[-1]["units_trained"] == 3
