"""fedseg keys: real certificates and OpenSSH keys on disk, checked with cryptography (and openssl/ssh-keygen).

Keys stay on their premises: the coordinator's command makes the CA and the server certificate
only; each unit's command makes that one unit's private key; registries are built from public
key files only."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from typer.testing import CliRunner

from privacy.keys import KeysError, KeysExistError, describe_keys, init_keys, make_unit_key

HOSTS = ["localhost", "127.0.0.1", "superlink.fedseg.example", "::1"]


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return init_keys(tmp_path_factory.mktemp("keys"), hosts=HOSTS, validity_days=30)


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    """Three units, each making its key in its own folder (its own premises)."""
    return [make_unit_key(tmp_path_factory.mktemp(f"premises_{k}"), f"unit_{k}") for k in range(3)]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify(ca: x509.Certificate, leaf: x509.Certificate, name: x509.GeneralName) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    PolicyBuilder().store(Store([ca])).time(now).build_server_verifier(name).verify(leaf, [])


def test_ca_is_a_ca_and_server_cert_has_the_sans(material):
    ca, server = _cert(material.ca_cert), _cert(material.server_cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.subject == ca.issuer == server.issuer
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["localhost", "superlink.fedseg.example"]
    assert sorted(san.get_values_for_type(x509.IPAddress), key=str) == sorted(
        [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")], key=str)
    days_left = (server.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86_400
    assert 29.9 < days_left <= 30
    server_key = serialization.load_pem_private_key(material.server_key.read_bytes(), None)
    assert server_key.public_key() == server.public_key()
    assert isinstance(server_key, ec.EllipticCurvePrivateKey) and server_key.curve.name == "secp384r1"


def test_server_cert_verifies_against_the_ca_for_every_host_only(material, tmp_path):
    ca, server = _cert(material.ca_cert), _cert(material.server_cert)
    _verify(ca, server, x509.DNSName("localhost"))
    _verify(ca, server, x509.DNSName("superlink.fedseg.example"))
    _verify(ca, server, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    _verify(ca, server, x509.IPAddress(ipaddress.ip_address("::1")))
    with pytest.raises(VerificationError):
        _verify(ca, server, x509.DNSName("other.example"))
    with pytest.raises(VerificationError):
        _verify(ca, server, x509.IPAddress(ipaddress.ip_address("10.0.0.1")))
    other = init_keys(tmp_path / "other")
    with pytest.raises(VerificationError):  # another federation's CA does not vouch for this server
        _verify(_cert(other.ca_cert), server, x509.DNSName("localhost"))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_agrees(material, tmp_path):
    ok = subprocess.run(["openssl", "verify", "-CAfile", str(material.ca_cert), "-verify_hostname", "localhost",
                         "-purpose", "sslserver", str(material.server_cert)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    other = init_keys(tmp_path / "other")
    bad = subprocess.run(["openssl", "verify", "-CAfile", str(other.ca_cert), str(material.server_cert)],
                         capture_output=True, text=True)
    assert bad.returncode != 0


def test_private_keys_are_owner_only(material, units):
    private = [material.ca_key, material.server_key, *(u.private_key for u in units)]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [material.ca_cert, material.server_cert, *(u.public_key for u in units)]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 != 0o077  # readable public files, not writable by others
        assert not stat.S_IMODE(path.stat().st_mode) & 0o022
    assert not list(material.directory.rglob(".*"))  # no temporary files left behind
    # the coordinator's folder holds no unit key at all
    assert sorted(p.name for p in material.directory.rglob("*") if p.is_file()) == \
        sorted(["ca.crt", "ca.key", "server.key", "server.pem"])


def test_unit_keys_are_openssh_p384_pairs(units):
    assert [u.name for u in units] == ["unit_0", "unit_1", "unit_2"]
    seen = set()
    for unit in units:
        private = serialization.load_ssh_private_key(unit.private_key.read_bytes(), password=None)
        line = unit.public_key.read_text()
        assert line.startswith("ecdsa-sha2-nistp384 ") and line.rstrip().endswith(unit.name)
        public = serialization.load_ssh_public_key(line.encode())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key() == public
        assert unit.private_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        assert sorted(p.name for p in unit.private_key.parent.iterdir()) == [unit.name, f"{unit.name}.pub"]
        seen.add(line.split()[1])
    assert len(seen) == 3  # a distinct key per unit


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_ssh_keygen_reads_the_keys(units):
    unit = units[0]
    fp = subprocess.run(["ssh-keygen", "-l", "-f", str(unit.public_key)], capture_output=True, text=True, check=True)
    assert fp.stdout.split()[:2] == ["384", unit.fingerprint]
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(unit.private_key)], capture_output=True, text=True,
                             check=True)
    assert derived.stdout.split()[:2] == unit.public_key.read_text().split()[:2]


def test_existing_files_are_never_overwritten_without_force(tmp_path):
    first = init_keys(tmp_path)
    before = {p: p.read_bytes() for p in first.files()}
    with pytest.raises(KeysExistError) as err:
        init_keys(tmp_path)
    assert sorted(err.value.existing) == sorted(before)
    assert "--force" in str(err.value) and str(first.ca_key) in str(err.value)
    assert {p: p.read_bytes() for p in first.files()} == before
    again = init_keys(tmp_path, force=True)
    assert all(p.read_bytes() != before[p] for p in again.files())
    assert stat.S_IMODE(again.ca_key.stat().st_mode) == 0o600
    unit = make_unit_key(tmp_path / "north", "north")
    key = unit.private_key.read_bytes()
    with pytest.raises(KeysExistError) as err:
        make_unit_key(tmp_path / "north", "north")
    assert [p.name for p in err.value.existing] == ["north", "north.pub"]
    assert unit.private_key.read_bytes() == key
    assert make_unit_key(tmp_path / "north", "north", force=True).private_key.read_bytes() != key


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(KeysError, match="neither an IP address nor a valid DNS name"):
        init_keys(tmp_path, hosts=["bad host!"])
    with pytest.raises(KeysError, match="not usable as file names"):
        make_unit_key(tmp_path, "../escape")
    with pytest.raises(KeysError, match="not usable as file names"):
        make_unit_key(tmp_path, "north.pub")
    assert not list(tmp_path.iterdir())  # nothing written by refused calls


def test_describe_reports_expiry_sans_and_chain(material, units, tmp_path):
    for unit in units:  # the public keys the units handed over
        shutil.copy(unit.public_key, material.directory / "supernodes" / unit.public_key.name)
    report = describe_keys(material.directory)
    by_name = {c.path.name: c for c in report.certificates}
    assert by_name["ca.crt"].is_ca and by_name["ca.crt"].verified_by_ca is None
    server = by_name["server.pem"]
    assert server.verified_by_ca and server.dns_names == ["localhost", "superlink.fedseg.example"]
    assert server.ip_addresses == ["127.0.0.1", "::1"]
    assert 29 < server.days_left <= 30
    assert [k.comment for k in report.supernode_keys] == ["unit_0", "unit_1", "unit_2"]
    assert all(k.private_key_mode is None for k in report.supernode_keys)  # private keys stay on the units
    own = describe_keys(units[0].private_key.parent)                          # a unit's own folder
    assert [(k.comment, k.private_key_mode) for k in own.supernode_keys] == [("unit_0", "0o600")]
    later = describe_keys(material.directory, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=40))
    assert {c.path.name: c.days_left for c in later.certificates}["server.pem"] < 0
    # a server certificate from another CA placed here does not verify
    other = init_keys(tmp_path / "other")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(material.ca_cert, mixed / "ca.crt")
    shutil.copy(other.server_cert, mixed / "server.pem")
    assert {c.path.name: c.verified_by_ca for c in describe_keys(mixed).certificates}["server.pem"] is False


def test_cli_init_show_and_refusal(tmp_path):
    from fedseg.cli import app

    runner = CliRunner()
    out = tmp_path / "k"
    res = runner.invoke(app, ["keys", "init", str(out), "--host", "localhost", "--host", "10.1.2.3", "--days", "10"])
    assert res.exit_code == 0, res.output
    assert f"fedseg deploy register {out} --connection fedseg" in res.output
    assert f"fedseg deploy superlink {out}" in res.output and "fedseg deploy supernode unit.toml" in res.output
    assert "fedseg keys supernode --unit NAME" in res.output and str(out / "supernodes") in res.output
    assert not any(p.is_file() for p in (out / "supernodes").iterdir())
    res = runner.invoke(app, ["keys", "init", str(out)])
    assert res.exit_code == 2 and "already exist" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["keys", "init", str(out), "--force"])
    assert res.exit_code == 0
    res = runner.invoke(app, ["keys", "show", str(out)])
    assert res.exit_code == 0, res.output
    assert "server.pem" in res.output and "127.0.0.1" in res.output
    assert "10.1.2.3" not in res.output  # --force rewrote the server certificate with the default hosts
    res = runner.invoke(app, ["keys", "show", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "fedseg keys init" in res.output
    res = runner.invoke(app, ["keys", "init", str(tmp_path / "x"), "--host", "no such host"])
    assert res.exit_code == 2 and "valid DNS name" in res.output


@pytest.mark.parametrize("args", [["--units", "3"], ["--unit", "north", "--unit", "south"], ["--unit", "north"]])
def test_cli_init_never_writes_unit_private_keys(tmp_path, args):
    # Today `keys init --units N` writes every unit's SuperNode private key into one folder.
    from fedseg.cli import app

    res = CliRunner().invoke(app, ["keys", "init", str(tmp_path / "k"), *args])
    assert res.exit_code == 2 and "own premises" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "k").exists()


def test_cli_a_unit_makes_its_own_supernode_key(tmp_path):
    from fedseg.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["keys", "supernode", str(tmp_path / "north-keys"), "--unit", "north"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "north-keys").iterdir()) == ["north", "north.pub"]
    assert stat.S_IMODE((tmp_path / "north-keys" / "north").stat().st_mode) == 0o600
    assert "north.pub" in res.output and "SHA256:" in res.output
    res = runner.invoke(app, ["keys", "supernode", str(tmp_path / "both"), "--unit", "north", "--unit", "south"])
    assert res.exit_code == 2 and "one unit per command" in res.output and not (tmp_path / "both").exists()
    res = runner.invoke(app, ["keys", "supernode", str(tmp_path / "north-keys"), "--unit", "north"])
    assert res.exit_code == 2 and "already exist" in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_secagg_identity_is_made_per_unit_and_the_registry_from_public_keys_only(tmp_path):
    import json

    from fedseg.cli import app

    runner = CliRunner()
    # Today `keys secagg DIR --unit north --unit south` writes both units' private keys.
    res = runner.invoke(app, ["keys", "secagg", str(tmp_path / "both"), "--unit", "north", "--unit", "south"])
    assert res.exit_code == 2 and "one unit per command" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "both").exists()
    for unit in ("north", "south", "east"):   # each on its own premises
        res = runner.invoke(app, ["keys", "secagg", str(tmp_path / unit), "--unit", unit])
        assert res.exit_code == 0, res.output
        assert sorted(p.name for p in (tmp_path / unit).iterdir()) == [f"{unit}.secagg.key", f"{unit}.secagg.pub"]
        assert stat.S_IMODE((tmp_path / unit / f"{unit}.secagg.key").stat().st_mode) == 0o600
    pubs = [str(tmp_path / u / f"{u}.secagg.pub") for u in ("north", "south", "east")]
    res = runner.invoke(app, ["keys", "registry", str(tmp_path / "registry.json"), *pubs])
    assert res.exit_code == 0, res.output
    registry = json.loads((tmp_path / "registry.json").read_text())
    assert sorted(registry) == ["east", "north", "south"]
    from privacy.secagg.identity import load_identity

    for unit in ("north", "south", "east"):
        key, reg = load_identity(tmp_path / unit / f"{unit}.secagg.key", tmp_path / "registry.json", unit)
        from cryptography.hazmat.primitives import serialization as ser

        assert reg[unit] == key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    # a private key is never accepted as registry input; nor a unit twice
    res = runner.invoke(app, ["keys", "registry", str(tmp_path / "r2.json"), pubs[0],
                              str(tmp_path / "south" / "south.secagg.key")])
    assert res.exit_code == 2 and "private key" in res.output and not (tmp_path / "r2.json").exists()
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["keys", "registry", str(tmp_path / "r3.json"), pubs[0], pubs[0]])
    assert res.exit_code == 2 and "twice" in res.output
    # identities are never overwritten without --force
    before = (tmp_path / "north" / "north.secagg.key").read_bytes()
    res = runner.invoke(app, ["keys", "secagg", str(tmp_path / "north"), "--unit", "north"])
    assert res.exit_code == 2 and "already exist" in res.output
    assert (tmp_path / "north" / "north.secagg.key").read_bytes() == before
