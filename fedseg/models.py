"""Churn models, defined once and used by units (training) and the coordinator (init, scoring).

Both output one logit per user: ``P(churn) = sigmoid(logit)``.

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

import numpy as np
import torch
from torch import nn

from fedseg.config import MODEL_FEATURES, ModelName
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


def build_model(name: ModelName, seed: int | None = None) -> nn.Module:
    """A fresh model; with ``seed`` its initial weights are reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
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


def expected_shapes(name: ModelName) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of model ``name``: what a unit may send back."""
    return {k: tuple(v.shape) for k, v in build_model(name).state_dict().items()}
