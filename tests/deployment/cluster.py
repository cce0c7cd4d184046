"""A real Flower deployment on localhost for tests: SuperLink, SuperNodes and `flwr run`, all
started through fedseg's own deployment commands (``fedseg deploy ...``) as a partner would.

Every process is started in its own session and stopped with its whole process group (Flower
spawns ServerApp and ClientApp subprocesses).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, logs: list[Path] = (), interval: float = 0.5) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    tails = "\n".join(f"--- {p}:\n{p.read_text(errors='replace')[-2500:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


class Cluster:
    """Processes of one localhost federation, with logs under ``root``."""

    def __init__(self, root: Path, keys: Path) -> None:
        self.root, self.keys = root, keys
        self.home = root / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "NO_COLOR": "1", "TERM": "dumb",
                    "COLUMNS": "200", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.database = root / "superlink-state.db"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def fedseg(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "fedseg"), *args], env=self.env, cwd=self.root, capture_output=True,
                              text=True, timeout=timeout)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.log(name).open("ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    # -- coordinator ---------------------------------------------------------------------
    def start_superlink(self) -> None:
        self.spawn("superlink", [str(BIN / "fedseg"), "deploy", "superlink", str(self.keys), "--port",
                                 str(self.port), "--database", str(self.database)])
        wait_for(lambda: "Application startup complete" in self.log("superlink").read_text(errors="replace")
                 or self.procs["superlink"].poll() is not None, 90, "the SuperLink", [self.log("superlink")])
        assert self.procs["superlink"].poll() is None, self.log("superlink").read_text()[-3000:]

    def connect(self, name: str = "fedseg") -> None:
        result = self.fedseg("deploy", "connect", name, self.address, "--ca", str(self.keys / "ca.crt"))
        assert result.returncode == 0, result.stdout + result.stderr

    def register(self, *units: str, connection: str = "fedseg") -> subprocess.CompletedProcess:
        return self.fedseg("deploy", "register", str(self.keys), "--connection", connection,
                           *[a for u in units for a in ("--unit", u)])

    def superlink_log(self) -> str:
        return self.log("superlink").read_text(errors="replace")

    def unit_keys(self, unit: str) -> Path:
        """The unit's own key folder (its premises)."""
        return self.root / f"premises-{unit}"

    def make_unit_key(self, unit: str, hand_over: bool = True) -> None:
        """The unit makes its SuperNode key on its premises (`fedseg keys supernode`) and, unless told
        otherwise, hands its public key over: it is copied into the coordinator's supernodes/."""
        result = self.fedseg("keys", "supernode", str(self.unit_keys(unit)), "--unit", unit)
        assert result.returncode == 0, result.stdout + result.stderr
        if hand_over:
            import shutil

            shutil.copy(self.unit_keys(unit) / f"{unit}.pub", self.keys / "supernodes" / f"{unit}.pub")

    # -- units ---------------------------------------------------------------------------
    def write_unit(self, unit: str, data: Path, users: Path | None = None, **extra: object) -> Path:
        lines = [f'unit-id = "{unit}"', f'data-path = "{data}"', f'superlink = "{self.address}"',
                 f'root-certificates = "{self.keys / "ca.crt"}"',
                 f'auth-key = "{self.unit_keys(unit) / unit}"', f"clientapp-port = {free_port()}",
                 f'output-dir = "{self.root / ("out-" + unit)}"']
        if users is not None:
            lines.append(f'users-path = "{users}"')
        for key, value in extra.items():
            lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
        path = self.root / f"{unit}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_unit(self, unit: str, config: Path) -> subprocess.Popen:
        return self.spawn(unit, [str(BIN / "fedseg"), "deploy", "supernode", str(config)])

    def online_units(self, connection: str = "fedseg") -> int:
        listing = subprocess.run([str(BIN / "flwr"), "supernode", "list", connection], env=self.env,
                                 cwd=self.root, capture_output=True, text=True, timeout=120)
        return listing.stdout.count("online")

    # -- runs ----------------------------------------------------------------------------
    def flwr_run(self, name: str, run_config: str, connection: str = "fedseg") -> subprocess.Popen:
        return self.spawn(name, [str(BIN / "flwr"), "run", str(ROOT), connection, "--stream",
                                 "--run-config", run_config])

    # -- teardown ------------------------------------------------------------------------
    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (Flower's subprocesses)
            except ProcessLookupError:
                pass
