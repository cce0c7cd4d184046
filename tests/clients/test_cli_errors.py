"""A newcomer's mistakes on the unit-side commands are one line and exit 2, never a traceback
(each case below was a traceback before; issue 16, point 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedseg.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    from fedseg.datasets import load_cdnow

    path = tmp_path_factory.mktemp("cli") / "events.csv"
    frame = load_cdnow()
    frame[frame["user_id"].isin(frame["user_id"].unique()[:300])].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A real model.npz, written by the coordinator's checkpoint code."""
    from fedseg.checkpoint import MODEL_FILE, Checkpoint, save_checkpoint
    from fedseg.models import build_model, model_version

    folder = tmp_path_factory.mktemp("model")
    state = build_model("mlp", seed=0).state_dict()
    arrays = {k: v.numpy() for k, v in state.items()}
    save_checkpoint(folder, Checkpoint(1, arrays, [0.0] * 12, [1.0] * 12, [], "x",
                                       {"model": "mlp", "model_version": model_version(state), "horizon_days": 90}),
                    name=MODEL_FILE)
    return folder / MODEL_FILE


def one_error_line(result) -> str:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return " ".join(result.output.split())


def test_features_with_a_cutoff_before_every_event(events, tmp_path):
    text = one_error_line(runner.invoke(app, ["features", "--events", str(events), "--cutoff", "1990-01-01",
                                              "--out", str(tmp_path / "f.parquet")]))
    assert "no events before the end of 1990-01-01" in text and "first event is on 1997-01-0" in text
    assert not (tmp_path / "f.parquet").exists()
    assert "0/3" not in text   # no stale progress line after the error


def test_score_with_a_cutoff_before_every_event(events, model, tmp_path):
    text = one_error_line(runner.invoke(app, ["score", "--model", str(model), "--events", str(events),
                                              "--cutoff", "1990-01-01", "--out", str(tmp_path / "s.parquet")]))
    assert "no events before the end of 1990-01-01" in text


def test_score_with_an_events_file_as_the_model(events, tmp_path):
    text = one_error_line(runner.invoke(app, ["score", "--model", str(events), "--events", str(events),
                                              "--out", str(tmp_path / "s.parquet")]))
    assert "is not a fedseg model file" in text


def test_a_cutoff_after_all_data_warns_that_every_user_would_be_churned(events, tmp_path):
    result = runner.invoke(app, ["features", "--events", str(events), "--cutoff", "2001-01-01",
                                 "--out", str(tmp_path / "f.parquet")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning:" in text and "every user would be labelled churned" in text


def test_features_of_a_unit_without_purchases_before_the_cutoff():
    """A unit whose history has visits but no purchase crashed with an IndexError."""
    import datetime as dt

    import pandas as pd

    from clients.features import build_features
    from fedseg.config import FeatureConfig
    from fedseg.contract import to_canonical_events

    events = to_canonical_events(pd.DataFrame({"user_id": ["a", "b"], "ts": ["2024-01-02", "2024-01-03"],
                                               "event_type": ["visit", "visit"]}))
    table = build_features(events, FeatureConfig(cutoff=dt.date(2024, 1, 31), horizon_days=30))
    assert list(table["frequency"]) == [0, 0] and list(table["churned"]) == [1, 1]
