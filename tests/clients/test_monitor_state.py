"""Incremental monitoring state (issue 17, point 3): updates equal a full recompute, idempotent,
crash-safe; transitions, tier changes and warnings are emitted as they occur, deduplicated and capped."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clients.features import build_features
from clients.monitor import (MonitorConfig, _scores, apply_update, date_of, read_state_records, state_features)
from clients.segments import value_tier
from clients.state_store import StateStore
from clients.user_state import FLAG_INACTIVE
from fedseg.config import LIFECYCLE_STAGES, FeatureConfig
from fedseg.segments import VALUE_TIERS
from tests.support.coordinator import random_events

ROOT = Path(__file__).resolve().parents[2]


def assert_state_equals_recompute(path: Path, events: pd.DataFrame) -> pd.DataFrame:
    """Every feature column of the state equals clients.features.build_features on all events
    (money to 1e-9 relative: sums in another order), and the stored stage, tier and inactivity
    flag equal a fresh evaluation: no timer missed a change."""
    store = StateStore(path)
    try:
        as_of = date_of(int(store.meta("as_of")))
        state = state_features(store).sort_values("user_id").reset_index(drop=True)
        cfg = MonitorConfig.model_validate_json(store.meta("config"))
    finally:
        store.close()
    ref = build_features(events, FeatureConfig(cutoff=as_of, horizon_days=1)).sort_values("user_id")
    ref = ref.reset_index(drop=True)
    assert len(state) == len(ref) == events["user_id"].nunique()
    for column in state.columns:
        if column in ("user_id", "lifecycle_stage"):
            assert (state[column].astype(str).to_numpy() == ref[column].astype(str).to_numpy()).all(), column
        else:
            np.testing.assert_allclose(state[column].to_numpy(float), ref[column].to_numpy(float), rtol=1e-9,
                                       atol=1e-9, err_msg=column)
    ids, recs = read_state_records(path)
    order = np.argsort(ids.astype(str))
    ids, recs = ids[order], recs[order]
    assert (ids == ref["user_id"].to_numpy()).all()
    assert (np.asarray(LIFECYCLE_STAGES, dtype=object)[recs["stage"]] == ref["lifecycle_stage"].astype(str)).all()
    r, f, m = _scores(ref, cfg.rfm_thresholds)
    assert (np.asarray(VALUE_TIERS, dtype=object)[recs["tier"]] == value_tier(r, f, m)).all()
    idle = ref["days_since_last_event"].to_numpy() >= cfg.inactivity_days
    assert ((recs["flags"] & FLAG_INACTIVE).astype(bool) == idle).all()
    return ref


def test_state_after_updates_in_any_order_equals_a_full_recompute(tmp_path):
    """Events dealt at random (not by time) into 8 batches: late events, refunds, repeat days."""
    events = random_events(n_users=500, n_events=12_000, seed=3)
    part = np.random.default_rng(0).integers(0, 8, len(events))
    store = StateStore(tmp_path / "state.sqlite")
    for k in range(8):
        apply_update(store, events.loc[part == k].reset_index(drop=True))
    store.close()
    assert_state_equals_recompute(tmp_path / "state.sqlite", events)


def test_daily_updates_emit_changes_when_they_happen_and_equal_a_recompute(tmp_path):
    """One batch per day (some days empty: the clock still moves), 60 updates: after each, the stored
    stages, tiers and warnings equal a fresh evaluation (timers fire on the right day)."""
    events = random_events(n_users=300, n_events=6000, seed=5, days=150)
    days = events["ts"].dt.normalize()
    first = days.min()
    store = StateStore(tmp_path / "state.sqlite")
    applied = [events.loc[days < first + pd.Timedelta(days=100)].reset_index(drop=True)]
    apply_update(store, applied[0], config=MonitorConfig(inactivity_days=7))
    kinds: dict[str, int] = {}
    for i in range(100, 160):
        day = first + pd.Timedelta(days=i)
        batch = events.loc[days == day].reset_index(drop=True)
        if i % 9 == 0:
            batch = batch.iloc[:0]   # a day without events: the clock still moves
        applied.append(batch)
        result = apply_update(store, batch, as_of=day.date())
        for kind, n in result.alerts["kind"].value_counts().items():
            kinds[kind] = kinds.get(kind, 0) + int(n)
        if i % 15 == 0 or i == 159:
            store.close()
            assert_state_equals_recompute(tmp_path / "state.sqlite", pd.concat(applied, ignore_index=True))
            store = StateStore(tmp_path / "state.sqlite")
    assert {"transition", "inactivity", "tier_change"} <= set(kinds), kinds
    # a warning is emitted once per episode: never twice in a row for the same user without clearing
    alerts = store.log("alerts")
    assert not alerts.loc[alerts["kind"] == "inactivity"].duplicated(["user_id", "day"]).any()
    store.close()


def test_same_batch_twice_changes_nothing_and_repeated_event_ids_are_dropped(tmp_path):
    events = random_events(n_users=200, n_events=3000, seed=7)
    path = tmp_path / "state.sqlite"
    store = StateStore(path)
    apply_update(store, events.iloc[:1500].reset_index(drop=True))
    second = apply_update(store, events.iloc[1500:].reset_index(drop=True))
    snapshot = dump(path)
    again = apply_update(store, events.iloc[1500:].reset_index(drop=True))
    assert again.status == "already applied" and dump(path) == snapshot
    overlap = apply_update(store, events.iloc[1400:1600].reset_index(drop=True))  # 200 events, all seen before
    assert overlap.duplicates == 200 and overlap.events == 0
    store.close()
    assert second.status == "applied"
    assert_state_equals_recompute(path, events)


def dump(path: Path) -> list:
    import sqlite3

    with sqlite3.connect(path) as db:
        return [sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in ("meta", "buckets", "seen_events", "batches", "log")]


CRASHER = """
import os, sys, time
import pandas as pd
sys.path.insert(0, {root!r})
from clients.monitor import apply_update
from clients.state_store import StateStore

def pause(stage):
    if stage == "users written":      # inside the transaction, after the users were rewritten
        open({marker!r}, "w").close()
        time.sleep(600)

apply_update(StateStore({state!r}), pd.read_parquet({batch!r}), on_progress=pause)
"""


def test_a_process_killed_mid_update_leaves_the_previous_state(tmp_path):
    events = random_events(n_users=300, n_events=6000, seed=9)
    path = tmp_path / "state.sqlite"
    store = StateStore(path)
    apply_update(store, events.iloc[:3000].reset_index(drop=True))
    store.close()
    before = dump(path)
    batch = tmp_path / "batch.parquet"
    events.iloc[3000:].reset_index(drop=True).to_parquet(batch)
    marker = tmp_path / "inside"
    script = CRASHER.format(root=str(ROOT), marker=str(marker), state=str(path), batch=str(batch))
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the update did not reach the pause"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)   # mid-update: the users are written, nothing committed
    proc.wait()
    assert dump(path) == before          # the previous state, intact
    store = StateStore(path)
    result = apply_update(store, pd.read_parquet(batch))   # the same batch again: applied once
    store.close()
    assert result.status == "applied"
    assert_state_equals_recompute(path, events)


def test_actions_respect_the_contact_caps(tmp_path):
    """Inactivity warnings become re-engagement actions; a user warned again within the quiet days
    gets the action marked suppressed, with the reason."""
    events = random_events(n_users=150, n_events=3000, seed=11, days=60)
    store = StateStore(tmp_path / "state.sqlite")
    cfg = MonitorConfig(inactivity_days=5)
    end = events["ts"].max().date()
    apply_update(store, events, config=cfg)
    result = apply_update(store, events.iloc[:0], as_of=end + dt.timedelta(days=6))
    acted = result.actions.loc[~result.actions["suppressed"]]
    assert len(acted) and (acted["action"] == "re-engagement reminder").any()
    # a randomised holdout of each action (floor(h n) or one more), so its effect can be measured
    for action, cell in acted.groupby("action"):
        assert np.floor(0.1 * len(cell)) <= cell["holdout"].sum() <= np.floor(0.1 * len(cell)) + 1, action
    assert (acted["arm"] == np.where(acted["holdout"], "holdout", "treatment")).all()
    # the same users come back and lapse again 3 days later: within the 7 quiet days, suppressed
    users = acted["user_id"].head(5).tolist()
    back = events.loc[events["user_id"].isin(users)].groupby("user_id").head(1).copy()
    back["ts"] = pd.Timestamp(end + dt.timedelta(days=7))
    back["event_id"] = [f"back-{i}" for i in range(len(back))]
    apply_update(store, back.reset_index(drop=True), as_of=end + dt.timedelta(days=7))
    lapse = apply_update(store, events.iloc[:0], as_of=end + dt.timedelta(days=12))
    mine = lapse.actions.loc[lapse.actions["user_id"].isin(users)]
    assert len(mine) == len(users) and mine["suppressed"].all()
    assert mine["suppressed_reason"].str.contains("contacted within the last 7 days").all()
    store.close()


@pytest.mark.slow
def test_cdnow_in_weekly_updates_equals_a_full_recompute(tmp_path):
    """The whole CDNOW log (69,659 events, 23,570 users) in 78 weekly updates, the first a baseline
    of January 1997, each week moving the clock: the state equals build_features on all events."""
    from fedseg.datasets import load_cdnow

    events = load_cdnow()
    week = ((events["ts"] - pd.Timestamp("1997-01-01")).dt.days // 7).to_numpy()
    store = StateStore(tmp_path / "state.sqlite")
    alerts = 0
    for w in range(int(week.max()) + 1):
        result = apply_update(store, events.loc[week == w].reset_index(drop=True),
                              as_of=dt.date(1997, 1, 1) + dt.timedelta(days=7 * w + 6))
        alerts += len(result.alerts)
    store.close()
    assert alerts > 10_000
    assert_state_equals_recompute(tmp_path / "state.sqlite", events)


def test_unit_update_command_end_to_end_and_its_errors_are_one_line(tmp_path):
    """fedseg unit update on files: baseline, an update with alerts and actions files, the same file
    again (skipped), the clock moved back (refused in one line), status and actions export."""
    from typer.testing import CliRunner

    from fedseg.cli import app
    from tests.clients.test_cli_errors import one_error_line

    runner = CliRunner()
    events = random_events(n_users=200, n_events=4000, seed=4)
    cut = events["ts"].quantile(0.8)
    old, new = tmp_path / "old.csv", tmp_path / "new.parquet"
    events.loc[events["ts"] < cut].to_csv(old, index=False)
    events.loc[events["ts"] >= cut].to_parquet(new)
    state = tmp_path / "unit" / "monitor.sqlite"
    first = runner.invoke(app, ["unit", "update", "--events", str(old), "--state", str(state), "--inactivity-days", "7"])
    assert first.exit_code == 0 and "baseline" in first.output, first.output
    second = runner.invoke(app, ["unit", "update", "--events", str(new), "--state", str(state)])
    assert second.exit_code == 0 and "alerts:" in second.output, second.output
    day = events["ts"].max().date()
    actions = pd.read_parquet(tmp_path / "unit" / f"actions_{day}.parquet")
    assert len(actions) and set(actions["action"]) <= {"win-back offer", "VIP privilege", "welcome guide",
                                                        "streak reward", "re-engagement reminder"}
    alerts = pd.read_parquet(tmp_path / "unit" / f"alerts_{day}.parquet")  # the log's segment, written as is
    assert len(alerts) and {"user_id", "kind", "detail", "day"} <= set(alerts.columns)
    assert set(actions["user_id"]) <= set(alerts["user_id"])  # every action answers an alert
    again = runner.invoke(app, ["unit", "update", "--events", str(new), "--state", str(state)])
    assert again.exit_code == 0 and "already applied" in again.output
    text = one_error_line(runner.invoke(app, ["unit", "update", "--as-of", "2000-01-01", "--state", str(state)]))
    assert f"the state is already at {day}" in text
    text = one_error_line(runner.invoke(app, ["unit", "update", "--state", str(state)]))
    assert "give --events FILE" in text
    status = runner.invoke(app, ["unit", "status", "--state", str(state)])
    assert "200 users" in status.output
    export = runner.invoke(app, ["unit", "actions", "--state", str(state), "--out", str(tmp_path / "a.csv")])
    assert export.exit_code == 0 and len(pd.read_csv(tmp_path / "a.csv")) == len(actions)
    assert_state_equals_recompute(state, events)


def test_tier_codes_follow_the_value_tier_rules_for_every_score_triple():
    from clients.monitor import value_tier_codes
    from clients.user_state import _low_bits

    r, f, m = (a.ravel() for a in np.meshgrid(*[np.arange(1, 6)] * 3, indexing="ij"))
    assert (np.asarray(VALUE_TIERS, dtype=object)[value_tier_codes(r, f, m)] == value_tier(r, f, m)).all()
    k = np.arange(-3, 140)
    lo, hi = _low_bits(k)
    want = [(1 << int(min(max(x, 0), 128))) - 1 for x in k]
    assert [int(h) << 64 | int(lo_) for lo_, h in zip(lo, hi)] == want
