"""Models, defined once and used by units (training) and the coordinator (init, scoring).

Two targets (:data:`fedseg.config.Target`) share the federated loop:

- ``churn``: one logit per user, ``P(churn) = sigmoid(logit)``;
- ``clv``: customer value over the label horizon, a **hurdle** model (:class:`ClvMLP`): the
  probability to buy at all times the expected spend of a buyer, with a log-normal spend.

- :class:`ChurnMLP`: a multilayer perceptron on the standardised per-user features
  (:data:`fedseg.config.MODEL_FEATURES`).
- :class:`ChurnGRU`: a GRU over each user's last ``seq_len`` events (event type embedding,
  log gap to the previous event, log amount, log age of the event before the cutoff); its last
  hidden state is joined with the standardised static features before the output layer, so
  the sequence adds what the summary features miss (order and rhythm of recent events).

No BatchNorm anywhere: per-sample gradients (Opacus DP-SGD) need layers without cross-sample
statistics.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np
import torch
from torch import nn

from fedseg.config import MODEL_FEATURES, ModelName, Target
from fedseg.sequences import DEFAULT_SEQ_LEN, SEQ_EVENT_TYPES, SEQ_NUMERIC, SEQ_VOCAB, uses_sequences

__all__ = ["DEFAULT_SEQ_LEN", "SEQ_EVENT_TYPES", "SEQ_NUMERIC", "SEQ_VOCAB", "ChurnGRU", "ChurnMLP", "build_model",
           "expected_shapes", "model_version", "uses_sequences"]


class ChurnMLP(nn.Module):
    """``n_features -> hidden... -> 1`` with ReLU and dropout."""

    def __init__(self, n_features: int = len(MODEL_FEATURES), hidden: tuple[int, ...] = (64, 32),
                 dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, static: torch.Tensor, seq_types: torch.Tensor | None = None,
                seq_values: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(static).squeeze(-1)


class ChurnGRU(nn.Module):
    """GRU over recent events, joined with the static features."""

    def __init__(self, n_features: int = len(MODEL_FEATURES), embed_dim: int = 8,
                 hidden: int = 32, head: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(SEQ_VOCAB, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim + SEQ_NUMERIC, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden + n_features, head), nn.ReLU(), nn.Linear(head, 1))

    def forward(self, static: torch.Tensor, seq_types: torch.Tensor | None = None,
                seq_values: torch.Tensor | None = None) -> torch.Tensor:
        if seq_types is None or seq_values is None:
            raise ValueError("ChurnGRU needs the event sequences (seq_types, seq_values)")
        steps = torch.cat([self.embed(seq_types), seq_values], dim=-1)
        # Sequences are left-padded, so the last step is each user's most recent event.
        _, h_n = self.gru(steps)
        return self.head(torch.cat([h_n[-1], static], dim=-1)).squeeze(-1)


class ClvMLP(nn.Module):
    """Hurdle model of a user's spend ``Y`` over the horizon (currency units).

    The MLP of :class:`ChurnMLP` with two outputs per user, ``a`` and ``m``, and one learned
    scalar ``v`` (an ``nn.Linear(1, 1)`` on a constant input, so Opacus can clip its per-user
    gradient like any other weight):

    - ``P(Y > 0) = sigmoid(a)`` (buys at all in the window);
    - ``log(1 + Y) | Y > 0 ~ Normal(m, s^2)`` with ``s^2 = exp(v)``, the same for every user;
    - ``E[Y] = sigmoid(a) * (exp(m + s^2 / 2) - 1)``: the predicted CLV.

    The loss (:func:`clv_loss`) is the negative log likelihood per user: the cross-entropy of
    buying plus, for buyers, ``(log(1 + y) - m)^2 / (2 s^2) + log(s^2) / 2``. Forward returns
    ``[n, 3]``: ``a``, ``m``, ``v``.
    """

    def __init__(self, n_features: int = len(MODEL_FEATURES), hidden: tuple[int, ...] = (64, 32),
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.body = ChurnMLP(n_features, hidden, dropout)
        self.body.net[-1] = nn.Linear(hidden[-1], 2)
        self.log_var = nn.Linear(1, 1)
        nn.init.zeros_(self.log_var.weight)
        nn.init.zeros_(self.log_var.bias)

    def forward(self, static: torch.Tensor, seq_types: torch.Tensor | None = None,
                seq_values: torch.Tensor | None = None) -> torch.Tensor:
        out = self.body.net(static)
        v = self.log_var(torch.ones_like(out[:, :1]))
        return torch.cat([out, v.clamp(LOG_VAR_MIN, LOG_VAR_MAX)], dim=1)


#: Bounds of the learned log-variance of log spend (numerical safety; CDNOW settles near -0.3).
LOG_VAR_MIN: Final = -6.0
LOG_VAR_MAX: Final = 4.0


def clv_loss(out: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative log likelihood of :class:`ClvMLP` (up to a constant); ``labels[:, 0]`` is 1 for a
    buyer, ``labels[:, 1]`` the spend (currency units)."""
    buy, spend = labels[:, 0], labels[:, 1]
    a, m, v = out[:, 0], out[:, 1], out[:, 2]
    hurdle = nn.functional.binary_cross_entropy_with_logits(a, buy, reduction="none")
    lognormal = buy * (0.5 * (torch.log1p(torch.clamp(spend, min=0.0)) - m) ** 2 * torch.exp(-v) + 0.5 * v)
    per_user = hurdle + lognormal
    return per_user.sum() if reduction == "sum" else per_user.mean()


def expected_value(out: torch.Tensor) -> torch.Tensor:
    """Predicted spend ``E[Y]`` (currency units) from :class:`ClvMLP` outputs."""
    return torch.sigmoid(out[:, 0]) * torch.expm1(out[:, 1] + torch.exp(out[:, 2]) / 2).clamp(min=0.0)


def churn_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of the churn label."""
    return nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction=reduction)


def loss_function(target: Target):  # noqa: ANN201 - a loss callable
    """The training loss of ``target``: ``loss(outputs, labels, reduction="mean")``."""
    return clv_loss if target == "clv" else churn_loss


def build_model(name: ModelName, seed: int | None = None, target: Target = "churn") -> nn.Module:
    """A fresh model for ``target``; with ``seed`` its initial weights are reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    if target == "clv":
        if name != "mlp":
            raise ValueError(f"the CLV model is an MLP on the per-user features; model {name!r} is not available "
                             "for target clv")
        return ClvMLP()
    if name == "mlp":
        return ChurnMLP()
    if name == "gru":
        return ChurnGRU()
    raise ValueError(f"unknown model {name!r}; choose mlp or gru")


def model_version(state: dict[str, torch.Tensor]) -> str:
    """A content hash of the weights: ``sha256:<first 16 hex>`` over names, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(state):
        array = state[name].detach().cpu().numpy()
        digest.update(name.encode())
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def expected_shapes(name: ModelName, target: Target = "churn") -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of model ``name`` for ``target``: what a unit may send back."""
    return {k: tuple(v.shape) for k, v in build_model(name, target=target).state_dict().items()}
