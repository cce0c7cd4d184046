"""TLS certificates and SuperNode key pairs for Flower's Deployment Engine, made with ``cryptography``.

Two steps, on two kinds of premises. The coordinator runs :func:`init_keys`, which writes into
its key folder::

    ca.key               CA private key (ECDSA P-384, PKCS#8 PEM, mode 0600)
    ca.crt               self-signed CA certificate (BasicConstraints CA:TRUE, keyCertSign)
    server.key           SuperLink TLS private key (ECDSA P-384, PKCS#8 PEM, mode 0600)
    server.pem           SuperLink certificate signed by the CA; subject alternative names
                         for every host (DNS names and IP addresses), serverAuth

Each unit runs :func:`make_unit_key` on its own premises, which writes into the unit's folder::

    <unit>               the unit's SuperNode authentication private key (ECDSA P-384,
                         OpenSSH PEM, mode 0600): ``flower-supernode --auth-supernode-private-key``
    <unit>.pub           its public key, one ``ecdsa-sha2-nistp384 AAAA... <unit>`` line

The unit hands over ``<unit>.pub`` only; the coordinator puts it in ``supernodes/`` of its key
folder and registers it (``fedseg deploy register``, i.e. ``flwr supernode register``). No
function here writes two units' private keys, nor a unit's private key on the coordinator.

Flower's SuperLink takes ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile
server.key``; SuperNodes and ``flwr`` trust ``ca.crt`` (``--root-certificates``,
``root-certificates`` in ``$FLWR_HOME/config.toml``). SuperNode authentication
(``--enable-supernode-auth``) needs TLS and the units' public keys registered.

Existing files are never overwritten unless ``force``: the error lists every file already
there. Private keys are written to a temporary file created with mode 0600 and renamed into
place, so no reader ever sees a partial key or a wider mode. Nothing here is hand-rolled
cryptography: key generation, signing and serialisation are ``cryptography``'s.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, Field

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
SUPERNODE_DIR = "supernodes"
PRIVATE_MODE = 0o600
_UNIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_LABEL = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}$")


class KeysError(ValueError):
    """Keys cannot be written as asked; the message says what is wrong and what to do."""


class KeysExistError(KeysError):
    """Some target files already exist and ``force`` was not given."""

    def __init__(self, existing: list[Path]) -> None:
        self.existing = existing
        listed = ", ".join(str(p) for p in existing)
        super().__init__(f"{len(existing)} key file(s) already exist and were left untouched: {listed}; "
                         "use another directory, or --force (force=True) to overwrite them.")


class UnitKeys(BaseModel):
    """One unit's SuperNode authentication key pair."""

    name: str
    private_key: Path = Field(description="OpenSSH PEM private key, mode 0600.")
    public_key: Path = Field(description="One-line OpenSSH public key (ecdsa-sha2-nistp384).")
    fingerprint: str = Field(description="SHA256:<base64> of the public key blob, as ssh-keygen -l prints.")


class KeyMaterial(BaseModel):
    """What :func:`init_keys` wrote (absolute paths): the coordinator's CA and server certificate."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    hosts: list[str]
    not_valid_after: dt.datetime = Field(description="Expiry of the CA and server certificates, UTC.")

    def files(self) -> list[Path]:
        """Every file written, private keys included."""
        return [self.ca_key, self.ca_cert, self.server_key, self.server_cert]


def parse_host(host: str) -> x509.GeneralName:
    """A subject alternative name for ``host``: an IP address (v4 or v6) or a DNS name."""
    text = host.strip().strip("[]")  # allow "[::1]"
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text or len(text) > 253 or not _DNS_LABEL.match(text):
        raise KeysError(f"host {host!r} is neither an IP address nor a valid DNS name")
    return x509.DNSName(text.lower())


def unit_names(units: list[str] | None = None, n_units: int | None = None) -> list[str]:
    """Unit names from an explicit list or a count (``unit_0 .. unit_{n-1}``, as the data files)."""
    if units and n_units is not None:
        raise KeysError("give either unit names or a number of units, not both")
    names = list(units) if units else [f"unit_{k}" for k in range(n_units or 0)]
    bad = [u for u in names if not _UNIT_NAME.match(u) or u.endswith(".pub")]
    if bad:
        raise KeysError(f"unit name(s) {bad} are not usable as file names; use letters, digits, '_', '.', '-'")
    dupes = sorted({u for u in names if names.count(u) > 1})
    if dupes:
        raise KeysError(f"unit name(s) {dupes} given more than once")
    return names


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write atomically; private files are created 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, PRIVATE_MODE if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ssh_fingerprint(public_line: bytes | str) -> str:
    """``SHA256:...`` fingerprint of an OpenSSH public key line (as ``ssh-keygen -l``)."""
    text = public_line.decode() if isinstance(public_line, bytes) else public_line
    blob = base64.b64decode(text.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def init_keys(
    out_dir: str | Path,
    hosts: list[str] | None = None,
    validity_days: int = 365,
    force: bool = False,
    now: dt.datetime | None = None,
) -> KeyMaterial:
    """Create the CA and the SuperLink server certificate (the coordinator's step).

    ``hosts`` (default ``localhost``, ``127.0.0.1``) become the server certificate's subject
    alternative names: every address the units dial must be among them. Certificates are valid
    from 5 minutes before ``now`` for ``validity_days`` days. Unit keys are not made here: each
    unit makes its own (:func:`make_unit_key`). Raises :class:`KeysExistError` listing the files
    already there unless ``force``; :class:`KeysError` for bad hosts.
    """
    if validity_days < 1:
        raise KeysError(f"validity must be at least one day, got {validity_days}")
    host_list = list(dict.fromkeys(hosts or DEFAULT_HOSTS))
    sans = [parse_host(h) for h in host_list]
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise KeysError(f"{out} exists and is not a directory")

    paths = {name: out / name for name in (CA_KEY, CA_CERT, SERVER_KEY, SERVER_CERT)}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not force:
        raise KeysExistError(existing)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)

    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    not_before = now - dt.timedelta(minutes=5)
    not_after = now + dt.timedelta(days=validity_days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedseg"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "fedseg federation CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedseg"),
                             x509.NameAttribute(NameOID.COMMON_NAME, host_list[0])])
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(server_name).issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    _write(paths[CA_KEY], _pem_key(ca_key), private=True)
    _write(paths[CA_CERT], ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths[SERVER_KEY], _pem_key(server_key), private=True)
    _write(paths[SERVER_CERT], server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    (out / SUPERNODE_DIR).mkdir(exist_ok=True, mode=0o700)  # where the units' public keys go
    return KeyMaterial(directory=out, ca_cert=paths[CA_CERT], ca_key=paths[CA_KEY], server_cert=paths[SERVER_CERT],
                       server_key=paths[SERVER_KEY], hosts=host_list, not_valid_after=not_after)


def make_unit_key(out_dir: str | Path, unit: str, force: bool = False) -> UnitKeys:
    """One unit's SuperNode authentication key pair, made on the unit's own premises:
    ``<out_dir>/<unit>`` (OpenSSH PEM, 0600) and ``<out_dir>/<unit>.pub`` (what the unit hands
    over for registration). Raises :class:`KeysExistError` unless ``force``."""
    (name,) = unit_names([unit])
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise KeysError(f"{out} exists and is not a directory")
    private_path, public_path = out / name, out / f"{name}.pub"
    existing = [p for p in (private_path, public_path) if p.exists()]
    if existing and not force:
        raise KeysExistError(existing)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(private_path, private, private=True)
    _write(public_path, public + f" {name}\n".encode(), private=False)
    return UnitKeys(name=name, private_key=private_path, public_key=public_path, fingerprint=ssh_fingerprint(public))


class CertificateInfo(BaseModel):
    """A certificate found by :func:`describe_keys`."""

    path: Path
    subject: str
    issuer: str
    is_ca: bool
    not_valid_before: dt.datetime
    not_valid_after: dt.datetime
    days_left: float
    dns_names: list[str]
    ip_addresses: list[str]
    verified_by_ca: bool | None = Field(None, description="Chain check against ca.crt (None for the CA itself).")


class PublicKeyInfo(BaseModel):
    """A SuperNode public key found by :func:`describe_keys`."""

    path: Path
    key_type: str
    comment: str
    fingerprint: str
    private_key_mode: str | None = Field(None, description="Octal mode of the matching private key, if present.")


class KeysReport(BaseModel):
    """What a key directory holds."""

    directory: Path
    certificates: list[CertificateInfo]
    supernode_keys: list[PublicKeyInfo]


def _verify_server(ca: x509.Certificate, leaf: x509.Certificate, at: dt.datetime) -> bool:
    """True when ``leaf`` chains to ``ca`` as a TLS server certificate for its first SAN."""
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    names = list(sans)
    if not names:
        return False
    first = names[0]
    subject = (x509.DNSName(first.value) if isinstance(first, x509.DNSName)
               else x509.IPAddress(first.value))
    verifier = PolicyBuilder().store(Store([ca])).time(at).build_server_verifier(subject)
    try:
        verifier.verify(leaf, [])
    except VerificationError:
        return False
    return True


def describe_keys(directory: str | Path, now: dt.datetime | None = None) -> KeysReport:
    """Certificates (expiry, SANs, chain check against ``ca.crt``) and SuperNode public keys in ``directory``."""
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise KeysError(f"{root} is not a directory; create keys with `fedseg keys init {directory}`")
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    ca: x509.Certificate | None = None
    if (root / CA_CERT).exists():
        ca = x509.load_pem_x509_certificate((root / CA_CERT).read_bytes())
    certs: list[CertificateInfo] = []
    for path in sorted([*root.glob("*.crt"), *root.glob("*.pem")]):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError:
            continue
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = san.get_values_for_type(x509.DNSName)
            ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            dns, ips = [], []
        verified = None if (is_ca or ca is None) else _verify_server(ca, cert, now)
        certs.append(CertificateInfo(
            path=path, subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), is_ca=is_ca,
            not_valid_before=cert.not_valid_before_utc, not_valid_after=cert.not_valid_after_utc,
            days_left=(cert.not_valid_after_utc - now).total_seconds() / 86_400, dns_names=dns, ip_addresses=ips,
            verified_by_ca=verified))
    keys: list[PublicKeyInfo] = []
    # a coordinator's folder keeps the units' public keys in supernodes/; a unit's folder its own
    publics = sorted((root / SUPERNODE_DIR).glob("*.pub")) + sorted(
        p for p in root.glob("*.pub") if not p.name.endswith(".secagg.pub"))
    for path in publics:
        parts = path.read_text().split()
        if len(parts) < 2:
            continue
        private = path.with_suffix("")
        keys.append(PublicKeyInfo(
            path=path, key_type=parts[0], comment=" ".join(parts[2:]), fingerprint=ssh_fingerprint(path.read_text()),
            private_key_mode=oct(private.stat().st_mode & 0o777) if private.exists() else None))
    return KeysReport(directory=root, certificates=certs, supernode_keys=keys)
