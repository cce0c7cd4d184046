"""A real Flower simulation: learning, what leaves a unit, resuming, failing units."""

from __future__ import annotations

import pytest

from clients.guard import ALLOWED_METRICS
from fedseg.models import expected_shapes
from fedseg.checkpoint import load_checkpoint
from fedseg.config import TrainingPlan
from server.training import ResumeMismatch

from tests.support.flower import CUTOFF, run_flower


def plan_for(out, rounds: int, **kw) -> TrainingPlan:
    return TrainingPlan(num_rounds=rounds, cutoff=CUTOFF, horizon_days=273, output_dir=out,
                        min_available_units=3, min_fit_units=3, learning_rate=0.005, **kw)


@pytest.fixture(scope="module")
def three_round_run(cdnow_units, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    results, grid = run_flower(plan_for(out, 3), cdnow_units)
    return out, results[0], grid


def test_global_model_improves_over_round_zero(three_round_run):
    _, result, _ = three_round_run
    aucs = [r["auc"] for r in result.history]
    assert [r["round"] for r in result.history] == [0, 1, 2, 3]
    assert aucs[0] < 0.65                       # random initial weights
    assert aucs[-1] > 0.74                      # CDNOW subset: a real churn ranking
    assert result.history[-1]["log_loss"] < result.history[0]["log_loss"] - 0.1
    assert all(r["units_trained"] == 3 for r in result.history[1:])


def test_only_model_arrays_and_allowed_aggregates_leave_units(three_round_run):
    _, _, grid = three_round_run
    shapes = expected_shapes("mlp")
    kinds = set()
    # query + 3 train exchanges (each also evaluating the incoming model) + the last model's evaluation
    assert len(grid.replies) == 3 * (1 + 3 + 1)
    for reply, content in zip(grid.replies, grid.received):
        assert not reply.has_error(), reply.error.reason
        kind = reply.metadata.message_type.split(".")[0]
        kinds.add(kind)
        if kind == "query":   # the start-up query also carries the unit's own name, nothing else
            assert set(content.keys()) == {"metrics", "identity"}
            assert set(content["identity"].keys()) == {"unit-id"}
        elif kind == "train":
            assert set(content.keys()) == {"arrays", "metrics", "evaluation"}
            assert set(content.metric_records["evaluation"].keys()) <= ALLOWED_METRICS["evaluate"]
        else:
            assert set(content.keys()) == {"metrics"}
        if kind == "train":
            arrays = content.array_records["arrays"]
            assert {k: tuple(v.shape) for k, v in arrays.items()} == shapes
        else:
            assert not content.array_records
        for record in content.metric_records.values():
            # aggregates only: no list is as long as the unit's number of users
            assert all(not isinstance(v, list) or len(v) in (12, 2000) for v in record.values())
        assert set(content.metric_records["metrics"].keys()) <= ALLOWED_METRICS[kind]
    assert kinds == {"query", "train", "evaluate"}


def test_one_exchange_per_round_evaluates_every_model_once(three_round_run):
    """Without DP each round's train message also evaluates the model it carries: round r's
    evaluation arrives with round r+1's train replies, the last model's in one more exchange, and
    every record is complete and in order in the history and in rounds.jsonl."""
    import json

    out, result, grid = three_round_run
    kinds = [m.metadata.message_type for m in grid.sent]
    assert kinds == ["query"] * 3 + ["train"] * 9 + ["evaluate"] * 3
    assert all(r["n_eval"] > 0 and "evaluation_pending" not in r for r in result.history)
    lines = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2, 3]
    assert [r["auc"] for r in lines] == [r["auc"] for r in result.history[1:]]
    assert all(r["units_failed_evaluation"] == 0 for r in lines)


def test_resumed_run_continues_after_last_saved_round(cdnow_units, tmp_path):
    first, _ = run_flower(plan_for(tmp_path, 2), cdnow_units)
    saved = load_checkpoint(tmp_path)
    assert saved is not None and saved.round == 2
    second, grid = run_flower(plan_for(tmp_path, 4), cdnow_units)
    result = second[0]
    assert result.resumed_from == 2
    assert [r["round"] for r in result.history] == [0, 1, 2, 3, 4]
    assert result.history[:3] == first[0].history        # rounds 1-2 kept, not re-run
    # the resumed run sent no feature query: 2 train rounds (each evaluating the incoming model,
    # round 2's included) and the last model's evaluation
    assert [m.metadata.message_type for m in grid.sent] == ["train"] * 6 + ["evaluate"] * 3
    assert all("auc" in r for r in result.history)
    # resuming with a different plan is refused
    with pytest.raises(Exception) as info:
        run_flower(plan_for(tmp_path, 5, model="gru"), cdnow_units)
    assert "different plan" in str(info.value) or isinstance(info.value, ResumeMismatch)


def test_score_writes_probabilities_with_the_model_version(three_round_run, cdnow_units, tmp_path):
    import pandas as pd

    from clients.scoring import ModelFileError, score_users

    out, result, _ = three_round_run
    events = pd.read_parquet(cdnow_units[0])
    scores = score_users(events, out / "model.npz", cutoff=CUTOFF)
    assert len(scores) == events["user_id"].nunique()
    assert scores["churn_probability"].between(0, 1).all()
    assert (scores["model_version"] == result.model_version).all()
    # a changed weight is caught by the version check
    import shutil

    from fedseg.checkpoint import load_checkpoint, save_checkpoint

    shutil.copy(out / "model.npz", tmp_path / "model.npz")
    saved = load_checkpoint(tmp_path, name="model.npz")
    first = next(iter(saved.arrays))
    saved.arrays[first] = saved.arrays[first] + 0.01
    save_checkpoint(tmp_path, saved, name="model.npz")
    with pytest.raises(ModelFileError, match="do not match the recorded version"):
        score_users(events, tmp_path / "model.npz", cutoff=CUTOFF)
