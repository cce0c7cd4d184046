from __future__ import annotations

import math

import numpy as np
import pytest

from audit import DPConfig, FairnessSpec, PricingSpec, fairness_audit, federated_fairness, federated_pricing, pricing_audit
from simulations.transactions import generate_transactions
from tests.audit.conftest import scored_frame


def _flat(d, pre=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flat(v, f"{pre}/{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _flat(v, f"{pre}[{i}]")
    else:
        yield pre, d


def assert_reports_equal(a, b):
    fa = dict(_flat(a.model_dump(exclude={"created_at", "units"})))
    fb = dict(_flat(b.model_dump(exclude={"created_at", "units"})))
    assert fa.keys() == fb.keys()
    for k in fa:
        if isinstance(fa[k], float):
            assert math.isclose(fa[k], fb[k], rel_tol=1e-9, abs_tol=1e-12), k
        else:
            assert fa[k] == fb[k], k


def _fair_units(tmp_path, n_units=3):
    f = scored_frame(n=6000)
    paths = []
    for u, part in enumerate(np.array_split(np.random.default_rng(0).permutation(len(f)), n_units)):
        p = tmp_path / f"unit{u}.csv"
        f.iloc[np.sort(part)].to_csv(p, index=False)
        paths.append(p)
    return f, paths


def test_federated_fairness_equals_pooled(tmp_path):
    f, paths = _fair_units(tmp_path)
    spec = FairnessSpec(label="churned", score="score", groups=["gender", "region"], intersect=True,
                        bootstrap=200, auc_bins=10_000)
    assert_reports_equal(federated_fairness(paths, spec), fairness_audit(f, spec))
    # exact AUC (pooled only) is within the histogram's tie mass of the federated one
    exact = fairness_audit(f, spec.model_copy(update={"auc_bins": None}))
    fed = federated_fairness(paths, spec)
    for g, gf in exact.attributes["gender"].groups.items():
        assert abs(gf.auc.value - fed.attributes["gender"].groups[g].auc.value) < 1e-3


def test_federated_outcome_equals_pooled(tmp_path):
    f, paths = _fair_units(tmp_path)
    spec = FairnessSpec(outcome="offer", groups=["gender"], bootstrap=100)
    assert_reports_equal(federated_fairness(paths, spec), fairness_audit(f, spec))


def test_dp_noise_is_added_by_the_units_and_charged_to_their_accounts(tmp_path):
    from flwr.app import RecordDict

    from privacy.budget import ContextStore, UnitPrivacy

    f, paths = _fair_units(tmp_path)
    spec = FairnessSpec(label="churned", score="score", groups=["gender"], bootstrap=0)
    accounts = [UnitPrivacy(p.stem, "scores", ContextStore(RecordDict(), p.stem, "scores")) for p in paths]
    rep = federated_fairness(paths, spec, dp=DPConfig(epsilon=1.0, delta=1e-6, seed=0), accounts=accounts)
    # each unit accepted and charged one Gaussian release of epsilon 1 (its own accountant)
    from privacy.accounting import epsilon

    for account in accounts:
        [run_id] = account.store._runs()
        assert epsilon(account.store.releases(run_id), 1e-6) == pytest.approx(1.0, rel=1e-4)
    # the combined noise: 3 units each added sigma; sigma from the documented sensitivity
    # (Delta^2 = 1 attribute x 2 tables) and the release's noise multiplier
    from audit.federated import release_for

    z = release_for(spec, DPConfig(epsilon=1.0, delta=1e-6)).noise_multiplier
    assert rep.dp_noise_sigma == pytest.approx(z * math.sqrt(2) * math.sqrt(3))
    clean = federated_fairness(paths, spec)
    na = rep.attributes["gender"].groups["a"].n
    assert na != clean.attributes["gender"].groups["a"].n
    # n sums 2 x 2 x score_bins noisy cells: its noise SD is sigma * sqrt(4 * score_bins)
    assert abs(na - clean.attributes["gender"].groups["a"].n) < 5 * rep.dp_noise_sigma * math.sqrt(4 * spec.score_bins)


def test_federated_pricing_equals_pooled(tmp_path):
    f = generate_transactions(n_rows=40_000, n_customers=4000, n_items=60, n_weeks=6, premium_pct=2.5, seed=9)
    f["loyalty"] = f["loyalty"].astype(object)
    f.loc[f.index[::50], "loyalty"] = None                      # a (missing) level
    f["channel"] = np.where(f.customer_id % 5 == 0, "web", "store")
    f["tenure_days"] = (f.customer_id * 37) % 900 + 0.5         # a continuous attribute
    paths = []
    for u in range(3):
        p = tmp_path / f"tx{u}.parquet"
        f[f.customer_id % 3 == u].to_parquet(p)
        paths.append(p)
    spec = PricingSpec(price="price", item="item_id", time="week", window="raw",
                       groups=["loyalty", "data_richness", "tenure_days"], by=["category", "channel"],
                       references={"loyalty": "new"}, customer="customer_id", returning="returning", min_clusters=5,
                       continuous={"tenure_days": [0, 300, 600, 900]}, slopes=["tenure_days"])
    pooled = pricing_audit(f, spec)
    assert pooled.missing["loyalty"] == 800 and any(x.kind == "slope" for x in pooled.findings)
    assert_reports_equal(federated_pricing(paths, spec), pooled)


@pytest.mark.slow  # minutes: the same sums as test_federated_*_equals_pooled, carried by Flower's engine
def test_flower_simulation_equals_pooled(tmp_path):
    """The same audit through Flower's real simulation engine (ServerApp + ClientApp query handler).
    The default run keeps the in-process equality tests and the DP audit on Flower's engine below."""
    from audit.flower_app import run_federated_audit

    f, paths = _fair_units(tmp_path, n_units=2)
    spec = FairnessSpec(label="churned", score="score", groups=["gender"], bootstrap=100, auc_bins=10_000)
    assert_reports_equal(run_federated_audit(paths, spec), fairness_audit(f, spec))
    t = generate_transactions(n_rows=20_000, n_customers=2000, n_items=40, n_weeks=4, premium_pct=2.5, seed=4)
    tp = []
    for u in range(2):
        p = tmp_path / f"t{u}.parquet"
        t[t.customer_id % 2 == u].to_parquet(p)
        tp.append(p)
    pspec = PricingSpec(price="price", item="item_id", time="week", window="raw", groups=["loyalty"],
                        references={"loyalty": "new"}, customer="customer_id")
    assert_reports_equal(run_federated_audit(tp, pspec), pricing_audit(t, pspec))


def test_flower_dp_audit_units_accept_charge_and_refuse(tmp_path):
    """On Flower's engine each unit accepts the release with its own account, adds its own noise and
    charges its ledger; a unit whose budget cannot cover the audit refuses it before any release."""
    from audit.flower_app import run_federated_audit
    from privacy.ledger import BudgetLedger
    from server.grid import PrivacyPlanRefused

    f, paths = _fair_units(tmp_path, n_units=2)
    spec = FairnessSpec(label="churned", score="score", groups=["gender"], bootstrap=0, score_bins=20)
    ledger = tmp_path / "ledger.sqlite"
    BudgetLedger(ledger).set_budget("*", "scores", 1.5, 1e-5)
    rep = run_federated_audit(paths, spec, dp=DPConfig(epsilon=1.0, delta=1e-6), ledger_path=ledger,
                              dataset_id="scores")
    assert rep.dp_noise_sigma > 0
    book = BudgetLedger(ledger)
    assert [round(book.spent(p.stem, "scores")[0], 4) for p in paths] == [1.0, 1.0]
    with pytest.raises(PrivacyPlanRefused, match=r"this run asks 1\.000 .* remaining 0\.500"):
        run_federated_audit(paths, spec, dp=DPConfig(epsilon=1.0, delta=1e-6), ledger_path=ledger,
                            dataset_id="scores")
    assert [round(book.spent(p.stem, "scores")[0], 4) for p in paths] == [1.0, 1.0]
