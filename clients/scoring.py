"""Scoring a unit's users with a trained global model, locally.

The model file (``model.npz`` in a run's server directory) carries the weights, the global
standardisation and the model's name and version; the unit computes its users' features at the
scoring cutoff and writes one churn probability per user. Nothing leaves the unit.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clients.dataset import build_sequences, transform_static
from clients.features import build_features, check_cutoff
from clients.training import predict_proba
from fedseg.config import FeatureConfig
from fedseg.models import build_model, model_version, uses_sequences
from fedseg.checkpoint import load_checkpoint
from fedseg.errors import FedsegError


class ModelFileError(FedsegError):
    """The model file is missing or not a fedseg model."""


def load_model_file(path: Path) -> tuple[torch.nn.Module, dict, list[float], list[float]]:
    """Model, metadata, scaler mean and std from a ``model.npz`` written by a run."""
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
    model = build_model(checkpoint.extra["model"])
    model.load_state_dict({k: torch.as_tensor(v) for k, v in checkpoint.arrays.items()})
    meta = dict(checkpoint.extra)
    actual = model_version(model.state_dict())
    if meta.get("model_version") not in (None, actual):
        raise ModelFileError(f"{path}: weights do not match the recorded version {meta['model_version']} "
                             f"(found {actual}); the file was altered or damaged")
    return model, meta, checkpoint.scaler_mean, checkpoint.scaler_std


def score_users(events: pd.DataFrame, model_path: Path, cutoff: dt.date | None = None,
                users: pd.DataFrame | None = None) -> pd.DataFrame:
    """Churn probability per user with history before the end of ``cutoff``.

    ``cutoff`` defaults to the day of the latest event (score everyone as of now).
    """
    model, meta, mean, std = load_model_file(model_path)
    if cutoff is None:
        cutoff = events["ts"].max().date()
    config = FeatureConfig(cutoff=cutoff, horizon_days=int(meta.get("horizon_days", 1)))
    check_cutoff(events, config)
    features = build_features(events, config, users=users)
    static = torch.as_tensor((transform_static(features) - np.asarray(mean)) / np.asarray(std), dtype=torch.float32)
    if uses_sequences(meta["model"]):
        t_ref = int(np.datetime64(config.t_ref, "ns").astype(np.int64))
        types, values = build_sequences(events, features["user_id"], t_ref)
        dataset = torch.utils.data.TensorDataset(static, torch.as_tensor(types), torch.as_tensor(values),
                                                 torch.zeros(len(static)))
    else:
        dataset = torch.utils.data.TensorDataset(static, torch.zeros(len(static)))
    probs = predict_proba(model, dataset)
    return pd.DataFrame({
        "user_id": features["user_id"].to_numpy(),
        "churn_probability": probs.astype(np.float64),
        "lifecycle_stage": features["lifecycle_stage"].astype(str).to_numpy(),
        "scored_at_cutoff": cutoff.isoformat(),
        "model": meta["model"],
        "model_version": meta["model_version"],
    })
