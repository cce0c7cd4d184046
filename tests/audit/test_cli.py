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
    assert r.exit_code == 1, r.output  # the default policy FAILs this model's calibration
    assert "four-fifths" in r.output and "FAIL" in r.output and "result: FAIL" in r.output
    assert "reference a (largest group)" in r.output
    rep = json.loads((tmp_path / "fair" / "report.json").read_text())
    g = rep["attributes"]["gender"]
    for k in ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
              "equal_opportunity_difference"):
        assert set(g[k]) == {"value", "ci_low", "ci_high"}
    assert g["groups"]["a"]["n"] > 0 and g["suppressed"][0]["group"] == "d" and g["suppressed"][0]["count"] == 12
    assert set(g["groups"]["b"]["fnr"]["ratio_to_reference"]) == {"value", "ci_low", "ci_high"}
    assert set(g["groups"]["b"]["false_omission_rate"]["difference_to_reference"]) == {"value", "ci_low", "ci_high"}
    assert {r["verdict"] for r in rep["rules"]} >= {"PASS", "FAIL", "NOT TESTED"} and rep["overall"]["verdict"] == "FAIL"
    page = (tmp_path / "fair" / "report.html").read_text()
    assert "<svg" in page and "NOT TESTED" in page and "29 CFR 1607.4(D)" in page

    tx = tmp_path / "tx.csv"
    generate_transactions(n_rows=30_000, n_customers=3000, n_items=50, n_weeks=5, premium_pct=3.0, seed=1).to_csv(tx, index=False)
    r = runner.invoke(app, ["audit", "pricing", "--input", str(tx), "--price", "price", "--item", "item_id",
                            "--time", "week", "--window", "raw", "--group", "loyalty", "--reference", "loyalty=new",
                            "--customer", "customer_id", "--returning", "returning", "--by", "category",
                            "--out", str(tmp_path / "price"), "--trail", str(log), "--signing-key", str(key)])
    assert r.exit_code == 1, r.output  # a FAILed check exits 1
    rep = json.loads((tmp_path / "price" / "report.json").read_text())
    loyal = [f for f in rep["findings"] if f["group"] == "loyal" and f["slice"] == "all"][0]
    assert loyal["flagged"] and {"premium_pct", "ci_low", "ci_high", "p_value", "attribute", "reference"} <= set(loyal)
    assert "FAIL" in r.output and "Holm p" in r.output and "clusters" in r.output
    assert "< 1e-300" in r.output  # before: "p 0"

    pub = keys / "audit_signing.pub"
    r = runner.invoke(app, ["audit", "verify", str(log), "--public-key", str(pub)])
    assert r.exit_code == 0 and "2 entries" in r.output and "4 files match" in r.output, r.output
    html = tmp_path / "fair" / "report.html"
    html.write_text(html.read_text().replace("Fairness audit", "Fairness audit (edited)"))
    r = runner.invoke(app, ["audit", "verify", str(log)])
    assert r.exit_code == 1 and "TAMPERED" in r.output and "report.html" in r.output
    r = runner.invoke(app, ["audit", "verify", str(log), "--log-only"])
    assert r.exit_code == 0 and "log only" in r.output
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
    assert r.exit_code in (0, 1) and "result:" in r.output, r.output  # 1: a rule FAILed on the noisy figures
    assert BudgetLedger(ledger).spent("shop0", "scores")[0] == pytest.approx(1.0, rel=1e-4)
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])   # 1.0 more would exceed 1.5
    assert r.exit_code == 2 and "this run asks 1.000" in " ".join(r.output.split())
    assert "remaining 0.500" in " ".join(r.output.split())
    assert BudgetLedger(ledger).spent("shop1", "scores")[0] == pytest.approx(1.0, rel=1e-4)   # nothing more charged


def _one_line_error(r):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    return lines[0]


def test_cli_flags_that_do_not_apply_are_errors(tmp_path):
    scored = tmp_path / "s.csv"
    scored_frame().to_csv(scored, index=False)
    base = ["audit", "fairness", "--input", str(scored), "--group", "gender", "--out", str(tmp_path / "o")]
    # before: --label was silently ignored next to --outcome
    assert "--outcome alone" in _one_line_error(runner.invoke(app, [*base, "--outcome", "offer", "--label", "churned"]))
    assert "--threshold" in _one_line_error(runner.invoke(app, [*base, "--outcome", "offer", "--threshold", "0.3"]))
    assert "--bootstrap" in _one_line_error(runner.invoke(app, [*base, "--outcome", "offer", "--bootstrap", "10"]))
    assert "--seed" in _one_line_error(runner.invoke(app, [*base, "--label", "churned", "--score", "score",
                                                           "--bootstrap", "0", "--seed", "3"]))
    assert "not an audited attribute" in _one_line_error(runner.invoke(
        app, [*base, "--label", "churned", "--score", "score", "--reference", "age=x"]))
    assert "--signing-key" in _one_line_error(runner.invoke(app, [*base, "--outcome", "offer", "--signing-key", "k"]))
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]]\nname = 'x'\nmetric = 'fpr'\n")
    assert "give min, max or both" in _one_line_error(runner.invoke(
        app, [*base, "--label", "churned", "--score", "score", "--policy", str(bad)]))
    fed = ["audit", "federated", "--unit", str(scored), "--engine", "inprocess", "--out", str(tmp_path / "f")]
    assert "--label" in _one_line_error(runner.invoke(app, [*fed, "--audit", "pricing", "--price", "score", "--item",
                                                            "gender", "--time", "region", "--label", "churned"]))
    assert "--customer" in _one_line_error(runner.invoke(app, [*fed, "--group", "gender", "--label", "churned",
                                                               "--score", "score", "--customer", "c"]))
    assert "--epsilon" in _one_line_error(runner.invoke(app, [*fed, "--group", "gender", "--label", "churned",
                                                              "--score", "score", "--ledger", "l.sqlite"]))
    assert "--ledger" in _one_line_error(runner.invoke(app, [*fed, "--group", "gender", "--label", "churned",
                                                             "--score", "score", "--epsilon", "1", "--dataset", "x"]))
    tx = tmp_path / "tx.csv"
    generate_transactions(n_rows=2000, n_customers=200, n_items=20, n_weeks=3, seed=1).to_csv(tx, index=False)
    pr = ["audit", "pricing", "--input", str(tx), "--price", "price", "--item", "item_id", "--time", "week",
          "--group", "loyalty", "--out", str(tmp_path / "p")]
    assert "--window raw" in _one_line_error(runner.invoke(app, pr))   # before: numbers taken as weeks silently
    assert "--customer" in _one_line_error(runner.invoke(app, [*pr, "--window", "raw", "--min-clusters", "5"]))
    assert "quantile bins need the pooled data" in _one_line_error(runner.invoke(
        app, ["audit", "federated", "--unit", str(tx), "--engine", "inprocess", "--out", str(tmp_path / "f"),
              "--audit", "pricing", "--price", "price", "--item", "item_id", "--time", "week", "--window", "raw",
              "--group", "customer_id", "--continuous", "customer_id"]))


def test_cli_not_tested_pricing_exits_0_and_says_so(tmp_path):
    tx = tmp_path / "tx.csv"
    generate_transactions(n_rows=2000, n_customers=200, n_items=20, n_weeks=3, seed=1).to_csv(tx, index=False)
    r = runner.invoke(app, ["audit", "pricing", "--input", str(tx), "--price", "price", "--item", "item_id",
                            "--time", "week", "--window", "raw", "--group", "loyalty", "--min-count", "100000",
                            "--out", str(tmp_path / "p")])
    assert r.exit_code == 0 and "result: NOT TESTED" in r.output and "PASS" not in r.output, r.output


def test_cli_federated_dp_presentation(tmp_path):
    """Noisy counts under the floor read 'suppressed: too small to release' (never n=-1), sizes are labelled
    noisy with their SD, verdicts say they were decided on noisy figures: console, JSON and HTML."""
    import io

    from rich.console import Console

    from audit import DPConfig, FairnessSpec, federated_fairness, write_report
    from audit.report_html import print_rules

    frame = scored_frame()
    paths = []
    for k, part in enumerate((frame.iloc[::2], frame.iloc[1::2])):
        path = tmp_path / f"shop{k}.parquet"
        part.to_parquet(path)
        paths.append(path)
    # CLI: the noise is fresh randomness, so make every group fall under the floor
    r = runner.invoke(app, ["audit", "federated", "--unit", str(paths[0]), "--unit", str(paths[1]), "--engine",
                            "inprocess", "--label", "churned", "--score", "score", "--group", "gender", "--bootstrap",
                            "0", "--epsilon", "0.5", "--min-group-size", "100000", "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert out.count("too small to release") >= 4 and "n=" not in out and "result: NOT TESTED" in out
    # seeded noise, coarse score bins (as docs/audit.md advises under DP): group d (12 rows) is under the floor
    spec = FairnessSpec(label="churned", score="score", groups=["gender"], bootstrap=0, score_bins=20)
    rep = federated_fairness(paths, spec, dp=DPConfig(epsilon=4.0, seed=0))
    a = rep.attributes["gender"]
    d = [s for s in a.suppressed if s.group == "d"][0]
    assert d.count is None and d.reason == "suppressed: too small to release"
    assert a.groups["a"].n_noise_sd > 0 and set(a.groups) == {"a", "b", "c"}
    assert rep.rules and all(x.noisy for x in rep.rules)
    assert all("noisy" in x.detail for x in rep.rules if x.verdict != "NOT TESTED")
    buf = io.StringIO()
    print_rules(rep, Console(file=buf, width=200))
    text = " ".join(buf.getvalue().split())
    assert "too small to release" in text and "(noisy, SD" in text and "noisy (DP)" in text and "n=-" not in text
    j, h = write_report(rep, tmp_path / "dp")
    page = h.read_text()
    assert "too small to release" in page and "(noisy, SD" in page and "noisy (DP)" in page and "n=-" not in page
    data = json.loads(j.read_text())
    assert data["rules"][0]["noisy"] is True and data["attributes"]["gender"]["groups"]["a"]["n_noise_sd"] > 0


def test_cli_every_user_error_is_one_line_exit_2(tmp_path):
    scored = tmp_path / "s.parquet"
    scored_frame().to_parquet(scored)
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"not parquet at all")
    not_toml = tmp_path / "p.toml"
    not_toml.write_text("[[rule]\nname=")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("garbage")
    log = tmp_path / "log"
    log.write_text("")
    fair = ["audit", "fairness", "--label", "churned", "--score", "score", "--group", "gender"]
    cases = [
        ["audit", "fairness", "--input", str(scored)],                                  # missing option
        [*fair, "--input", str(scored), "--out", "o", "--threshold", "abc"],            # bad value
        [*fair, "--input", str(scored), "--out", "o", "--nope"],                        # unknown option
        [*fair, "--input", str(bad_parquet), "--out", str(tmp_path / "o")],             # corrupt file
        [*fair, "--input", str(tmp_path), "--out", str(tmp_path / "o")],                # a folder
        [*fair, "--input", str(scored), "--out", str(tmp_path / "o"), "--policy", str(not_toml)],
        [*fair, "--input", str(scored), "--out", str(a_file), "--bootstrap", "0"],      # --out is a file
        ["audit", "verify", str(tmp_path / "missing.log")],
        ["audit", "verify", str(log), "--public-key", str(bad_key)],
        ["audit", "pricing", "--input", str(scored), "--price", "score", "--item", "gender", "--time", "region",
         "--out", str(tmp_path / "p"), "--flag-rule", "sometimes", "--group", "gender", "--window", "raw"],
    ]
    for args in cases:
        _one_line_error(runner.invoke(app, args))
