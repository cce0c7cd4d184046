"""Secure-aggregation identities: each unit's Ed25519 signing key and the registry of public keys.

Deployment (each unit on its own premises)::

    fedseg keys secagg --unit north unit-keys/     # unit-keys/north.secagg.key (0600) + north.secagg.pub
    # the unit hands over north.secagg.pub only; anyone assembles the registry from public files:
    fedseg keys registry registry.json north.secagg.pub south.secagg.pub east.secagg.pub

A public key file is one line, ``fedseg-secagg-ed25519 <64 hex digits> <unit>``; the registry is
JSON ``{unit: hex public key}``. No function here writes two units' private keys, except
:func:`make_identities`, which serves simulations only (``fedseg simulate --secagg`` simulates
every unit on one machine).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.secagg import crypto
from privacy.secagg.config import SecAggError

PUBLIC_PREFIX = "fedseg-secagg-ed25519"
KEY_SUFFIX, PUB_SUFFIX = ".secagg.key", ".secagg.pub"


def fingerprint(public: bytes) -> str:
    """``SHA256:<base64>`` of a raw Ed25519 public key, for comparing keys out of band."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(public).digest()).decode().rstrip("=")


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_line(unit: str, public: bytes) -> str:
    return f"{PUBLIC_PREFIX} {public.hex()} {unit}\n"


def write_unit_identity(directory: str | Path, unit: str, force: bool = False) -> tuple[Path, Path, str]:
    """One unit's identity, made on its own premises: ``<unit>.secagg.key`` (PKCS#8 PEM, 0600) and
    ``<unit>.secagg.pub`` (its public key, to hand over). Returns both paths and the fingerprint.
    Raises :class:`privacy.keys.KeysExistError` if either file exists and not ``force``."""
    from privacy.keys import KeysExistError, _write, unit_names

    (name,) = unit_names([unit])
    folder = Path(directory).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        from privacy.keys import KeysError

        raise KeysError(f"{folder} exists and is not a directory")
    key_path, pub_path = folder / f"{name}{KEY_SUFFIX}", folder / f"{name}{PUB_SUFFIX}"
    existing = [p for p in (key_path, pub_path) if p.exists()]
    if existing and not force:
        raise KeysExistError(existing)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = crypto.new_identity()
    public = crypto.public_bytes(key)
    _write(key_path, _private_pem(key), private=True)
    _write(pub_path, public_line(name, public).encode(), private=False)
    return key_path, pub_path, fingerprint(public)


def read_public_identity(path: str | Path) -> tuple[str, bytes]:
    """(unit, raw public key) from a ``.secagg.pub`` file; :class:`privacy.keys.KeysError` otherwise
    (a private key, in particular, is refused: only public keys go into a registry)."""
    from privacy.keys import KeysError

    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysError(f"{source}: cannot read it ({type(exc).__name__})") from None
    if "PRIVATE KEY" in text:
        raise KeysError(f"{source} is a private key: only public key files (*.secagg.pub) go into the registry; "
                        "a unit's private key never leaves its premises")
    parts = text.split()
    if len(parts) != 3 or parts[0] != PUBLIC_PREFIX:
        raise KeysError(f"{source}: not a secure-aggregation public key (expected one line "
                        f"'{PUBLIC_PREFIX} <hex> <unit>', as `fedseg keys secagg` writes)")
    try:
        public = bytes.fromhex(parts[1])
    except ValueError:
        raise KeysError(f"{source}: the key is not hexadecimal") from None
    if len(public) != 32:
        raise KeysError(f"{source}: an Ed25519 public key is 32 bytes, got {len(public)}")
    return parts[2], public


def build_registry(public_files: list[str | Path], out: str | Path, force: bool = False) -> dict[str, bytes]:
    """``registry.json`` ({unit: hex public key}) from public key files only; refuses a unit or a key
    that appears twice, and an existing ``out`` unless ``force``."""
    from privacy.keys import KeysError, KeysExistError, _write

    if not public_files:
        raise KeysError("no public key files given")
    registry: dict[str, bytes] = {}
    for path in public_files:
        unit, public = read_public_identity(path)
        if unit in registry:
            raise KeysError(f"unit {unit!r} appears twice ({path})")
        if public in registry.values():
            raise KeysError(f"{path}: the same public key is already registered for another unit")
        registry[unit] = public
    target = Path(out).expanduser().resolve()
    if target.exists() and not force:
        raise KeysExistError([target])
    _write(target, (json.dumps({u: k.hex() for u, k in sorted(registry.items())}, indent=1) + "\n").encode(),
           private=False)
    return registry


def make_identities(folder: Path, units: list[str]) -> dict[str, Path]:
    """SIMULATION ONLY: an Ed25519 key per simulated unit (``<unit>.key``, 0600) and
    ``registry.json``, all in one folder, for ``fedseg simulate --secagg`` (which runs every unit
    on one machine). Deployed units make their own key (:func:`write_unit_identity`)."""
    folder.mkdir(parents=True, exist_ok=True)
    registry, paths = {}, {}
    for unit in units:
        key = crypto.new_identity()
        path = folder / f"{unit}.key"
        path.write_bytes(_private_pem(key))
        path.chmod(0o600)
        registry[unit] = crypto.public_bytes(key).hex()
        paths[unit] = path
    (folder / "registry.json").write_text(json.dumps(registry, indent=1))
    return paths


def load_registry(registry_path: str | Path) -> dict[str, bytes]:
    """The registry {unit: raw Ed25519 public key}; SecAggError if it is not one."""
    path = Path(registry_path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SecAggError(f"secure-aggregation registry {path}: unreadable ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise SecAggError(f"secure-aggregation registry {path}: expected a JSON object unit -> public key")
    registry = {}
    for unit, value in raw.items():
        try:
            public = bytes.fromhex(value)
        except (TypeError, ValueError):
            public = b""
        if len(public) != 32:
            raise SecAggError(f"secure-aggregation registry {path}: the key of {unit!r} is not 32 bytes of hex")
        registry[unit] = public
    return registry


def load_identity(key_path: str | Path, registry_path: str | Path, unit: str | None = None) -> tuple[Any, dict[str, bytes]]:
    """The unit's Ed25519 private key and the registry; with ``unit``, also checks the registry
    lists this unit under its own public key. SecAggError (one line) on any problem."""
    path = Path(key_path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SecAggError(f"secure-aggregation key {path}: not a readable unencrypted PEM private key "
                          f"({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SecAggError(f"secure-aggregation key {path}: not an Ed25519 key")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise SecAggError(f"secure-aggregation key {path} is readable by other users; run `chmod 600 {path}`")
    registry = load_registry(registry_path)
    if unit is not None and registry.get(unit) != crypto.public_bytes(key):
        raise SecAggError(f"the registry {registry_path} does not list unit {unit!r} with this unit's public key "
                          f"{fingerprint(crypto.public_bytes(key))}: it may have been altered, or the key replaced")
    return key, registry
