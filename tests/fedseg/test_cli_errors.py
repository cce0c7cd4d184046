"""Every user error on the command line is one 'error:' line with exit 2, never a traceback or a
framed usage box (issue 16, point 5): a sample of the bad invocations a newcomer tries."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedseg.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-inputs")
    (folder / "semi.csv").write_text("user_id;ts;event_type\nu1;31/12/2024;visit\n")
    (folder / "bad.parquet").write_bytes(b"garbage")
    (folder / "hdr.csv").write_text("user_id,ts\n")
    (folder / "empty.csv").write_text("")
    (folder / "bad.toml").write_text('[sweep]\nname="x"\n[grid]\nrounds=5\n')
    (folder / "notoml.toml").write_text("not toml [")
    (folder / "unit.toml").write_text('unit-id = "a"\n')
    return folder


CASES = [
    "--nope", "nope", "data --nope", "simulate --roundz 3",
    "data validate", "data validate --events {f}/nope.csv", "data validate --events {f}/semi.csv",
    "data validate --events {f}/empty.csv", "data validate --events {f}/hdr.csv",
    "data validate --events {f}/bad.parquet", "data validate --events {f}/semi.csv --sep ;;",
    "data validate --events {f}/semi.csv --encoding klingon", "data validate --events {f}",
    "features --events {f}/semi.csv --cutoff 2024-01-01", "features --events {f}/semi.csv --cutoff 97-09",
    "features --events {f}/semi.csv --cutoff 2024-01-01 --horizon-days -3",
    "score --model {f}/semi.csv", "score --model {f}/nope.npz",
    "simulate --epsilon 1", "simulate --privacy user", "simulate --privacy magic --epsilon 1", "simulate --units 1",
    "simulate --rounds 0", "simulate --dataset nope", "simulate --model transformer", "simulate --lr -1",
    "simulate --secagg --units 2", "simulate --privacy user --model gru --epsilon 2", "simulate --cutoff 1997-13-01",
    "segment --delta 1e-6", "segment --k 1", "segment --cutoff notadate",
    "sweep {f}/nope.toml", "sweep {f}/bad.toml", "sweep {f}/notoml.toml",
    "privacy epsilon", "privacy epsilon --noise-multiplier 1 --sample-rate 2", "privacy ledger --ledger {f}/no.sqlite",
    "privacy budget set --epsilon -1 --dataset x --ledger {f}/l.sqlite",
    "keys show {f}/nope", "keys registry {f}/out.json {f}/nope.pub",
    "deploy check {f}/unit.toml", "deploy check {f}/nope.toml", "deploy supernode {f}/notoml.toml",
    "audit verify {f}/nope.log", "audit federated --unit {f}/nope.csv --out {f}/o",
]


@pytest.mark.parametrize("command", CASES)
def test_a_user_error_is_one_line_and_exit_2(files, command):
    result = runner.invoke(app, command.format(f=files).split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception) or \
        isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert sum(line.startswith("error:") for line in lines) == 1, result.output
    assert "╭" not in result.output    # no framed box
