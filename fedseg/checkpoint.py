"""The checkpoint format of a federated run: global weights, scaler and per-round history, one file.

Shared: the coordinator writes it, a unit reads the final ``model.npz`` to score its users.

The checkpoint is written after every completed round to ``<run dir>/checkpoint.npz`` by
writing a temporary file in the same folder, flushing it to disk and renaming it over the old
one (``os.replace`` is atomic on POSIX), so a crash leaves either the previous round's
checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The run's checkpoint, replaced after every completed round.
CHECKPOINT_NAME = "checkpoint.npz"
#: The final global model of a run (the same format), what units score with (``fedseg score``).
MODEL_FILE = "model.npz"
#: One JSON line per completed round.
ROUNDS_FILE = "rounds.jsonl"
_STATE_KEY = "__state__"


@dataclass
class Checkpoint:
    """State of a run after ``round`` completed rounds."""

    round: int
    arrays: dict[str, np.ndarray]
    scaler_mean: list[float]
    scaler_std: list[float]
    history: list[dict[str, Any]] = field(default_factory=list)
    plan_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint, name: str = CHECKPOINT_NAME) -> Path:
    """Atomically replace ``run_dir/<name>`` (default ``checkpoint.npz``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "round": checkpoint.round,
        "scaler_mean": checkpoint.scaler_mean,
        "scaler_std": checkpoint.scaler_std,
        "history": checkpoint.history,
        "plan_fingerprint": checkpoint.plan_fingerprint,
        "extra": checkpoint.extra,
        "array_names": list(checkpoint.arrays),
    }
    target = run_dir / name
    tmp = run_dir / (name + ".tmp")
    payload = {f"a{i}": np.asarray(v) for i, v in enumerate(checkpoint.arrays.values())}
    payload[_STATE_KEY] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    with open(tmp, "wb") as handle:
        np.savez(handle, **payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def load_checkpoint(run_dir: Path, name: str = CHECKPOINT_NAME) -> Checkpoint | None:
    """The last completed round's checkpoint (or another file ``name``); None if absent."""
    path = run_dir / name
    if not path.exists():
        return None
    with np.load(path) as data:
        state = json.loads(bytes(data[_STATE_KEY]).decode())
        arrays = {name: data[f"a{i}"] for i, name in enumerate(state["array_names"])}
    return Checkpoint(
        round=state["round"], arrays=arrays, scaler_mean=state["scaler_mean"],
        scaler_std=state["scaler_std"], history=state["history"],
        plan_fingerprint=state["plan_fingerprint"], extra=state.get("extra", {}),
    )
