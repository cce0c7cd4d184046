"""The units' budget ledger: one ledger per unit dataset across tasks, clean refusals, crash safety."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from privacy.accounting import Release
from privacy.budget import LedgerStore, UnitPrivacy
from privacy.ledger import BudgetExceeded, BudgetLedger


def _account(ledger: BudgetLedger, unit: str = "u1", dataset: str = "cdnow") -> UnitPrivacy:
    return UnitPrivacy(unit, dataset, LedgerStore(ledger, unit, dataset), ledger.budget(unit, dataset))


def test_spend_adds_epsilons_and_deltas_over_runs_and_tasks(tmp_path):
    ledger = BudgetLedger(tmp_path / "l.sqlite")
    ledger.set_budget("*", "cdnow", 10.0, 1e-5)
    gauss = Release(noise_multiplier=4.0, task="segmentation")
    acct = _account(ledger)
    for run, task in (("r1", "training"), ("r2", "segmentation"), ("r3", "audit")):
        acct.accept(run, task, 1e-6, 100.0, [gauss, gauss])
        acct.charge(run, task, gauss)
        acct.charge(run, task, gauss)
    per_run = ledger.spent("u1", "cdnow", exclude_run="r1")[0] / 2
    assert ledger.spent("u1", "cdnow") == (pytest.approx(3 * per_run), pytest.approx(3e-6))
    [row] = ledger.summary()
    assert (row.unit, row.dataset, row.runs) == ("u1", "cdnow", 3)
    assert set(row.releases_by_task) == {"training", "segmentation", "audit"}
    assert row.remaining_epsilon == pytest.approx(10.0 - 3 * per_run)
    assert row.remaining_delta == pytest.approx(1e-5 - 3e-6)
    assert ledger.releases("r2", "u1", "cdnow") == 2


def test_delta_is_enforced_as_well_as_epsilon(tmp_path):
    ledger = BudgetLedger(tmp_path / "l.sqlite")
    ledger.set_budget("*", "d", 100.0, 2.5e-6)
    acct = _account(ledger, dataset="d")
    release = Release(noise_multiplier=5.0)
    for run in ("a", "b"):
        acct.accept(run, "audit", 1e-6, 10.0, [release])
        acct.charge(run, "audit", release)
    with pytest.raises(BudgetExceeded, match=r"delta 2e-06\), this run asks .* \(delta 1e-06\)"):
        acct.accept("c", "audit", 1e-6, 10.0, [release])


def test_killed_writer_leaves_a_consistent_ledger(tmp_path):
    path = tmp_path / "l.sqlite"
    BudgetLedger(path)
    writer = textwrap.dedent(f"""
        from privacy.ledger import BudgetLedger
        ledger = BudgetLedger({str(path)!r})
        i = 0
        while True:
            i += 1
            ledger.record("run", "u", "d", i, i * 0.01, 1e-5, "m")
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer])
    try:
        deadline = time.monotonic() + 60
        while BudgetLedger(path).releases("run", "u", "d") < 50 and time.monotonic() < deadline:
            time.sleep(0.2)  # the writer is importing, then writing
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    ledger = BudgetLedger(path)
    n = ledger.releases("run", "u", "d")
    assert n > 5
    rows = ledger.run_rows("run")
    assert [r["release_no"] for r in rows] == list(range(1, n + 1))          # no gap, no torn row
    assert ledger.spent("u", "d")[0] == pytest.approx(n * 0.01)               # a run's spend: its last release


def _plan(out, rounds=3, epsilon=4.0):
    from fedseg.config import TrainingPlan

    return TrainingPlan(num_rounds=rounds, cutoff=dt.date(1997, 9, 30), horizon_days=273, output_dir=out,
                        min_available_units=3, min_fit_units=3, privacy="user", target_epsilon=epsilon,
                        sample_rate=0.05, local_epochs=1, population=4500)


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    from tests.support.flower import small_cdnow, write_units

    return write_units(small_cdnow(4500), 3, tmp_path_factory.mktemp("ledger-units"))


def _client(units, ledger):
    from clients.client_app import make_client_app

    return make_client_app(units, ledger_path=ledger, dataset_id="cdnow-test")


def test_over_budget_run_is_refused_before_anything_is_released_or_charged(units, tmp_path):
    """Before: the start-up query went out and was charged (about 0.18 per unit), then a
    BudgetExceeded traceback. Now the units refuse the plan first: nothing is sent, nothing charged."""
    from server.grid import PrivacyPlanRefused
    from tests.support.flower import run_flower

    ledger_path = tmp_path / "ledger.sqlite"
    BudgetLedger(ledger_path).set_budget("*", "cdnow-test", 3.0, 1e-5)
    results, grid = run_flower(_plan(tmp_path / "run"), units, client_app=_client(units, ledger_path),
                               keep_errors=True)
    [error] = results
    assert isinstance(error, PrivacyPlanRefused)
    message = str(error)
    assert "\n" not in message
    assert "on dataset 'cdnow-test': spent epsilon 0.000 (delta 0), this run asks 4.000" in message
    assert "remaining 3.000" in message
    ledger = BudgetLedger(ledger_path)
    assert [r.spent_epsilon for r in ledger.summary()] == [] or all(r.spent_epsilon == 0 for r in ledger.summary())
    assert {m.metadata.message_type for m in grid.sent} == {"query.privacy"}   # no release was asked for


def test_crash_and_resume_neither_lose_nor_double_count(units, tmp_path):
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from server.training import run_training
    from simulations.runner import quiet_flower
    from tests.support.flower import run_flower

    ledger_path = tmp_path / "ledger.sqlite"
    plan = _plan(tmp_path / "run")

    class Crash(RuntimeError):
        pass

    def crash_after(round_no: int) -> None:
        if round_no == 1:
            raise Crash("coordinator died after round 1")

    server = ServerApp()
    errors = []

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_training(grid, plan, on_round=lambda r: None, after_round=crash_after)
        except Crash as exc:
            errors.append(exc)

    run_simulation(server_app=server, client_app=_client(units, ledger_path), num_supernodes=3,
                   backend_config=quiet_flower(False))
    assert errors, "the simulated crash did not happen"
    ledger = BudgetLedger(ledger_path)
    [row] = [r for r in ledger.summary() if r.unit == "unit_0"]
    assert row.runs == 1
    import sqlite3

    with sqlite3.connect(ledger_path) as db:
        [(run_id,)] = db.execute("SELECT DISTINCT run_id FROM releases").fetchall()
    assert ledger.releases(run_id, "unit_0", "cdnow-test") == 2           # scaler query + round 1

    results, _ = run_flower(plan, units, client_app=_client(units, ledger_path))   # resume: rounds 2 and 3
    result = results[0]
    assert result.resumed_from == 1 and result.run_id == run_id
    assert [r["round"] for r in result.history] == [0, 1, 2, 3]
    for unit in ("unit_0", "unit_1", "unit_2"):
        # scaler, rounds 1-3, the final evaluation: each once, in the same run
        assert ledger.releases(run_id, unit, "cdnow-test") == 5
        assert ledger.spent(unit, "cdnow-test")[0] == pytest.approx(result.privacy["epsilon"])
    assert result.privacy["epsilon"] <= 4.0 + 1e-9
