"""Tag system and behaviour matrix (issue 17, point 2)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from clients.features import build_features
from clients.tags import quantile_histograms, tag_columns, tag_users
from fedseg.config import FeatureConfig, TagPlan
from fedseg.tags import QUANTILE_EDGES, TagRuleError, load_rules, parse_rule, quantile_value
from tests.support.flower import small_cdnow, write_units
from tests.support.coordinator import random_events, run_coordinator


@pytest.mark.parametrize("text, column, says", [
    ("freqency >= 5", 1, "unknown feature 'freqency'; did you mean 'frequency'?"),
    ("frequency >= 5 and monetary_mean < q25(monetary_men)", 40, "unknown feature 'monetary_men'"),
    ("frequency >=", 13, "the rule ends too early"),
    ("frequency >= = 5", 14, "does not parse"),
    ("frequency + 1", 1, "a rule must be a condition"),
    ("frequency > 1 and 2", 19, "'and' joins conditions"),
    ("__import__('os').system('x') > 0", 1, "unknown function \"__import__('os').system\""),
    ("monetary_total.real > 1", 1, "Attribute is not allowed"),
    ("frequency >= q100(frequency)", 14, "unknown function 'q100'"),
    ("frequency in (1, 2)", 1, "comparison 'In' is not allowed"),
    ("'a' < frequency", 1, "'a' is not a number"),
])
def test_a_bad_rule_is_an_error_naming_the_rule_and_the_column(text, column, says):
    with pytest.raises(TagRuleError) as info:
        parse_rule("my_tag", text)
    message = str(info.value)
    assert message.startswith(f"tag rule 'my_tag', column {column}: "), message
    assert says in message and "\n" not in message


def test_rules_evaluate_like_the_same_conditions_written_in_pandas():
    events = random_events(n_users=300, n_events=6000, seed=2)
    features = build_features(events, FeatureConfig(cutoff=dt.date(2024, 9, 30), horizon_days=1))
    columns = tag_columns(features, events)
    hist = quantile_histograms(columns, ["monetary_mean"])
    q25 = quantile_value("monetary_mean", hist, 25)
    binned = np.searchsorted(QUANTILE_EDGES["monetary_mean"], features["monetary_mean"], side="right") - 1
    pooled_bin = int(np.quantile(binned, 0.25, method="inverted_cdf"))
    assert q25 == QUANTILE_EDGES["monetary_mean"][pooled_bin + 1]       # the upper edge of the quantile bin
    assert (features["monetary_mean"] < q25).mean() >= 0.25
    rules = [parse_rule("a", "frequency >= 3 and monetary_mean < q25(monetary_mean)"),
             parse_rule("b", "not (tenure_days <= 30 or -trend > 0.5) and events_total / 2 >= 3"),
             parse_rule("c", "1 < frequency <= 4"),
             parse_rule("d", "priced_purchases >= 2 and discount_share >= 0.5")]
    tags = tag_users(rules, columns, {("monetary_mean", 25): q25})
    f = features
    assert (tags["a"] == ((f["frequency"] >= 3) & (f["monetary_mean"] < q25))).all()
    assert (tags["b"] == (~((f["tenure_days"] <= 30) | (-f["trend"] > 0.5)) & (f["events_total"] / 2 >= 3))).all()
    assert (tags["c"] == ((f["frequency"] > 1) & (f["frequency"] <= 4))).all()
    # prices: a purchase below 0.95 x the item's median price is a discount
    priced = events.loc[(events["event_type"] == "purchase") & events["price"].notna()].copy()
    priced["usual"] = priced.groupby("item_id")["price"].transform("median")
    per_user = priced.assign(d=priced["price"] < 0.95 * priced["usual"]).groupby("user_id")["d"].agg(["size", "mean"])
    expected = per_user.reindex(f["user_id"])
    assert (tags["d"].to_numpy() == ((expected["size"] >= 2) & (expected["mean"] >= 0.5)).to_numpy()).all()
    assert 0 < tags["d"].sum() < len(f)


def test_without_prices_the_price_tag_is_false_not_an_error():
    from fedseg.datasets import load_cdnow

    events = load_cdnow().head(3000)
    features = build_features(events, FeatureConfig(cutoff=dt.date(1997, 3, 1), horizon_days=1))
    tags = tag_users(load_rules(), tag_columns(features, events), {("monetary_mean", 25): 10.0,
                                                                   ("monetary_total", 80): 100.0})
    assert not tags["price_sensitive"].any()
    assert list(tags.columns) == ["high_frequency_low_spend", "high_value_at_risk", "new", "dormant", "price_sensitive"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    events = small_cdnow(800)
    files = write_units(events, 3, tmp_path_factory.mktemp("tag-units"))
    return events, files


def test_federated_tags_equal_the_pooled_tags_and_only_counts_leave(federation, tmp_path):
    """Exact mode: quantiles from the summed histograms equal the pooled ones, per-user tags (kept on
    the units) equal tagging the pooled data, and the report's matrix is their cross-tabulation."""
    from server.tags import run_tags

    events, files = federation
    plan = TagPlan(cutoff=dt.date(1997, 12, 31), min_units=3, population=3000)
    report, grid = run_coordinator(lambda g: run_tags(g, plan), files, output_dir=tmp_path)
    features = build_features(events, FeatureConfig(cutoff=plan.cutoff, horizon_days=1))
    columns = tag_columns(features, events)
    quantiles = {}
    for feature, q in (("monetary_mean", 25), ("monetary_total", 80)):
        quantiles[(feature, q)] = quantile_value(feature, quantile_histograms(columns, [feature]), q)
        assert report["quantiles"][f"q{q}({feature})"] == quantiles[(feature, q)]
    pooled = tag_users(load_rules(), columns, quantiles).assign(user_id=features["user_id"].to_numpy(),
                                                                stage=features["lifecycle_stage"].astype(str).to_numpy())
    kept = pd.concat([pd.read_parquet(p) for p in sorted(tmp_path.glob("tags_unit_*.parquet"))])
    merged = kept.merge(pooled, on="user_id", suffixes=("", "_pooled"))
    assert len(merged) == len(pooled) == events["user_id"].nunique() == 800
    for tag in ("high_frequency_low_spend", "high_value_at_risk", "new", "dormant", "price_sensitive"):
        assert (merged[tag] == merged[f"{tag}_pooled"]).all(), tag
        row = next(t for t in report["tags"] if t["tag"] == tag)
        assert row["users"] == pooled[tag].sum()
        assert row["by_segment"] == {s: float(pooled.loc[pooled["stage"] == s, tag].sum())
                                     for s in ("introduction", "growth", "maturity", "decline")}
    assert (merged["segment"] == merged["stage"]).all()
    for reply in grid.replies:
        assert not reply.has_error()
        assert set(reply.content["metrics"].keys()) in ({"histograms"}, {"matrix", "sizes"})
    json.dumps(report)


def test_dp_tags_by_rfm_segment_are_charged_and_close(federation, tmp_path):
    from privacy.ledger import BudgetLedger
    from server.tags import run_tags

    _, files = federation
    ledger = tmp_path / "ledger.sqlite"
    plan = TagPlan(cutoff=dt.date(1997, 12, 31), min_units=3, population=3000, epsilon=4.0, segment_by="rfm")
    report, _ = run_coordinator(lambda g: run_tags(g, plan), files, output_dir=tmp_path, ledger_path=ledger,
                                dataset_id="cdnow-small")
    assert report["privacy"]["epsilon"] == pytest.approx(4.0, rel=1e-4)
    for spend in BudgetLedger(ledger).summary():
        assert spend.releases_by_task["tags"].epsilon == pytest.approx(4.0, rel=1e-4)
    kept = pd.concat([pd.read_parquet(p) for p in sorted(tmp_path.glob("tags_unit_*.parquet"))])
    assert len(kept) == 800 and set(kept["segment"]) <= set(report["segments"]) >= {"Champions", "Lost"}
    # every noisy cell is within 5 merged noise deviations of the exact count of the users' own tags
    # (clipping at 0 only brings a cell closer); sigma is what the units were told to add
    std = report["privacy"]["merged_noise_std_counts"]
    assert 0 < std < 20
    true_sizes = kept["segment"].value_counts()
    for segment, size in report["segments"].items():
        assert abs(size - true_sizes.get(segment, 0)) <= 5 * std, segment
    for row in report["tags"]:
        truth = kept.loc[kept[row["tag"]].astype(bool), "segment"].value_counts()
        for segment, count in row["by_segment"].items():
            assert abs(count - truth.get(segment, 0)) <= 5 * std, (row["tag"], segment)


def test_tags_command_refuses_a_bad_rules_file_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from fedseg.cli import app
    from tests.clients.test_cli_errors import one_error_line

    rules = tmp_path / "tags.toml"
    rules.write_text('[tags]\nbig_spender = "monetary_totl > q90(monetary_total)"\n')
    text = one_error_line(CliRunner().invoke(app, ["tags", "--tags", str(rules), "--out", str(tmp_path / "o")]))
    assert "tag rule 'big_spender', column 1: unknown feature 'monetary_totl'" in text
    assert not (tmp_path / "o" / "tags.json").exists()
