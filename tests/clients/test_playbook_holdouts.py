"""The playbook's CRM action list: value-at-risk ranking, contact caps across actions and channels,
channel capacity, and randomised holdouts per segment x action drawn by a unit-local secret."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from clients.playbook import ACTION_COLUMNS, HOLDOUT, SUPPRESSED, TREATMENT, assign_holdout, plan_actions
from fedseg.errors import FedsegError
from fedseg.playbook import ActionSpec, PlaybookConfig, PlaybookRule, load_playbook

TODAY = dt.date(2024, 3, 31)


def user_table(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": [f"u{i:05d}" for i in range(n)],
        "segment": rng.integers(0, 3, n),
        "segment_name": np.array(["steady", "at-risk", "silent"], dtype=object)[rng.integers(0, 3, n)],
        "rfm_segment": np.array(["At Risk", "Need Attention", "Lost"], dtype=object)[rng.integers(0, 3, n)],
        "value_tier": np.array(["basic", "VIP"], dtype=object)[rng.integers(0, 2, n)],
        "lifecycle_stage": "decline",
        "monetary_total": rng.gamma(1.0, 100.0, n),
        "churn_probability": rng.uniform(0, 1, n),
        "clv": rng.gamma(0.8, 60.0, n),
        "warning": None,
    })


def test_the_action_list_is_a_crm_table_ranked_by_value_at_risk():
    table = user_table()
    actions = plan_actions(table, PlaybookConfig(), TODAY, rng=np.random.default_rng(1))
    assert tuple(actions.columns) == ACTION_COLUMNS
    assert actions["user_id"].is_unique and set(actions["user_id"]) <= set(table["user_id"])
    var = actions["churn_probability"] * actions["clv"]
    assert np.allclose(actions["value_at_risk"], var)
    assert (np.diff(actions["value_at_risk"].to_numpy()) <= 0).all() and (actions["rank"] == np.arange(1, len(actions) + 1)).all()
    assert set(actions["ranked_by"]) == {"value_at_risk"}
    spec = {a.name: a for a in PlaybookConfig().actions}
    assert all(spec[a].channel == c and spec[a].cost == k for a, c, k in actions[["action", "channel", "cost"]].itertuples(index=False))
    assert set(actions["arm"]) == {TREATMENT, HOLDOUT} and (actions["holdout"] == (actions["arm"] == HOLDOUT)).all()
    assert actions["reason"].str.startswith("rule ").all() and (actions["campaign_date"] == "2024-03-31").all()
    # without scores the list is ranked by past spend, and says so
    plain = plan_actions(table.drop(columns=["churn_probability", "clv"]), PlaybookConfig(), TODAY,
                         rng=np.random.default_rng(1))
    assert set(plain["ranked_by"]) == {"monetary_total"} and plain["value_at_risk"].isna().all()


def test_holdout_share_per_segment_and_action_and_balance():
    table = user_table(20_000)
    actions = plan_actions(table, PlaybookConfig(holdout_share=0.1), TODAY, rng=np.random.default_rng(2))
    for (segment, action), cell in actions.groupby(["segment", "action"]):
        want = 0.1 * len(cell)
        assert int(np.floor(want)) <= cell["holdout"].sum() <= int(np.floor(want)) + 1, (segment, action)
    # randomised: the arms have the same value at risk and past spend, up to chance
    held, treated = actions[actions["holdout"]], actions[~actions["holdout"]]
    for column in ("value_at_risk", "churn_probability"):
        se = np.sqrt(held[column].var() / len(held) + treated[column].var() / len(treated))
        assert abs(held[column].mean() - treated[column].mean()) < 4 * se, column
    # exact in expectation for tiny strata: floor(h n) plus a Bernoulli of the remainder
    rng = np.random.default_rng(3)
    counts = [assign_holdout(pd.Series(["a"] * 7), 0.1, rng).sum() for _ in range(4000)]
    assert set(counts) == {0, 1} and np.mean(counts) == pytest.approx(0.7, abs=0.03)


def test_a_table_without_segments_still_holds_out_a_share_of_each_action():
    """The monitoring update plans actions for users who have no activity segment. Under pandas 3
    the missing segment became a missing stratum, which the holdout draw skipped: no user was held
    out, so those actions could never be measured."""
    table = user_table(20_000).drop(columns=["segment", "segment_name"])
    actions = plan_actions(table, PlaybookConfig(holdout_share=0.1), TODAY, rng=np.random.default_rng(2))
    assert actions["segment"].isna().all()
    for action, cell in actions.groupby("action"):
        want = 0.1 * len(cell)
        assert int(np.floor(want)) <= cell["holdout"].sum() <= int(np.floor(want)) + 1, action
    assert set(actions["arm"]) == {TREATMENT, HOLDOUT}


def test_the_holdout_comes_from_the_units_secret_not_from_anything_the_coordinator_sends():
    """Same public inputs (users, segments, playbook, day, run id): with OS entropy two draws differ,
    so the coordinator cannot replay them; a research seed kept on the unit reproduces them."""
    from clients.unit_privacy import private_generators

    table = user_table(3000)

    def draw(node_config: dict, seed: int | None) -> np.ndarray:
        rng = private_generators(node_config, seed, "unit_0|run-abc|holdout")[2]
        return plan_actions(table, PlaybookConfig(), TODAY, rng=rng)["holdout"].to_numpy()

    assert (draw({}, None) != draw({}, None)).any()
    assert (draw({}, 42) == draw({}, 42)).all() and (draw({"dp-seed": 7}, 42) != draw({}, 42)).any()


def test_contact_caps_count_every_action_and_channel_in_the_period():
    table = user_table(6)
    table["rfm_segment"] = "At Risk"  # everyone gets the win-back offer (email)
    table["value_tier"] = "basic"
    config = PlaybookConfig(max_contacts=2, window_days=30, quiet_days=7, channel_caps={"email": 1}, holdout_share=0.0)
    log = pd.DataFrame({
        "user_id": ["u00000", "u00001", "u00001", "u00002", "u00003", "u00004"],
        "ts": ["2024-03-28", "2024-03-05", "2024-03-10", "2024-03-02", "2024-01-10", "2024-03-12"],
        "channel": ["sms", "sms", "push", "email", "email", "sms"],
    })
    actions = plan_actions(table, config, TODAY, contact_log=log, rng=np.random.default_rng(0)).set_index("user_id")
    reasons = actions["suppressed_reason"]
    assert "within the last 7 days" in reasons["u00000"]                        # quiet period
    assert "2 contacts already" in reasons["u00001"]                            # all channels together
    assert "1 email contact(s) allowed per 30 days" in reasons["u00002"]        # the channel's own cap
    assert reasons[["u00003", "u00004", "u00005"]].isna().all()                 # outside the window / other channel
    assert set(actions.loc[["u00000", "u00001", "u00002"], "arm"]) == {SUPPRESSED}
    assert not actions.loc[["u00000", "u00001", "u00002"], "holdout"].any()    # suppressed users are not in the test


def test_channel_capacity_goes_to_the_highest_value_at_risk():
    table = user_table(2000)
    config = PlaybookConfig(channel_capacity={"email": 300}, holdout_share=0.1)
    actions = plan_actions(table, config, TODAY, rng=np.random.default_rng(4))
    email = actions[actions["channel"] == "email"]
    entered = email[email["arm"] != SUPPRESSED]
    assert len(entered) == int(300 / 0.9)
    assert entered["rank"].max() < email.loc[email["arm"] == SUPPRESSED, "rank"].min()
    assert (email.loc[email["arm"] == SUPPRESSED, "suppressed_reason"].str.contains("capacity of 300")).all()
    assert abs((entered["arm"] == TREATMENT).sum() - 300) <= 10


def test_playbook_files_are_checked(tmp_path):
    good = tmp_path / "playbook.toml"
    good.write_text('holdout_share = 0.2\n[[actions]]\nname = "call"\nchannel = "call"\ncost = 12.5\n'
                    '[[rules]]\naction = "call"\npriority = 1\nvalue_tiers = ["VIP"]\n[channel_caps]\ncall = 1\n')
    book = load_playbook(good)
    assert book.holdout_share == 0.2 and book.costs == {"call": 12.5} and book.channel_caps == {"call": 1}
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\naction = "free phone"\npriority = 1\n')
    with pytest.raises(FedsegError, match="free phone"):
        load_playbook(bad)
    with pytest.raises(FedsegError, match="no such file"):
        load_playbook(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="more than once"):
        PlaybookConfig(actions=[ActionSpec(name="a", channel="sms", cost=1), ActionSpec(name="a", channel="sms", cost=1)],
                       rules=[PlaybookRule(action="a", priority=1)])
