from __future__ import annotations

import json
import os
import stat

import pytest

from audit.trail import TrailError, append, keygen, verify


@pytest.fixture
def chain(tmp_path):
    priv, pub = keygen(tmp_path / "keys")
    log = tmp_path / "audit.log"
    for i in range(4):
        r = tmp_path / f"r{i}" / "report.json"
        r.parent.mkdir()
        r.write_text(json.dumps({"report": i}))
        append(log, r, priv, kind="fairness")
    return log, priv, pub


def _lines(log):
    return log.read_text().splitlines()


def test_keygen_mode_and_no_overwrite(tmp_path):
    priv, pub = keygen(tmp_path)
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    before = priv.read_bytes()
    with pytest.raises(TrailError, match="--force"):
        keygen(tmp_path)
    assert priv.read_bytes() == before
    keygen(tmp_path, force=True)
    assert priv.read_bytes() != before


def test_intact_chain_verifies(chain):
    log, _, pub = chain
    res = verify(log, public_key=pub, check_files=True)
    assert res.ok and res.entries == 4


def test_edited_entry(chain):
    log, _, _ = chain
    lines = _lines(log)
    e = json.loads(lines[2])
    e["report_sha256"] = "0" * 64
    lines[2] = json.dumps(e, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    res = verify(log)
    assert not res.ok and res.first_bad == 2 and "edited" in res.reason


def test_edited_entry_with_recomputed_hash_fails_signature(chain):
    import hashlib

    from audit.trail import canonical

    log, _, _ = chain
    lines = _lines(log)
    e = json.loads(lines[1])
    e["kind"] = "pricing"
    body = {k: v for k, v in e.items() if k != "entry_hash"}
    e["entry_hash"] = hashlib.sha256(canonical(body)).hexdigest()
    lines[1] = json.dumps(e, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    res = verify(log)
    assert not res.ok and res.first_bad == 1 and "signature" in res.reason


def test_removed_entry(chain):
    log, _, _ = chain
    lines = _lines(log)
    del lines[1]
    log.write_text("\n".join(lines) + "\n")
    res = verify(log)
    assert not res.ok and res.first_bad == 1


def test_removed_last_entry_caught_by_head(chain):
    log, _, _ = chain
    log.write_text("\n".join(_lines(log)[:-1]) + "\n")
    res = verify(log)
    assert not res.ok and "end" in res.reason


def test_reordered_entries(chain):
    log, _, _ = chain
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    log.write_text("\n".join(lines) + "\n")
    res = verify(log)
    assert not res.ok and res.first_bad == 1


def test_foreign_key_rejected_when_pinned(chain, tmp_path):
    log, _, pub = chain
    other, _ = keygen(tmp_path / "other")
    r = tmp_path / "x.json"
    r.write_text("{}")
    append(log, r, other, kind="pricing")
    assert verify(log).ok  # self-consistent chain
    res = verify(log, public_key=pub)
    assert not res.ok and res.first_bad == 4 and "pinned" in res.reason


def test_report_file_changed(chain, tmp_path):
    log, _, _ = chain
    (tmp_path / "r3" / "report.json").write_text('{"report": 99}')
    res = verify(log, check_files=True)
    assert not res.ok and res.first_bad == 3


def test_world_readable_key_refused(tmp_path):
    priv, _ = keygen(tmp_path)
    os.chmod(priv, 0o644)
    r = tmp_path / "r.json"
    r.write_text("{}")
    with pytest.raises(TrailError, match="chmod 600"):
        append(tmp_path / "log", r, priv, kind="fairness")


def test_every_hashed_file_is_checked_by_default(tmp_path):
    priv, _ = keygen(tmp_path / "keys")
    log = tmp_path / "audit.log"
    d = tmp_path / "rep"
    d.mkdir()
    (d / "report.json").write_text("{}")
    (d / "report.html").write_text("<html></html>")
    e = append(log, d / "report.json", priv, kind="fairness", extra_files=[d / "report.html"])
    assert e["files"] == {"report.html": e["files"]["report.html"]}
    res = verify(log)
    assert res.ok and res.files_checked == 2
    (d / "report.html").write_text("<html>edited</html>")       # before: only report.json was re-hashed
    res = verify(log)
    assert not res.ok and "report.html" in res.reason and "changed" in res.reason
    assert verify(log, check_files=False).ok                      # the log-only opt-out
    (d / "report.html").unlink()
    res = verify(log)
    assert not res.ok and "missing" in res.reason
    (d / "report.json").unlink()                                  # before: a missing report passed
    res = verify(log)
    assert not res.ok and "missing" in res.reason


def test_a_line_that_is_not_json_is_tampering(chain):
    log, _, _ = chain
    lines = _lines(log)
    lines[2] = lines[2][:40]
    log.write_text("\n".join(lines) + "\n")
    res = verify(log)                                             # before: TrailError (usage error, exit 2)
    assert not res.ok and res.first_bad == 2 and "not JSON" in res.reason
