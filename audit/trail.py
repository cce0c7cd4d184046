"""The audit trail: signed, hash-chained log of every report (hand-written: no library keeps one).

Log format: JSON lines, one entry per report::

    {"seq": 0, "timestamp": "...Z", "kind": "fairness", "report": "/abs/report.json",
     "report_sha256": "<hex>", "files": {"report.html": "<hex>"}, "prev_hash": "<hex of entry seq-1>",
     "public_key": "<base64 raw Ed25519>", "public_key_fingerprint": "<sha256 hex of raw key>",
     "signature": "<base64 Ed25519 over the canonical JSON of every field above>",
     "entry_hash": "<sha256 hex of the canonical JSON of every field above plus signature>"}

Canonical JSON = ``json.dumps(obj, sort_keys=True, separators=(",", ":"))``. The first entry's
``prev_hash`` is 64 zeros. Beside the log, ``LOG.head`` holds the signed (seq, entry_hash) of the
last entry, so cutting entries off the end is detected too. ``files`` names each extra file
relative to the report's folder (absolute when outside it).

:func:`verify` walks the log and names the first bad entry: a changed field breaks its
``entry_hash`` (and signature); a removed entry breaks ``seq`` continuity and the next entry's
``prev_hash``; reordered entries break both; a truncated tail disagrees with the head file.
With a pinned public key (``--public-key``) an attacker who rewrites the whole chain with their
own key is caught as well. What no local check can catch is a rollback of log and head
together to an earlier consistent state: publish the head hash elsewhere (a ticket) for that.
By default :func:`verify` also re-hashes every file an entry names (the report and, e.g., its
HTML): a missing or changed file fails; ``check_files=False`` checks the log alone.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel

GENESIS = "0" * 64
PRIVATE_NAME = "audit_signing.key"
PUBLIC_NAME = "audit_signing.pub"


class TrailError(ValueError):
    """A user-facing problem with keys or the log."""


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(pub: Ed25519PublicKey) -> str:
    """SHA-256 hex of the raw 32-byte public key."""
    return hashlib.sha256(_raw(pub)).hexdigest()


def keygen(directory: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write an Ed25519 key pair (PKCS8 PEM private key with mode 0600, PEM public key)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    priv, pub = d / PRIVATE_NAME, d / PUBLIC_NAME
    if not force and (priv.exists() or pub.exists()):
        raise TrailError(f"{priv} already exists; keep it, or pass --force to replace it "
                         "(entries signed with the old key then verify only with the old public key)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if priv.exists():
        priv.unlink()
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(priv, 0o600)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def load_private(path: str | Path) -> Ed25519PrivateKey:
    p = Path(path)
    if not p.exists():
        raise TrailError(f"{p}: no such signing key; create one with `fedseg audit keygen DIR`")
    if os.stat(p).st_mode & 0o077:
        raise TrailError(f"{p}: the signing key is readable by others; run chmod 600 {p}")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise TrailError(f"{p}: not a readable private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrailError(f"{p}: not an Ed25519 private key")
    return key


def load_public(path: str | Path) -> Ed25519PublicKey:
    p = Path(path)
    if not p.exists():
        raise TrailError(f"{p}: no such public key")
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except (ValueError, TypeError) as exc:
        raise TrailError(f"{p}: not a readable public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise TrailError(f"{p}: not an Ed25519 public key")
    return key


def _head_path(log: Path) -> Path:
    return log.with_name(log.name + ".head")


class _BadLine(TrailError):
    def __init__(self, index: int, line: int, message: str) -> None:
        super().__init__(message)
        self.index, self.line = index, line


def _read_entries(log: Path) -> list[dict]:
    if not log.exists():
        return []
    out = []
    for i, line in enumerate(log.read_text(errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _BadLine(len(out), i + 1, f"{log}: line {i + 1} is not JSON ({exc})") from None
        if not isinstance(e, dict):
            raise _BadLine(len(out), i + 1, f"{log}: line {i + 1} is not a JSON object")
        out.append(e)
    return out


def _file_key(path: str | Path, report: str | Path) -> str:
    """How an extra file is named in an entry: relative to the report's folder when inside it."""
    p, base = Path(path).resolve(), Path(report).resolve().parent
    try:
        return str(p.relative_to(base))
    except ValueError:
        return str(p)


def append(log: str | Path, report: str | Path, signing_key: str | Path, kind: str,
           extra_files: list[str | Path] = ()) -> dict:
    """Hash ``report`` (and ``extra_files``), sign, and append an entry to ``log``; return it."""
    log = Path(log)
    key = load_private(signing_key)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            entries = _read_entries(log)
        except _BadLine as exc:
            raise TrailError(f"{exc}; the log is damaged: run `fedseg audit verify {log}` and start a new log "
                             "rather than append to it") from None
        prev = entries[-1]["entry_hash"] if entries else GENESIS
        pub = key.public_key()
        body = {
            "seq": len(entries),
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "kind": kind,
            "report": str(Path(report).resolve()),
            "report_sha256": sha256_file(report),
            "files": {_file_key(f, report): sha256_file(f) for f in extra_files},
            "prev_hash": prev,
            "public_key": base64.b64encode(_raw(pub)).decode(),
            "public_key_fingerprint": fingerprint(pub),
        }
        body["signature"] = base64.b64encode(key.sign(canonical(body))).decode()
        body["entry_hash"] = hashlib.sha256(canonical(body)).hexdigest()
        fh.seek(0, os.SEEK_END)
        fh.write(json.dumps(body, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
        head = {"seq": body["seq"], "entry_hash": body["entry_hash"]}
        head["signature"] = base64.b64encode(key.sign(canonical(head))).decode()
        tmp = _head_path(log).with_suffix(".tmp")
        tmp.write_text(json.dumps(head))
        os.replace(tmp, _head_path(log))
    return body


class VerifyResult(BaseModel):
    ok: bool
    entries: int
    files_checked: int = 0
    first_bad: int | None = None  # seq position (0-based line index) of the first bad entry
    reason: str = ""
    head_hash: str | None = None


def _bad(i: int, n: int, reason: str) -> VerifyResult:
    return VerifyResult(ok=False, entries=n, first_bad=i, reason=f"entry {i}: {reason}")


def _check_entry_files(e: dict) -> tuple[int, str]:
    """(files checked, problem or ''): the report and every extra file must exist and match its hash."""
    report = Path(e["report"])
    if not report.exists():
        return 0, f"report file {report} is missing"
    if sha256_file(report) != e["report_sha256"]:
        return 0, f"report file {report} no longer matches its hash (changed)"
    n = 1
    for name, digest in (e.get("files") or {}).items():
        p = Path(name)
        p = p if p.is_absolute() else report.parent / p
        if not p.exists():
            return n, f"file {p} is missing"
        if sha256_file(p) != digest:
            return n, f"file {p} no longer matches its hash (changed)"
        n += 1
    return n, ""


def verify(log: str | Path, public_key: str | Path | None = None, check_files: bool = True) -> VerifyResult:
    """Check every entry's hash, signature, sequence and chain link, the head file and (unless
    ``check_files`` is False) every file whose hash an entry holds. A line that is not JSON is a
    tampered log, not an error of the caller."""
    log = Path(log)
    if not log.exists():
        raise TrailError(f"{log}: no such audit log")
    pinned = fingerprint(load_public(public_key)) if public_key else None
    try:
        entries = _read_entries(log)
    except _BadLine as exc:
        return VerifyResult(ok=False, entries=exc.index, first_bad=exc.index,
                            reason=f"entry {exc.index}: {exc} (edited)")
    files_checked = 0
    prev = GENESIS
    pub = None
    for i, e in enumerate(entries):
        try:
            body = {k: v for k, v in e.items() if k not in ("signature", "entry_hash")}
            if hashlib.sha256(canonical({**body, "signature": e["signature"]})).hexdigest() != e["entry_hash"]:
                return _bad(i, len(entries), "content does not match its entry_hash (edited)")
            if e["seq"] != i:
                return _bad(i, len(entries), f"seq {e['seq']} where {i} was expected (entry removed or reordered)")
            if e["prev_hash"] != prev:
                return _bad(i, len(entries), "prev_hash does not match the previous entry (removed or reordered)")
            pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(e["public_key"]))
            if fingerprint(pub) != e["public_key_fingerprint"]:
                return _bad(i, len(entries), "public key fingerprint does not match the key")
            if pinned and e["public_key_fingerprint"] != pinned:
                return _bad(i, len(entries), "signed by a key other than the pinned public key")
            pub.verify(base64.b64decode(e["signature"]), canonical(body))
        except InvalidSignature:
            return _bad(i, len(entries), "signature does not verify (edited)")
        except (KeyError, TypeError, ValueError) as exc:
            return _bad(i, len(entries), f"malformed entry ({exc})")
        if check_files:
            try:
                n, problem = _check_entry_files(e)
            except (KeyError, TypeError, AttributeError, OSError) as exc:
                n, problem = 0, f"cannot check its files ({exc})"
            files_checked += n
            if problem:
                return _bad(i, len(entries), problem)
        prev = e["entry_hash"]
    head_file = _head_path(log)
    if head_file.exists():
        try:
            head = json.loads(head_file.read_text(errors="replace"))
            if not isinstance(head, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return VerifyResult(ok=False, entries=len(entries), first_bad=max(len(entries) - 1, 0),
                                reason=f"the head file {head_file} is not valid ({exc})")
        n = len(entries)
        if head.get("seq") != n - 1 or head.get("entry_hash") != (entries[-1]["entry_hash"] if entries else None):
            return VerifyResult(ok=False, entries=n, first_bad=min(n, int(head.get("seq", n))),
                                reason=f"entry {n}: the head file records seq {head.get('seq')}, the log ends at "
                                       f"{n - 1} (entries removed from the end)")
        try:
            assert pub is not None
            pub.verify(base64.b64decode(head["signature"]), canonical({k: head[k] for k in ("seq", "entry_hash")}))
        except (InvalidSignature, AssertionError, KeyError):
            return VerifyResult(ok=False, entries=n, first_bad=n - 1, reason="the head file's signature does not verify")
    elif entries:
        return VerifyResult(ok=False, entries=len(entries), first_bad=len(entries) - 1,
                            reason=f"{head_file} is missing; the end of the log cannot be checked")
    return VerifyResult(ok=True, entries=len(entries), head_hash=prev, files_checked=files_checked)
