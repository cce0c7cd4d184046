"""The centralised baseline: the same model, trained on the pooled data of every unit.

Only possible in simulation (real units may not pool data); it shows the cost of
federation. It uses the same features, transformation, test split and standardisation (the
pooled mean and standard deviation equal the federated ones exactly) and trains for as many
epochs as one unit does in the whole federated run (``rounds x local_epochs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from clients.dataset import UnitData, feature_moments, prepare_unit
from fedseg.scaling import global_scaler
from clients.training import TrainParams, predict, tensors, train_local
from fedseg.config import FeatureConfig, ModelName, Target
from fedseg.models import build_model, uses_sequences


@dataclass
class CentralResult:
    """Figures of the pooled model on the pooled test users (exact, from scikit-learn)."""

    auc: float
    log_loss: float
    brier: float
    n_test: int


def exact_metrics(probs: np.ndarray, labels: np.ndarray) -> CentralResult:
    """AUC, log loss and Brier score computed from every score (no binning)."""
    return CentralResult(
        auc=float(roc_auc_score(labels, probs)),
        log_loss=float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1])),
        brier=float(brier_score_loss(labels, probs)),
        n_test=len(labels),
    )


def pooled_data(events: pd.DataFrame, features: FeatureConfig, model: ModelName,
                users: pd.DataFrame | None = None) -> UnitData:
    """Every unit's events as one dataset."""
    return prepare_unit(events, features, users=users, with_sequences=uses_sequences(model))


def centralised_predictions(data: UnitData, model_name: ModelName, params: TrainParams) -> tuple[np.ndarray, object]:
    """Train ``params.target``'s model on all training users; its predictions for all test users
    (churn probabilities or predicted spend) and the model."""
    mean, std = global_scaler([feature_moments(data.static[~data.test_mask])])
    model = build_model(model_name, seed=params.seed, target=params.target)
    train_local(model, data, mean, std, params)
    return predict(model, tensors(data, mean, std, data.test_mask, params.target), params.target), model


def train_centralised(data: UnitData, model_name: ModelName, params: TrainParams) -> tuple[CentralResult, object]:
    """Train the churn model on all training users, evaluate exactly on all test users."""
    probs, model = centralised_predictions(data, model_name, params)
    return exact_metrics(probs, data.labels[data.test_mask]), model


def score_arrays(data: UnitData, model_name: ModelName, arrays: dict[str, np.ndarray],
                 mean: list[float], std: list[float], target: Target = "churn") -> np.ndarray:
    """Churn probabilities (or predicted spend) of the test users under the given weights."""
    import torch

    model = build_model(model_name, target=target)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()})
    return predict(model, tensors(data, np.asarray(mean), np.asarray(std), data.test_mask, target), target)
