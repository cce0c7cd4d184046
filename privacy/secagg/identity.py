"""Secure-aggregation identities: each unit's Ed25519 signing key and the registry of public keys.

The registry is JSON ``{unit: hex public key}``. :func:`make_identities` serves simulations only
(``fedseg simulate --secagg`` simulates every unit on one machine).
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


def make_identities(folder: Path, units: list[str]) -> dict[str, Path]:
    """SIMULATION ONLY: an Ed25519 key per simulated unit (``<unit>.key``, 0600) and
    ``registry.json``, all in one folder, for ``fedseg simulate --secagg`` (which runs every unit
    on one machine)."""
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
