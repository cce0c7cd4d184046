"""Scoring a unit's users with trained global models, locally.

A model file (``model.npz`` in a run's server directory) carries the weights, the global
standardisation, the model's name, target (``churn`` or ``clv``) and version; the unit computes
its users' features at the scoring cutoff and writes, per user, the churn probability and/or the
predicted customer value (spend over the CLV model's horizon, currency units), and with both the
**value at risk** ``P(churn) x CLV``. Nothing leaves the unit.

The same models can reach a unit inside a segmentation message (the coordinator sends the arrays,
the scaler and the metadata, :func:`ScoringModel.from_records`), so ``fedseg segment`` puts the
scores into each unit's per-user segment file without a scores file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clients.dataset import build_sequences, transform_static
from clients.features import build_features, check_cutoff
from clients.training import predict
from fedseg.checkpoint import load_checkpoint
from fedseg.config import FeatureConfig
from fedseg.errors import FedsegError
from fedseg.models import build_model, model_version, uses_sequences


class ModelFileError(FedsegError):
    """The model file is missing or not a fedseg model."""


#: The output column of each target.
SCORE_COLUMNS = {"churn": "churn_probability", "clv": "clv"}


@dataclass
class ScoringModel:
    """A global model ready to score: weights, standardisation and what it predicts."""

    model: torch.nn.Module
    name: str
    target: str
    version: str
    mean: list[float]
    std: list[float]
    horizon_days: int

    @property
    def column(self) -> str:
        return SCORE_COLUMNS[self.target]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], mean: list[float],
                    std: list[float], source: str) -> "ScoringModel":
        """Build and check a model from its arrays and metadata (name, target, version, horizon)."""
        target = str(meta.get("target", "churn"))
        model = build_model(meta["model"], target=target)  # type: ignore[arg-type]
        try:
            model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()})
        except RuntimeError as exc:
            raise ModelFileError(f"{source}: the weights do not fit a {meta['model']} {target} model ({exc})") from None
        actual = model_version(model.state_dict())
        if meta.get("model_version") not in (None, actual):
            raise ModelFileError(f"{source}: weights do not match the recorded version {meta['model_version']} "
                                 f"(found {actual}); the file was altered or damaged")
        return cls(model, str(meta["model"]), target, actual, list(mean), list(std),
                   int(meta.get("horizon_days", 1)))

    def metadata(self) -> dict[str, Any]:
        """What travels with the arrays in a message (``model``, ``target``, ``model-version``, ...)."""
        return {"model": self.name, "target": self.target, "model-version": self.version,
                "horizon-days": self.horizon_days, "scaler-mean": list(self.mean), "scaler-std": list(self.std)}

    @classmethod
    def from_records(cls, arrays: Any, config: Any) -> "ScoringModel":
        """A model sent in a message: its ArrayRecord and the :meth:`metadata` config."""
        meta = {"model": str(config["model"]), "target": str(config["target"]),
                "model_version": str(config["model-version"]), "horizon_days": int(config["horizon-days"])}
        numpy = {k: v.numpy() for k, v in arrays.items()}
        return cls.from_arrays(numpy, meta, list(config["scaler-mean"]), list(config["scaler-std"]),
                               f"model {meta['model_version']}")


def load_model_file(path: Path) -> ScoringModel:
    """The model in a ``model.npz`` written by a run."""
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file; a run writes it as <run>/server/model.npz")
    try:
        checkpoint = load_checkpoint(path.parent, name=path.name)
    except (ValueError, OSError, KeyError, EOFError) as exc:  # not an .npz of ours (a CSV, a pickle, ...)
        raise ModelFileError(f"{path} is not a fedseg model file ({type(exc).__name__}); use <run>/server/model.npz "
                             "written by a training run") from None
    if checkpoint is None or "model" not in checkpoint.extra:
        raise ModelFileError(f"{path} is not a fedseg model file (no model name inside); use "
                             "<run>/server/model.npz written by a training run")
    return ScoringModel.from_arrays(checkpoint.arrays, dict(checkpoint.extra), checkpoint.scaler_mean,
                                    checkpoint.scaler_std, str(path))


def score_features(events: pd.DataFrame, features: pd.DataFrame, cutoff: dt.date, models: list[ScoringModel]
                   ) -> pd.DataFrame:
    """``user_id`` and one column per model (``churn_probability``, ``clv``), plus ``value_at_risk``
    when both are there, for the users of ``features`` (built at ``cutoff``)."""
    out = pd.DataFrame({"user_id": features["user_id"].to_numpy()})
    raw = transform_static(features)
    for scorer in models:
        static = torch.as_tensor((raw - np.asarray(scorer.mean)) / np.asarray(scorer.std), dtype=torch.float32)
        if uses_sequences(scorer.name):  # type: ignore[arg-type]
            t_ref = int(np.datetime64(FeatureConfig(cutoff=cutoff).t_ref, "ns").astype(np.int64))
            types, values = build_sequences(events, features["user_id"], t_ref)
            dataset = torch.utils.data.TensorDataset(static, torch.as_tensor(types), torch.as_tensor(values),
                                                     torch.zeros(len(static)))
        else:
            dataset = torch.utils.data.TensorDataset(static, torch.zeros(len(static)))
        out[scorer.column] = predict(scorer.model, dataset, scorer.target).astype(np.float64)  # type: ignore[arg-type]
    if {"churn_probability", "clv"} <= set(out.columns):
        out["value_at_risk"] = out["churn_probability"] * out["clv"]
    return out


def score_users(events: pd.DataFrame, model_path: Path | None = None, cutoff: dt.date | None = None,
                users: pd.DataFrame | None = None, clv_model_path: Path | None = None) -> pd.DataFrame:
    """Churn probability and/or CLV per user with history before the end of ``cutoff``.

    ``cutoff`` defaults to the day of the latest event (score everyone as of now).
    """
    models = [load_model_file(p) for p in (model_path, clv_model_path) if p is not None]
    if not models:
        raise ModelFileError("no model given: pass --model (churn or CLV) and/or --clv-model")
    if len({m.target for m in models}) < len(models):
        raise ModelFileError("both models predict the same target; give one churn model and one CLV model")
    if cutoff is None:
        cutoff = events["ts"].max().date()
    config = FeatureConfig(cutoff=cutoff, horizon_days=max(m.horizon_days for m in models))
    check_cutoff(events, config)
    features = build_features(events, config, users=users)
    table = score_features(events, features, cutoff, models)
    table["lifecycle_stage"] = features["lifecycle_stage"].astype(str).to_numpy()
    table["scored_at_cutoff"] = cutoff.isoformat()
    for scorer in models:
        prefix = "" if scorer.target == "churn" else "clv_"
        table[f"{prefix}model"] = scorer.name
        table[f"{prefix}model_version"] = scorer.version
    clv = next((m for m in models if m.target == "clv"), None)
    if clv is not None:
        table["clv_horizon_days"] = clv.horizon_days
    return table
