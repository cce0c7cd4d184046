"""A unit keeps its own privacy account and holds it against a coordinator that deviates: it
chooses every value it sends (the stated epsilon, delta, noise, rounds), and the unit refuses
whatever would make the printed guarantee false (issue 13, points 3, 4 and 6)."""

from __future__ import annotations

import pytest

from clients.client_app import make_client_app
from fedseg import protocol
from privacy.accounting import epsilon
from privacy.ledger import BudgetLedger
from privacy.training_dp import dpsgd_release
from tests.privacy.harness import Unit, unit_file, user_round_config


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return unit_file(tmp_path_factory.mktemp("account"), n_users=1500)


def unit(events, tmp_path, **node):
    return Unit(make_client_app([events], ledger_path=tmp_path / "ledger.sqlite", dataset_id="shop"), node)


def refusal(reply) -> str:
    assert not reply.has_error(), reply.error.reason
    assert int(reply.content.metric_records[protocol.METRICS]["accepted"]) == 0
    return str(reply.content.config_records[protocol.REFUSAL]["reason"])


def test_a_false_claim_is_refused(events, tmp_path):
    u = unit(events, tmp_path)
    plan = [dpsgd_release(0.8, 0.05, 200)]
    true_eps = epsilon(plan, 1e-6)
    reason = refusal(u.propose("r1", plan, 1e-6, stated=true_eps / 2))
    assert "states epsilon" in reason and f"{true_eps:.4f}" in reason
    accepted = u.propose("r2", plan, 1e-6)
    assert float(accepted.content.metric_records[protocol.METRICS]["epsilon"]) == pytest.approx(true_eps)


def test_delta_above_one_tenth_of_one_over_n_is_refused_without_naming_n(events, tmp_path):
    u = unit(events, tmp_path)
    reason = refusal(u.propose("r1", [dpsgd_release(1.0, 0.05, 20)], delta=1e-3))
    assert "delta 0.001 is above 1 / (10 x this unit's number of users)" in reason
    assert "1500" not in reason and "1,500" not in reason


def test_a_release_never_accepted_is_refused(events, tmp_path):
    u = unit(events, tmp_path)
    reply = u.train(user_round_config("never-proposed", z=1.0))
    assert reply.has_error() and "never stated its privacy plan" in reply.error.reason


def test_less_noise_or_more_rounds_than_announced_is_refused(events, tmp_path):
    u = unit(events, tmp_path)
    assert not u.propose("r1", [dpsgd_release(1.0, 0.05, 20)] * 2, 1e-6).has_error()
    assert not u.train(user_round_config("r1", z=1.0)).has_error()
    # round 2 asks for a fifth of the noise it announced
    reply = u.train(user_round_config("r1", z=0.2, server_round=2))
    assert reply.has_error() and "above the" in reply.error.reason and "this unit accepted" in reply.error.reason
    assert not u.train(user_round_config("r1", z=1.0, server_round=2)).has_error()
    # a third round was never announced
    reply = u.train(user_round_config("r1", z=1.0, server_round=3))
    assert reply.has_error() and "this unit accepted" in reply.error.reason
    assert BudgetLedger(tmp_path / "ledger.sqlite").releases("r1", "unit_0", "shop") == 2


def test_budget_refusal_names_unit_dataset_spent_asked_and_remaining(events, tmp_path):
    u = unit(events, tmp_path, **{"epsilon-budget": 2.0, "delta-budget": 1e-5})
    plan = [dpsgd_release(2.0, 0.05, 100)]
    asked = epsilon(plan, 1e-6)
    assert asked < 2.0 < 2 * asked
    assert not u.propose("r1", plan, 1e-6).has_error()
    assert not u.train(user_round_config("r1", z=2.0, steps=100)).has_error()
    reason = refusal(u.propose("r2", plan, 1e-6))
    assert reason == (f"unit 'unit_0' on dataset 'shop': spent epsilon {asked:.3f} (delta 1e-06), this run asks "
                      f"{asked:.3f} (delta 1e-06), remaining {2 - asked:.3f} (delta 9e-06) of the budget 2 (delta "
                      "1e-05); lower --epsilon, or raise the unit's budget")


def test_a_unit_with_a_budget_refuses_runs_without_dp(events, tmp_path):
    from fedseg.protocol import RoundConfig
    from tests.privacy.harness import CUTOFF

    u = unit(events, tmp_path, **{"epsilon-budget": 2.0})
    reply = u.train(RoundConfig(cutoff=CUTOFF, horizon_days=273, scaler_mean=[0.0] * 12, scaler_std=[1.0] * 12))
    assert reply.has_error() and "has no differential privacy" in reply.error.reason


def test_a_resumed_run_is_accepted_again_with_what_it_already_spent(events, tmp_path):
    u = unit(events, tmp_path, **{"epsilon-budget": 10.0})
    round_release = dpsgd_release(1.0, 0.05, 20)
    assert not u.propose("r1", [round_release] * 3, 1e-6).has_error()
    assert not u.train(user_round_config("r1", z=1.0)).has_error()
    # the coordinator restarts after round 1 and re-sends round 2, which a crash interrupted: it
    # announces the two rounds left plus the re-run one; the unit composes them with round 1
    stated = epsilon([round_release] * 4, 1e-6)
    accepted = u.propose("r1", [round_release] * 3, 1e-6, stated=stated)
    assert float(accepted.content.metric_records[protocol.METRICS]["epsilon"]) == pytest.approx(stated)
    assert refusal(u.propose("r1", [round_release] * 3, 1e-7, stated=stated)).endswith("cannot continue at delta 1e-07")


def test_planned_releases_are_charged_from_results_kept_at_acceptance(tmp_path):
    """A deployed unit starts a fresh process per message. The accountant's results for the
    accepted plan are kept in the unit's ledger, so a later process charges the planned releases
    without importing dp-accounting; a release outside the plan is still composed by the
    accountant. The cumulative epsilons equal dp-accounting's and Opacus's own RDP accountant."""
    import json
    import subprocess
    import sys

    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from privacy.accounting import composition_key
    from privacy.budget import LedgerStore, UnitPrivacy

    delta, z, q, steps = 1e-6, 1.1, 0.05, 20
    planned = [dpsgd_release(z, q, steps)] * 4
    ledger = tmp_path / "ledger.sqlite"
    UnitPrivacy("u", "shop", LedgerStore(BudgetLedger(ledger), "u", "shop")).accept(
        "r1", "training", delta, epsilon(planned, delta) + 1e-3, planned)
    extra = dpsgd_release(z, q, steps // 2)      # not in the plan: the accountant runs
    code = f"""
import json, sys
from privacy.budget import LedgerStore, UnitPrivacy
from privacy.ledger import BudgetLedger
from privacy.training_dp import dpsgd_release
own = UnitPrivacy("u", "shop", LedgerStore(BudgetLedger({str(ledger)!r}), "u", "shop"))
planned = [own.charge("r1", "training", dpsgd_release({z}, {q}, {steps})) for _ in range(3)]
imported = "dp_accounting" in sys.modules
print(json.dumps([planned, imported]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    charged, imported = json.loads(out.stdout)
    assert imported is False
    for k, value in enumerate(charged, start=1):
        assert value == pytest.approx(epsilon(planned[:k], delta), rel=1e-12)
        orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
        opacus_eps, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=q, noise_multiplier=z, steps=steps * k,
                                                                         orders=orders), delta=delta)
        assert value == pytest.approx(opacus_eps, rel=0.01)
    own = UnitPrivacy("u", "shop", LedgerStore(BudgetLedger(ledger), "u", "shop"))
    assert own.charge("r1", "training", extra) == pytest.approx(epsilon(planned[:3] + [extra], delta), rel=1e-12)
    # the key names the composition, not the order or the split into counts
    assert composition_key([planned[0], extra], delta) == composition_key([extra, planned[0]], delta)
    assert composition_key([dpsgd_release(z, q, 2 * steps)], delta) == composition_key(planned[:2], delta)
    assert composition_key(planned[:2], delta) != composition_key(planned[:2], delta * 10)
