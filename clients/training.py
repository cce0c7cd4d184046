"""Local training and evaluation of a unit's model (churn or CLV) on its own data.

Training minimises the target's loss (:func:`fedseg.models.loss_function`: the binary
cross-entropy of the churn label, or the hurdle negative log likelihood of the spend in the
horizon) with Adam for ``epochs`` passes over the unit's training users. With FedProx (``proximal_mu > 0``) the loss adds
``mu / 2 * ||w - w_global||^2`` (Li et al. 2020), which keeps skewed units near the global
model. Threads: one (units share the machine in simulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.dataset import UnitData
from fedseg.config import Target
from fedseg.metrics import loss_sums, score_histograms
from fedseg.models import expected_value, loss_function


class UnitCannotTrain(ValueError):
    """This unit cannot train with the settings it was sent (the message names no user count)."""


@dataclass(frozen=True)
class TrainParams:
    """Local training settings (sent by the coordinator every round)."""

    epochs: int = 2
    learning_rate: float = 0.01
    batch_size: int = 64
    proximal_mu: float = 0.0
    seed: int = 0
    target: Target = "churn"


def target_labels(data: UnitData, mask: np.ndarray, target: Target) -> torch.Tensor:
    """Labels of ``target``: the churn label ``[n]``, or for CLV ``[n, 2]`` (bought in the window,
    spend in the window)."""
    churned = torch.as_tensor(data.labels[mask], dtype=torch.float32)
    if target == "churn":
        return churned
    if data.spend is None:
        raise ValueError("this unit's data carries no spend in the label window; CLV needs it")
    return torch.stack([1.0 - churned, torch.as_tensor(data.spend[mask], dtype=torch.float32)], dim=1)


def tensors(data: UnitData, mean: np.ndarray, std: np.ndarray, mask: np.ndarray,
            target: Target = "churn") -> TensorDataset:
    """Standardised inputs and labels of the users selected by ``mask``."""
    static = torch.as_tensor((data.static[mask] - mean) / std, dtype=torch.float32)
    labels = target_labels(data, mask, target)
    if data.seq_types is None:
        return TensorDataset(static, labels)
    return TensorDataset(static, torch.as_tensor(data.seq_types[mask]),
                         torch.as_tensor(data.seq_values[mask]), labels)


def forward(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a batch from :func:`tensors`."""
    if len(batch) == 2:
        static, labels = batch
        return model(static), labels
    static, seq_types, seq_values, labels = batch
    return model(static, seq_types, seq_values), labels


def train_local(
    model: nn.Module,
    data: UnitData,
    mean: np.ndarray,
    std: np.ndarray,
    params: TrainParams,
    optimizer: torch.optim.Optimizer | None = None,
    loader: DataLoader | None = None,
) -> float:
    """Train ``model`` in place on the unit's training users; returns the mean batch loss.

    ``optimizer`` and ``loader`` may be given already wrapped (for example by DP-SGD);
    otherwise Adam and a shuffling loader are made here.
    """
    torch.set_num_threads(1)
    if data.n_train == 0:
        raise UnitCannotTrain("this unit has no training users at the cutoff; it cannot train")
    generator = torch.Generator().manual_seed(params.seed)
    torch.manual_seed(params.seed)  # dropout draws from the global generator: the same seed, the same model
    if loader is None:
        loader = DataLoader(tensors(data, mean, std, ~data.test_mask, params.target), batch_size=params.batch_size,
                            shuffle=True, generator=generator)
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    anchor = [p.detach().clone() for p in model.parameters()] if params.proximal_mu > 0 else None
    loss_fn = loss_function(params.target)
    model.train()
    losses = []
    for _ in range(params.epochs):
        for batch in loader:
            if len(batch[-1]) == 0:
                continue  # an empty Poisson batch (DP-SGD) carries no gradient
            optimizer.zero_grad()
            logits, labels = forward(model, batch)
            loss = loss_fn(logits, labels)
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + params.proximal_mu / 2 * prox
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def predict_proba(model: nn.Module, dataset: TensorDataset, batch_size: int = 4096) -> np.ndarray:
    """Churn probabilities for every row of ``dataset``."""
    return predict(model, dataset, "churn", batch_size)


def predict(model: nn.Module, dataset: TensorDataset, target: Target, batch_size: int = 4096) -> np.ndarray:
    """Churn probabilities, or predicted spend over the horizon (currency units), for every row."""
    model.eval()
    out = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size):
            outputs, _ = forward(model, batch)
            out.append((expected_value(outputs) if target == "clv" else torch.sigmoid(outputs)).numpy())
    return np.concatenate(out) if out else np.empty(0)


def evaluate_clv_local(model: nn.Module, data: UnitData, mean: np.ndarray, std: np.ndarray,
                       noise_sigma: float = 0.0, clip: float = 500.0,
                       rng: np.random.Generator | None = None) -> dict[str, float | list[float]]:
    """The unit's CLV evaluation aggregates of its test users (:func:`fedseg.value_metrics.clv_aggregates`):
    exact sums and fine histograms, or under DP clipped, coarse and noisy ones."""
    from fedseg.value_metrics import clv_aggregates

    pred = predict(model, tensors(data, mean, std, data.test_mask, "clv"), "clv")
    assert data.spend is not None
    return clv_aggregates(pred, data.spend[data.test_mask], noise_sigma=noise_sigma, clip=clip, rng=rng)


@dataclass
class EvalStats:
    """Aggregate evaluation statistics of one unit's test users (see :mod:`fedseg.metrics`)."""

    n: float
    loss_sum: float
    brier_sum: float
    hist_pos: np.ndarray
    hist_neg: np.ndarray


def evaluate_local(model: nn.Module, data: UnitData, mean: np.ndarray, std: np.ndarray,
                   noise_sigma: float = 0.0, bins: int | None = None, loss_clip: float = 10.0,
                   rng: np.random.Generator | None = None) -> EvalStats:
    """Score the unit's test users; only sums and histograms come out.

    With ``noise_sigma > 0`` (user-level DP) the histograms have ``bins`` bins, each user's log
    loss is clipped to ``loss_clip``, and Gaussian noise is added: ``noise_sigma`` to every
    count, to ``n`` and to the Brier sum, ``loss_clip * noise_sigma`` to the log-loss sum.
    """
    from fedseg.metrics import HIST_BINS

    dataset = tensors(data, mean, std, data.test_mask)
    probs = predict_proba(model, dataset)
    labels = data.labels[data.test_mask]
    if noise_sigma <= 0:
        loss_sum, brier_sum = loss_sums(probs, labels)
        pos, neg = score_histograms(probs, labels, bins or HIST_BINS)
        return EvalStats(n=len(labels), loss_sum=loss_sum, brier_sum=brier_sum, hist_pos=pos, hist_neg=neg)
    rng = rng or np.random.default_rng()  # OS entropy
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    per_user_loss = np.minimum(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)), loss_clip)
    from privacy.training_dp import DP_EVAL_BINS

    pos, neg = score_histograms(probs, labels, bins or DP_EVAL_BINS)
    return EvalStats(
        n=float(len(labels) + rng.normal(0, noise_sigma)),
        loss_sum=float(per_user_loss.sum() + rng.normal(0, loss_clip * noise_sigma)),
        brier_sum=float(((p - labels) ** 2).sum() + rng.normal(0, noise_sigma)),
        hist_pos=pos + rng.normal(0, noise_sigma, len(pos)),
        hist_neg=neg + rng.normal(0, noise_sigma, len(neg)),
    )


def train_local_dpsgd(
    model: nn.Module,
    data: UnitData,
    mean: np.ndarray,
    std: np.ndarray,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    steps: int,
    learning_rate: float,
    sample_generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
    target: Target = "churn",
) -> tuple[float, int]:
    """User-level DP-SGD with Opacus: exactly ``steps`` Poisson-sampled steps.

    Each user is one training example, so Opacus' per-sample clipping to ``max_grad_norm`` is
    per-user clipping; Gaussian noise ``noise_multiplier * max_grad_norm`` is added to every
    summed gradient. The loader's batch size is ``floor(q * n)``, so the sampling rate Opacus
    uses, ``1 / ceil(n / batch)``, never exceeds the ``q`` the unit accounts for. Empty
    Poisson batches are stepped over, not resampled. Returns (mean loss, steps taken).

    The Poisson sample is drawn with ``sample_generator`` and the noise with ``noise_generator``;
    by default both are seeded from OS entropy (:func:`clients.unit_privacy.private_generators`),
    never from anything the coordinator knows: amplification by subsampling assumes the sample
    is secret. (Opacus' ``secure_mode`` would also resist floating-point attacks on the noise, but
    it needs torchcsprng, which does not exist for this torch; docs/privacy.md.)
    """
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    torch.set_num_threads(1)
    n = data.n_train
    batch = int(np.floor(sample_rate * n))
    if batch < 1:
        # The reason goes to the coordinator: it must not state how many users this unit has.
        raise UnitCannotTrain(f"this unit has too few training users for sample rate {sample_rate} (below one "
                              "expected user per step); raise --sample-rate or leave this unit out")
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"model is not compatible with DP-SGD: {errors}")
    if sample_generator is None or noise_generator is None:
        from clients.unit_privacy import private_generators

        sample_generator, noise_generator, _ = private_generators({}, None, "dpsgd")
    loader = DataLoader(tensors(data, mean, std, ~data.test_mask, target), batch_size=batch, shuffle=True,
                        generator=sample_generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    import warnings

    with warnings.catch_warnings():
        # secure_mode needs torchcsprng, which does not exist for this torch (docs/privacy.md)
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        dp_model, dp_optimizer, dp_loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm, poisson_sampling=True, noise_generator=noise_generator,
        )
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    loss_fn = loss_function(target)
    dp_model.train()
    losses, taken = [], 0
    while taken < steps:
        for batch_data in dp_loader:
            if taken >= steps:
                break
            taken += 1
            dp_optimizer.zero_grad()
            if len(batch_data[-1]) == 0:
                # An empty Poisson batch: the step still happens (noise only), as accounted. Opacus
                # needs a backward pass to set its (empty) per-sample gradients before it can step.
                logits, labels = forward(dp_model, batch_data)
                loss_fn(logits, labels, reduction="sum").backward()
                dp_optimizer.step()
                continue
            logits, labels = forward(dp_model, batch_data)
            loss = loss_fn(logits, labels)
            loss.backward()
            dp_optimizer.step()
            losses.append(float(loss.detach()))
    return (float(np.mean(losses)) if losses else float("nan")), taken
