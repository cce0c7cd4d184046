"""The budget ledger: refuses over-budget runs, never loses or double-counts spend."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from privacy.ledger import BudgetExceeded, BudgetLedger


def test_spend_sums_runs_and_records_are_idempotent(tmp_path):
    ledger = BudgetLedger(tmp_path / "l.sqlite")
    ledger.set_budget("*", "cdnow", 10.0, 1e-5)
    assert ledger.record("run1", "u1", "cdnow", 1, 1.5, 1e-5, "m")
    assert ledger.record("run1", "u1", "cdnow", 2, 2.5, 1e-5, "m")
    assert not ledger.record("run1", "u1", "cdnow", 2, 2.5, 1e-5, "m")      # replay: ignored
    ledger.record("run2", "u1", "cdnow", 1, 3.0, 1e-5, "m")
    assert ledger.spent("u1", "cdnow") == pytest.approx(5.5)                 # 2.5 + 3.0
    assert ledger.remaining("u1", "cdnow") == pytest.approx(4.5)
    assert ledger.releases("run1", "u1", "cdnow") == 2
    ledger.check("u1", "cdnow", "run3", 4.5)                                  # exactly what is left: fine
    with pytest.raises(BudgetExceeded, match=r"would spend epsilon 5\.000 but only 4\.500 of its budget 10 is left"):
        ledger.check("u1", "cdnow", "run3", 5.0)
    ledger.check("u1", "cdnow", "run2", 7.5)                                  # run2's own spend is not "others"
    [row] = [r for r in ledger.summary() if r.unit == "u1"]
    assert (row.spent_epsilon, row.runs) == (pytest.approx(5.5), 2)


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
        time.sleep(2.0)
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
    assert ledger.spent("u", "d") == pytest.approx(n * 0.01)


def _plan(out, ledger, rounds=3, epsilon=4.0):
    from server.training import TrainingPlan

    return TrainingPlan(num_rounds=rounds, cutoff=dt.date(1997, 9, 30), horizon_days=273, output_dir=out,
                        min_available_units=3, min_fit_units=3, privacy="user", target_epsilon=epsilon,
                        sample_rate=0.05, local_epochs=1, ledger_path=ledger, dataset_id="cdnow-test")


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    from tests.federated.conftest import small_cdnow, write_units

    return write_units(small_cdnow(4500), 3, tmp_path_factory.mktemp("ledger-units"))


def test_over_budget_run_is_refused_before_training(units, tmp_path):
    from tests.federated.conftest import run_flower

    ledger_path = tmp_path / "ledger.sqlite"
    BudgetLedger(ledger_path).set_budget("*", "cdnow-test", 3.0, 1e-5)
    with pytest.raises(Exception, match="would spend epsilon 4.0") as info:
        run_flower(_plan(tmp_path / "run", ledger_path), units)
    assert "Lower --epsilon" in str(info.value)
    ledger = BudgetLedger(ledger_path)
    # only the start-up query was released (and recorded); no training round went out
    assert all(row["release_no"] == 0 for unit in ("unit_0", "unit_1", "unit_2")
               for row in ledger.run_rows(_only_run(ledger)))


def _only_run(ledger: BudgetLedger) -> str:
    import sqlite3

    with sqlite3.connect(ledger.path) as db:
        [(run,)] = db.execute("SELECT DISTINCT run_id FROM releases").fetchall()
    return run


def test_crash_and_resume_neither_lose_nor_double_count(units, tmp_path):
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from server.training import run_training
    from simulations.runner import quiet_flower
    from tests.federated.conftest import run_flower

    ledger_path = tmp_path / "ledger.sqlite"
    plan = _plan(tmp_path / "run", ledger_path)

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

    run_simulation(server_app=server, client_app=make_client_app(units), num_supernodes=3,
                   backend_config=quiet_flower(False))
    assert errors, "the simulated crash did not happen"
    ledger = BudgetLedger(ledger_path)
    run_id = _only_run(ledger)
    assert ledger.releases(run_id, "unit_0", "cdnow-test") == 1

    results, _ = run_flower(plan, units)                       # resume: rounds 2 and 3 only
    result = results[0]
    assert result.resumed_from == 1
    assert [r["round"] for r in result.history] == [0, 1, 2, 3]
    for unit in ("unit_0", "unit_1", "unit_2"):
        assert ledger.releases(run_id, unit, "cdnow-test") == 3      # releases 1, 2, 3 once each
        assert ledger.spent(unit, "cdnow-test") == pytest.approx(result.privacy["epsilon"])
    assert result.privacy["epsilon"] <= 4.0 + 1e-9
