from __future__ import annotations

import pytest

import json

from typer.testing import CliRunner

from fedseg.cli import app
from simulations.transactions import generate_transactions
from tests.audit.conftest import scored_frame

runner = CliRunner()


def test_cli_fairness_pricing_trail_verify(tmp_path):
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["audit", "keygen", str(keys)]).exit_code == 0
    assert runner.invoke(app, ["audit", "keygen", str(keys)]).exit_code == 2
    scored = tmp_path / "scores.parquet"
    scored_frame().to_parquet(scored)
    log, key = tmp_path / "audit.log", keys / "audit_signing.key"
    r = runner.invoke(app, ["audit", "fairness", "--input", str(scored), "--label", "churned", "--score", "score",
                            "--group", "gender", "--group", "region", "--intersect", "--bootstrap", "100",
                            "--out", str(tmp_path / "fair"), "--trail", str(log), "--signing-key", str(key)])
    assert r.exit_code == 0, r.output
    assert "four-fifths" in r.output and ("PASS" in r.output or "FAIL" in r.output)
    rep = json.loads((tmp_path / "fair" / "report.json").read_text())
    g = rep["attributes"]["gender"]
    for k in ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
              "equal_opportunity_difference"):
        assert set(g[k]) == {"value", "ci_low", "ci_high"}
    assert g["groups"]["a"]["n"] > 0 and g["suppressed"][0]["group"] == "d"
    assert "data:image/png;base64," in (tmp_path / "fair" / "report.html").read_text()

    tx = tmp_path / "tx.csv"
    generate_transactions(n_rows=30_000, n_customers=3000, n_items=50, n_weeks=5, premium_pct=3.0, seed=1).to_csv(tx, index=False)
    r = runner.invoke(app, ["audit", "pricing", "--input", str(tx), "--price", "price", "--item", "item_id",
                            "--time", "week", "--window", "raw", "--group", "loyalty", "--reference", "loyalty=new",
                            "--customer", "customer_id", "--returning", "returning", "--by", "category",
                            "--out", str(tmp_path / "price"), "--trail", str(log), "--signing-key", str(key)])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "price" / "report.json").read_text())
    loyal = [f for f in rep["findings"] if f["group"] == "loyal" and f["slice"] == "all"][0]
    assert loyal["flagged"] and {"premium_pct", "ci_low", "ci_high", "p_value", "attribute", "reference"} <= set(loyal)
    assert "FAIL" in r.output

    pub = keys / "audit_signing.pub"
    r = runner.invoke(app, ["audit", "verify", str(log), "--public-key", str(pub), "--check-files"])
    assert r.exit_code == 0 and "2 entries" in r.output
    lines = log.read_text().splitlines()
    log.write_text("\n".join(reversed(lines)) + "\n")
    r = runner.invoke(app, ["audit", "verify", str(log)])
    assert r.exit_code == 1 and "entry 0" in r.output


def test_cli_user_errors(tmp_path):
    scored = tmp_path / "s.csv"
    scored_frame().to_csv(scored, index=False)
    r = runner.invoke(app, ["audit", "fairness", "--input", str(scored), "--label", "churned", "--score", "nope",
                            "--group", "gender", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "missing column" in r.output
    r = runner.invoke(app, ["audit", "fairness", "--input", str(tmp_path / "none.csv"), "--outcome", "offer",
                            "--group", "gender", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such file" in r.output
    r = runner.invoke(app, ["audit", "fairness", "--input", str(scored), "--outcome", "offer", "--group", "gender",
                            "--out", str(tmp_path / "o"), "--trail", str(tmp_path / "log")])
    assert r.exit_code == 2 and "--signing-key" in r.output
    r = runner.invoke(app, ["audit", "pricing", "--input", str(scored), "--price", "score", "--item", "gender",
                            "--time", "region", "--group", "gender", "--reference", "gender", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "GROUP=LEVEL" in r.output


def test_cli_federated_dp_audit_checks_and_records_the_ledger(tmp_path):
    from privacy.ledger import BudgetLedger

    frame = scored_frame()
    units = []
    for k, part in enumerate((frame.iloc[::2], frame.iloc[1::2])):
        path = tmp_path / f"shop{k}.parquet"
        part.to_parquet(path)
        units += ["--unit", str(path)]
    ledger = tmp_path / "ledger.sqlite"
    BudgetLedger(ledger).set_budget("*", "scores", 1.5, 1e-5)
    args = ["audit", "federated", *units, "--engine", "inprocess", "--label", "churned", "--score", "score",
            "--group", "gender", "--bootstrap", "50", "--epsilon", "1.0", "--ledger", str(ledger),
            "--dataset", "scores"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert BudgetLedger(ledger).spent("shop0", "scores")[0] == pytest.approx(1.0, rel=1e-4)
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])   # 1.0 more would exceed 1.5
    assert r.exit_code == 2 and "this run asks 1.000" in " ".join(r.output.split())
    assert "remaining 0.500" in " ".join(r.output.split())
    assert BudgetLedger(ledger).spent("shop1", "scores")[0] == pytest.approx(1.0, rel=1e-4)   # nothing more charged
