"""A real SuperLink with the keys `fedseg keys init` makes: TLS and SuperNode authentication enforced.

Starts ``flower-superlink`` (TLS, ``--enable-supernode-auth``) on a free localhost port with
``FLWR_HOME`` in a temporary directory, registers one unit's public key (made by that unit in its
own folder with ``make_unit_key``, as `fedseg keys supernode` does) with
``flwr supernode register``, then shows that

* the SuperNode with the registered key connects (it shows up ``online``),
* a SuperNode with an unregistered key is refused (Flower's exit code 305 in its log),
* a SuperNode without the federation's CA certificate cannot connect (TLS verification fails).

Every process started here, and the helper processes Flower spawns, is stopped in ``finally``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privacy.keys import init_keys, make_unit_key
from tests.deployment.cluster import free_port

pytestmark = pytest.mark.deployment

BIN = Path(sys.executable).parent


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` (from /proc), deepest last."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent_of.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _stop(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and everything it spawned (Flower starts detached helper processes)."""
    victims = _children(proc.pid)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for pid in victims:
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"SuperLink exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"SuperLink did not listen on {port}:\n{log.read_text()[-3000:]}")


def test_superlink_accepts_registered_unit_and_refuses_others(tmp_path):
    keys = init_keys(tmp_path / "keys")
    registered = make_unit_key(tmp_path / "premises-north", "north")
    unregistered = make_unit_key(tmp_path / "premises-south", "south")
    home = tmp_path / "flwr_home"
    home.mkdir()
    port = free_port()
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "NO_COLOR": "1"}
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "tls"\n\n[superlink.tls]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{keys.ca_cert}"\n')
    link_log = tmp_path / "superlink.log"
    started: list[subprocess.Popen] = []

    def spawn(args: list[str], log: Path) -> subprocess.Popen:
        proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        started.append(proc)
        return proc

    def supernode(key: Path, name: str, extra: list[str]) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        proc = spawn([str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}",
                      "--auth-supernode-private-key", str(key), "--port", str(free_port()), "--max-retries", "0",
                      *extra], log)
        return proc, log

    try:
        link = spawn([str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(keys.ca_cert),
                      "--ssl-certfile", str(keys.server_cert), "--ssl-keyfile", str(keys.server_key),
                      "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                      "--port", str(port)], link_log)
        _wait_for_port(port, link, link_log)

        reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(registered.public_key), "tls"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert reg.returncode == 0, reg.stdout + reg.stderr
        assert "registered successfully" in reg.stdout

        # The registered unit connects and stays up.
        good, good_log = supernode(registered.private_key, "registered", ["--root-certificates", str(keys.ca_cert)])
        deadline = time.time() + 60
        while time.time() < deadline and "SuperNode ID" not in good_log.read_text():
            assert good.poll() is None, good_log.read_text()[-3000:]
            time.sleep(0.5)
        assert good.poll() is None and "SuperNode ID" in good_log.read_text(), good_log.read_text()[-3000:]
        listing = subprocess.run([str(BIN / "flwr"), "supernode", "list", "tls"], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
        assert "online" in listing.stdout, listing.stdout + listing.stderr

        # An unregistered key is refused: Flower's exit code 305, process ends with an error.
        bad, bad_log = supernode(unregistered.private_key, "unregistered",
                                 ["--root-certificates", str(keys.ca_cert)])
        bad.wait(timeout=90)
        assert bad.returncode != 0
        text = bad_log.read_text()
        assert "Exit Code: 305" in text and "Failed to activate SuperNode" in text, text[-3000:]

        # Without the federation's CA certificate the TLS handshake fails (system roots do not trust it).
        blind, blind_log = supernode(registered.private_key, "no_ca", [])
        blind.wait(timeout=90)
        assert blind.returncode != 0
        text = blind_log.read_text()
        assert "CERTIFICATE_VERIFY_FAILED" in text, text[-3000:]
    finally:
        for proc in reversed(started):
            _stop(proc)
    for proc in started:
        assert proc.poll() is not None
