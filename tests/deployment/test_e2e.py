"""End to end on Flower's Deployment Engine: a real SuperLink with TLS and node authentication,
three real SuperNodes on localhost, all started through `fedseg deploy` as partners would.

One scenario, in order (a few minutes on 2 cores; `pytest -m deployment`):

1. an unregistered key is refused (Flower's exit code 305);
2. user-level DP training on generated data, 5 rounds; every unit keeps its own budget ledger;
3. a unit is killed after round 1: the run goes on with the other two;
4. the unit restarts and rejoins;
5. the SuperLink (with its ServerApp) is killed while a round is in flight, restarted with the
   same state database; the same `flwr run` resumes after the last completed round;
6. each unit's own ledger holds every release it made once, numbered without gaps, the
   interrupted round counted, and its final epsilon matches the coordinator's accountant.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import sqlite3
import time

import pytest

from privacy.keys import init_keys
from tests.deployment.cluster import Cluster, wait_for

pytestmark = pytest.mark.deployment

UNITS = ["u0", "u1", "u2"]
ROUNDS = 5


@pytest.fixture
def cluster(tmp_path):
    from simulations.generator import GeneratorConfig, generate, write_units

    data = generate(GeneratorConfig(n_users=1500, n_units=3, days=365, start=dt.date(2024, 1, 1), seed=1))
    write_units(data, tmp_path / "data")
    init_keys(tmp_path / "keys")
    c = Cluster(tmp_path, tmp_path / "keys")
    for unit in UNITS:           # each unit makes its own key and hands over the public key
        c.make_unit_key(unit)
    c.make_unit_key("intruder", hand_over=False)
    try:
        yield c
    finally:
        c.stop_all()


def _rounds(out) -> list[dict]:  # noqa: ANN001
    path = out / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _charged_since(ledgers: dict, since: float) -> list[str]:
    """The units whose ledger recorded a release after ``since`` (a POSIX time)."""
    out = []
    for unit, ledger in ledgers.items():
        if ledger.exists():
            with sqlite3.connect(ledger) as con:
                times = [dt.datetime.fromisoformat(r[0]).timestamp()
                         for r in con.execute("SELECT recorded_at FROM releases")]
            if any(t > since for t in times):
                out.append(unit)
    return out


def _releases(ledger) -> list[tuple]:  # noqa: ANN001
    """(release number, cumulative epsilon) of every release in a unit's own ledger."""
    if not ledger.exists():
        return []
    with sqlite3.connect(ledger) as con:
        return con.execute("SELECT release_no, epsilon_cumulative FROM releases ORDER BY release_no").fetchall()


def test_tls_authenticated_federation_survives_a_dead_unit_and_a_coordinator_restart(cluster):
    c = cluster
    timings: dict[str, float] = {}
    t0 = time.time()
    c.start_superlink()
    c.connect()
    reg = c.register(*UNITS)
    assert reg.returncode == 0, reg.stdout + reg.stderr
    assert reg.stdout.count("ok ") == 3

    # 1. A SuperNode whose key was never registered is refused.
    intruder = c.write_unit("intruder", c.root / "data" / "events_unit_0.parquet", max_retries=0)
    proc = c.start_unit("intruder", intruder)
    proc.wait(timeout=120)
    text = c.log("intruder").read_text(errors="replace")
    assert proc.returncode != 0 and "Exit Code: 305" in text, text[-3000:]

    configs = {u: c.write_unit(u, c.root / "data" / f"events_unit_{i}.parquet",
                               c.root / "data" / f"users_unit_{i}.parquet", epsilon_budget=6.0)
               for i, u in enumerate(UNITS)}
    for unit, config in configs.items():
        c.start_unit(unit, config)
    wait_for(lambda: c.online_units() >= 3, 180, "three units online", [c.log(u) for u in UNITS])
    timings["set-up"] = time.time() - t0

    out = c.root / "run"
    ledgers = {u: c.root / f"out-{u}" / "privacy-ledger.sqlite" for u in UNITS}   # unit.toml's default
    run_config = (f"num-server-rounds={ROUNDS} output-dir='{out}' dataset='' cutoff='2024-10-01' horizon-days=90 "
                  f"min-available-units=3 min-fit-units=2 round-timeout-s=300.0 privacy='user' "
                  f"target-epsilon=4.0 population=1500")
    t_run = time.time()
    c.flwr_run("run1", run_config)

    # 3. Kill a unit after round 1; round 2 goes on with two.
    wait_for(lambda: len(_rounds(out)) >= 1, 600, "round 1", [c.log("run1")])
    c.kill("u2")
    wait_for(lambda: len(_rounds(out)) >= 2, 600, "round 2 without u2", [c.log("run1")])
    second = _rounds(out)[1]
    assert second["units_trained"] == 2 and second["units_failed"] == 1, second
    # 4. The unit restarts and rejoins.
    c.start_unit("u2", configs["u2"])
    wait_for(lambda: c.online_units() >= 3, 180, "u2 back online", [c.log("u2")])

    # 5. Kill the coordinator while round 4 is in flight: a unit has charged it since round 3 was
    #    recorded, and it has not finished. Not round 5: the last round's record waits for the
    #    final evaluation, so an evaluation release could pass for the round's. Which units train
    #    a round is the coordinator's choice: under load a unit's heartbeat can lapse and it is
    #    left out of a round (seen: u0 out of round 3, u0 out of round 5), so each unit's ledger is
    #    compared with what that unit did, not with a fixed schedule.
    third: list[float] = []

    def in_flight() -> bool:
        done = len(_rounds(out))
        assert done <= ROUNDS - 2, "round 4 finished before it was seen in flight"
        if done < ROUNDS - 2:
            return False
        if not third:
            third.append((out / "rounds.jsonl").stat().st_mtime)   # when round 3 was recorded
        return bool(_charged_since(ledgers, third[0]))

    wait_for(in_flight, 900, "round 4 in flight", [c.log("run1")], interval=0.05)
    c.kill("superlink")
    c.kill("run1", signal.SIGTERM)
    done = len(_rounds(out))
    interrupted = _charged_since(ledgers, third[0])
    assert done == ROUNDS - 2 and interrupted, f"round {done + 1} was not in flight when the coordinator was killed"
    timings[f"first run, {done} rounds + interrupted round {done + 1}"] = time.time() - t_run
    c.start_superlink()
    wait_for(lambda: c.online_units() >= 3, 180, "units reconnected", [c.log(u) for u in UNITS])
    t_resume = time.time()
    run2 = c.flwr_run("run2", run_config)
    run2.wait(timeout=1200)
    resumed_log = c.log("run2").read_text(errors="replace")
    assert run2.returncode == 0, resumed_log[-4000:]
    timings[f"resumed run, rounds {done + 1}-{ROUNDS}"] = time.time() - t_resume
    assert f"resuming {out} after round {done} of {ROUNDS}" in resumed_log

    records = _rounds(out)
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5]
    assert any(r["units_trained"] == 3 for r in records[2:]), "the restarted unit never trained again"
    # a real churn ranking; DP-SGD at epsilon 4 on 1,000 training users with a secret sample and
    # noise varies from run to run (0.71 and above seen): the privacy sweep measures utility
    assert records[-1]["auc"] > 0.65, records[-1]

    # 6. Each unit's own ledger: u0 and u1 made the scaler release, the finished rounds, the
    #    interrupted round, its re-run, the rounds after it and the final evaluation, once each, in one run; their last
    #    cumulative epsilon is what the coordinator printed. u2 missed round 2 (it was down).
    from fedseg.checkpoint import MODEL_FILE, load_checkpoint

    statement = load_checkpoint(out, MODEL_FILE).extra["privacy"]
    assert statement["epsilon"] == pytest.approx(records[-1]["epsilon"])
    full = []   # the units that trained every round, the interrupted one included
    for unit in UNITS:
        rows = _releases(ledgers[unit])
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), (unit, rows)   # numbered without gaps
        eps = [r[1] for r in rows]
        # every training release raises the training users' epsilon; the last release, the final
        # evaluation, touches the test users only and may leave the printed maximum unchanged
        assert all(a < b for a, b in zip(eps[:-2], eps[1:-1])) and eps[-2] <= eps[-1], (unit, rows)
        assert eps[-1] <= records[-1]["epsilon"] + 1e-9, (unit, rows)
        if len(rows) == ROUNDS + 3:   # the scaler, rounds 1-5, the interrupted round and the evaluation
            full.append(unit)
            assert eps[-1] == pytest.approx(records[-1]["epsilon"])
    # (a unit's ClientApp may charge the interrupted round after the kill: it already held the message)
    assert full, "no unit trained every round"
    assert "u2" not in full   # it was down in round 2
    assert records[-1]["epsilon"] > 4.0  # the interrupted round is counted: above the planned 4
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = compute_rdp(q=statement["sample_rate"], noise_multiplier=statement["noise_multiplier"],
                      steps=statement["steps"], orders=orders)
    opacus_eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=statement["delta"])
    assert opacus_eps < records[-1]["epsilon"] < opacus_eps + 1.0  # DP-SGD dominates; scaler and evaluation add a little

    print("\nend-to-end timings (s): " + ", ".join(f"{k}: {v:.0f}" for k, v in timings.items()))
    print("round seconds: " + ", ".join(f"{r['round']}: {r['seconds']:.1f}" for r in records))


def test_a_unit_refuses_a_run_over_its_own_budget_before_anything_is_released(cluster):
    """Three units; u2's unit.toml allows epsilon 1 per user, the run plans 4: u2 refuses the
    privacy plan (its own accountant, in its own ClientApp), the coordinator stops the run with
    u2's one-line reason before any data statistic was asked for, and no unit charged anything."""
    c = cluster
    c.start_superlink()
    c.connect()
    assert c.register(*UNITS).returncode == 0
    budgets = {"u0": 6.0, "u1": 6.0, "u2": 1.0}
    for i, unit in enumerate(UNITS):
        c.start_unit(unit, c.write_unit(unit, c.root / "data" / f"events_unit_{i}.parquet",
                                        epsilon_budget=budgets[unit]))
    wait_for(lambda: c.online_units() >= 3, 180, "three units online", [c.log(u) for u in UNITS])
    out = c.root / "run"
    run = c.flwr_run("run", f"num-server-rounds=1 output-dir='{out}' dataset='' cutoff='2024-10-01' "
                            "horizon-days=90 min-available-units=3 min-fit-units=2 round-timeout-s=300.0 "
                            "privacy='user' target-epsilon=4.0 population=1500")
    run.wait(timeout=900)
    log = c.log("run").read_text(errors="replace")
    assert "unit 'u2' on dataset" in log and "this run asks 4.000" in log and "remaining 1.000" in log, log[-4000:]
    assert _rounds(out) == []
    for unit in UNITS:
        assert _releases(c.root / f"out-{unit}" / "privacy-ledger.sqlite") == []


def test_effects_are_measured_by_secure_aggregation_on_the_deployment_engine(cluster):
    """The federated effect measurement deployed (``task = "effects"``): three units, each with its
    own action list (``actions-path``) and secure-aggregation identity in its unit.toml.

    The action lists and campaign outcomes come from a synthetic `fedseg effects` simulation of
    three units, whose exact (noise-free) measurement is the reference: the deployed run with
    secure aggregation and no noise must give the same cells, arm sizes and headline uplift
    (the coordinator saw only the sum). Then at epsilon 1 every unit charges its own ledger once,
    1.000, and the noise shares were sized for all three units. (The units set no epsilon budget:
    a unit with one refuses the exact run.)"""
    c = cluster
    sim = c.root / "sim"
    made = c.fedseg("effects", "--units", "3", "--synthetic-users", "3000", "--seed", "2", "--research-seed", "2",
                    "--no-fairness", "--out", str(sim), timeout=900)
    assert made.returncode == 0, made.stdout + made.stderr
    reference = json.loads((sim / "effects.json").read_text())
    plan = reference["plan"]
    for unit in UNITS:                     # each unit makes its identity; the registry holds public keys only
        assert c.fedseg("keys", "secagg", str(c.unit_keys(unit)), "--unit", unit).returncode == 0
    registry = c.root / "registry.json"
    built = c.fedseg("keys", "registry", str(registry), *[str(c.unit_keys(u) / f"{u}.secagg.pub") for u in UNITS])
    assert built.returncode == 0, built.stdout + built.stderr
    c.start_superlink()
    c.connect()
    assert c.register(*UNITS).returncode == 0
    for i, unit in enumerate(UNITS):
        c.start_unit(unit, c.write_unit(
            unit, sim / "outcomes" / f"events_unit_{i}.parquet",
            **{"actions-path": str(sim / "units" / f"actions_unit_{i}.parquet"),
               "secagg-key": str(c.unit_keys(unit) / f"{unit}.secagg.key"), "secagg-registry": str(registry)}))
    wait_for(lambda: c.online_units() >= 3, 180, "three units online", [c.log(u) for u in UNITS])
    cells = (f"task='effects' dataset='' effects-dataset='' min-available-units=3 round-timeout-s=300.0 "
             f"population=3000 effects-campaign-date='{plan['campaign_date']}' effects-secagg=true "
             f"effects-segments='{','.join(plan['segments'])}' effects-actions='{','.join(plan['actions'])}'")

    def measure(name: str, extra: str) -> dict:
        out = c.root / name
        run = c.flwr_run(name, f"{cells} output-dir='{out}' {extra}")
        run.wait(timeout=900)
        assert (out / "effects.json").exists(), c.log(name).read_text(errors="replace")[-4000:]
        return json.loads((out / "effects.json").read_text())

    t0 = time.time()
    exact = measure("exact", "")
    seconds = {"exact": time.time() - t0}
    secure = exact["privacy"]["secure_aggregation"]
    assert secure["units_summed"] == 3 and secure["min_survivors"] == 3
    want = {(e["segment"], e["action"]): e for e in reference["effects"] if "uplift" in e}
    got = {(e["segment"], e["action"]): e for e in exact["effects"] if "uplift" in e}
    assert want and set(got) == set(want)
    for cell, e in got.items():
        assert e["n_treated"] == want[cell]["n_treated"] and e["n_control"] == want[cell]["n_control"], cell
        assert e["uplift"] == pytest.approx(want[cell]["uplift"], abs=1e-9), cell

    t0 = time.time()
    noisy = measure("dp", "effects-epsilon=1.0")
    seconds["epsilon 1"] = time.time() - t0
    assert noisy["privacy"]["epsilon"] == pytest.approx(1.0, rel=1e-3)
    assert noisy["privacy"]["secure_aggregation"]["min_survivors"] == 3
    for unit in UNITS:                     # the exact run charged nothing; the DP run once, epsilon 1
        ledger = c.root / f"out-{unit}" / "privacy-ledger.sqlite"
        assert [round(e, 3) for _, e in _releases(ledger)] == [1.0], unit
    print("\ndeployed effect measurement (s): " + ", ".join(f"{k}: {v:.0f}" for k, v in seconds.items()))
