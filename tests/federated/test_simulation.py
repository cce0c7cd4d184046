"""A real Flower simulation: learning, what leaves a unit, resuming, failing units."""

from __future__ import annotations

import pytest

from clients.guard import ALLOWED_METRICS
from fedseg.models import expected_shapes
from fedseg.checkpoint import load_checkpoint
from fedseg.config import TrainingPlan
from server.training import ResumeMismatch

from .conftest import CUTOFF, run_flower


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
    assert len(grid.replies) == 3 * (1 + 1 + 3 * 2)   # query + eval(0) + 3 x (train + eval)
    for reply in grid.replies:
        assert not reply.has_error(), reply.error.reason
        kind = reply.metadata.message_type.split(".")[0]
        kinds.add(kind)
        content = reply.content
        if kind == "query":   # the start-up query also carries the unit's own name, nothing else
            assert set(content.keys()) == {"metrics", "identity"}
            assert set(content["identity"].keys()) == {"unit-id"}
        else:
            assert set(content.keys()) <= {"arrays", "metrics"}
        if kind == "train":
            arrays = content.array_records["arrays"]
            assert {k: tuple(v.shape) for k, v in arrays.items()} == shapes
        else:
            assert not content.array_records
        metrics = content.metric_records["metrics"]
        assert set(metrics.keys()) <= ALLOWED_METRICS[kind]
        # aggregates only: no list is as long as the unit's number of users
        assert all(not isinstance(v, list) or len(v) in (12, 2000) for v in metrics.values())
    assert kinds == {"query", "train", "evaluate"}


def test_resumed_run_continues_after_last_saved_round(cdnow_units, tmp_path):
    first, _ = run_flower(plan_for(tmp_path, 2), cdnow_units)
    saved = load_checkpoint(tmp_path)
    assert saved is not None and saved.round == 2
    second, grid = run_flower(plan_for(tmp_path, 4), cdnow_units)
    result = second[0]
    assert result.resumed_from == 2
    assert [r["round"] for r in result.history] == [0, 1, 2, 3, 4]
    assert result.history[:3] == first[0].history        # rounds 1-2 kept, not re-run
    # the resumed run sent no feature query and no round-0 evaluation: 2 rounds x (train + eval)
    assert len(grid.sent) == 3 * 2 * 2
    assert {m.metadata.message_type.split(".")[0] for m in grid.sent} == {"train", "evaluate"}
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
