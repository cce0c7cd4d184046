"""Commands for Flower's Deployment Engine, built from fedseg's key folder and unit configs.

Nothing here is a network layer: the SuperLink, the SuperNodes and ``flwr`` are Flower's own
processes. This module only assembles their command lines and the ``flwr`` connection file
so a partner does not have to, and refuses insecure set-ups unless asked explicitly.

- :func:`superlink_args`: ``flower-superlink`` with TLS (the key folder's CA, certificate and
  key), SuperNode authentication, a SQLite state database (so a restarted SuperLink keeps the
  registered units) and runtime dependency installation off (otherwise every run would
  ``uv sync`` the project's dependencies, which on this machine pulls a CUDA torch).
- :func:`write_connection`: a named SuperLink connection in ``$FLWR_HOME/config.toml``, which
  ``flwr run . <name>`` and ``flwr supernode register ... <name>`` use.
- :func:`register_units`: ``flwr supernode register`` for every unit public key in the folder
  (``supernodes/<unit>.pub``, handed over by each unit, which made its key on its premises).

The unit side (``flower-supernode``) is :meth:`clients.unit_config.UnitConfig.supernode_args`.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from fedseg.flower_exec import flower_bin, flower_env
from privacy.keys import CA_CERT, SERVER_CERT, SERVER_KEY, SUPERNODE_DIR

#: Flower's SuperLink default port (Fleet, Control and Runtime APIs over one HTTP server).
DEFAULT_PORT = 8000


class DeployError(ValueError):
    """A deployment step cannot run as asked; the message says what to do."""


def flwr_home() -> Path:
    """``$FLWR_HOME`` or Flower's default ``~/.flwr``."""
    return Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))


def _key_files(keys_dir: Path) -> tuple[Path, Path, Path]:
    files = (keys_dir / CA_CERT, keys_dir / SERVER_CERT, keys_dir / SERVER_KEY)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DeployError(f"{keys_dir}: missing {', '.join(missing)}; make them with "
                          f"`fedseg keys init {keys_dir} --host <coordinator host>`.")
    return files


def superlink_args(keys_dir: Path | None, database: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                   insecure: bool = False) -> list[str]:
    """``flower-superlink`` arguments: TLS and SuperNode authentication unless ``insecure``."""
    args = [flower_bin("flower-superlink"), "--host", host, "--port", str(port), "--database", str(database),
            "--disable-runtime-dependency-installation"]
    if insecure:
        return [*args, "--insecure"]
    if keys_dir is None:
        raise DeployError("a secure SuperLink needs the key folder (`fedseg keys init DIR`); "
                          "pass --insecure only for local testing.")
    ca, cert, key = _key_files(keys_dir)
    return [*args, "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
            "--enable-supernode-auth"]


def write_connection(name: str, address: str, root_certificates: Path | None, insecure: bool = False,
                     home: Path | None = None, make_default: bool = True,
                     options: dict[str, object] | None = None) -> Path:
    """Add or replace the SuperLink connection ``name`` in ``$FLWR_HOME/config.toml``; other
    connections in the file are kept."""
    import tomli_w

    if not insecure and (root_certificates is None or not Path(root_certificates).is_file()):
        raise DeployError(f"root certificates {root_certificates} not found: give the federation's ca.crt "
                          "(or --insecure for a local test SuperLink).")
    home = home or flwr_home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    config = tomllib.loads(path.read_text()) if path.exists() else {}
    superlinks = config.setdefault("superlink", {})
    entry: dict[str, object] = {"address": address}
    if insecure:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(root_certificates).resolve())  # type: ignore[arg-type]
    if options:
        entry["options"] = dict(options)
    superlinks[name] = entry
    if make_default or "default" not in superlinks:
        superlinks["default"] = name
    path.write_text(tomli_w.dumps(config))
    return path


@dataclass
class Registration:
    unit: str
    public_key: Path
    ok: bool
    message: str


def unit_public_keys(keys_dir: Path, units: list[str] | None = None) -> list[Path]:
    """The ``supernodes/<unit>.pub`` files (all, or the named units)."""
    folder = keys_dir / SUPERNODE_DIR
    if units:
        paths = [folder / f"{u}.pub" for u in units]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DeployError(f"no public key for: {', '.join(missing)}")
        return paths
    paths = sorted(folder.glob("*.pub"))
    if not paths:
        raise DeployError(f"{folder}: no unit public keys (*.pub); each unit makes its key with `fedseg keys "
                          f"supernode --unit NAME DIR` on its own premises and hands over NAME.pub: put it here.")
    return paths


def private_keys_beside(keys_dir: Path) -> list[Path]:
    """Units' private keys found next to their public keys in the coordinator's folder (they
    belong on the units' premises only)."""
    return [p.with_suffix("") for p in sorted((keys_dir / SUPERNODE_DIR).glob("*.pub")) if p.with_suffix("").exists()]


def register_units(keys_dir: Path, connection: str, units: list[str] | None = None,
                   env: dict[str, str] | None = None) -> list[Registration]:
    """``flwr supernode register <unit>.pub <connection>`` for each unit; a key that is already
    registered is reported, not an error."""
    out = []
    for pub in unit_public_keys(keys_dir, units):
        proc = subprocess.run([flower_bin("flwr"), "supernode", "register", str(pub), connection],
                              capture_output=True, text=True, timeout=120, env=env)
        text = (proc.stdout + proc.stderr).strip()
        already = "already" in text.lower()
        out.append(Registration(pub.stem, pub, proc.returncode == 0 or already, text.splitlines()[-1] if text else ""))
    return out


# ------------------------------------------------------------------------------------------
# A local simulation SuperLink for `flwr run .`
# ------------------------------------------------------------------------------------------
#: Connection name `fedseg deploy local` writes (and makes the default) in $FLWR_HOME/config.toml.
LOCAL_CONNECTION = "fedseg-local"


@dataclass
class LocalSuperLink:
    """A SuperLink in simulation mode on loopback, started by :func:`start_local_superlink`."""

    pid: int
    address: str
    log: Path
    config: Path


def local_superlink_args(port: int) -> list[str]:
    """``flower-superlink`` in simulation mode on 127.0.0.1, never installing dependencies at run
    time (Flower's own managed local SuperLink does, and then downloads a CUDA build of torch)."""
    return [flower_bin("flower-superlink"), "--insecure", "--simulation", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port), "--fleet-api-address", f"127.0.0.1:{port + 1}",
            "--control-api-address", f"127.0.0.1:{port + 2}"]


def start_local_superlink(units: int, port: int, home: Path | None = None, timeout_s: float = 60.0) -> LocalSuperLink:
    """Start the SuperLink (detached, logging to ``$FLWR_HOME/fedseg-local/superlink.log``), wait
    until it serves, and make it the default connection with ``num-supernodes = units``."""
    import time

    home = home or flwr_home()
    folder = home / "fedseg-local"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "superlink.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(local_superlink_args(port), stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True, env=flower_env())
    deadline = time.monotonic() + timeout_s
    while "Application startup complete" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise DeployError(f"the local SuperLink did not start (is port {port} free?); see {log}")
        time.sleep(0.3)
    (folder / "superlink.pid").write_text(str(proc.pid))
    address = f"127.0.0.1:{port}"
    config = write_connection(LOCAL_CONNECTION, address, None, insecure=True, home=home,
                              options={"num-supernodes": int(units)})
    return LocalSuperLink(proc.pid, address, log, config)


def stop_local_superlink(home: Path | None = None) -> int | None:
    """Stop the SuperLink :func:`start_local_superlink` started; its pid, or None if none ran."""
    import signal

    pid_file = (home or flwr_home()) / "fedseg-local" / "superlink.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid = None  # type: ignore[assignment]
    pid_file.unlink()
    return pid
