"""``fedseg sweep``: a grid of simulations through Flower's simulation engine, resumable.

A sweep file (TOML) has three tables:

- ``[sweep]``: ``name``, ``out`` (results directory);
- ``[fixed]``: settings every cell shares (any :class:`simulations.runner.SimulationConfig`
  field, and ``task = "train" | "segment"``);
- ``[grid]``: lists of values to cross (the cartesian product is the set of cells), or several
  named sub-grids ``[grid.<name>]`` whose cells are pooled (each with its own ``[fixed]``
  overrides under ``[grid.<name>.fixed]``). Settings that do not apply to a cell are dropped
  before cells are compared, so duplicates collapse (``epsilon`` without privacy, ``alpha``
  without a Dirichlet partition, ``proximal_mu`` without FedProx, training settings in
  segmentation cells and the reverse).

Each cell runs in ``<out>/cells/<cell id>/`` and its row (configuration plus metrics) is
appended to ``<out>/results.csv`` and rewritten to ``<out>/results.parquet``. A cell whose id is
already in the table is skipped, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field, ValidationError

from simulations.runner import SimulationConfig

Task = Literal["train", "segment"]
RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"


class SweepError(ValueError):
    """The sweep file is malformed; the message says where."""


class SweepSpec(BaseModel):
    """A parsed sweep file."""

    name: str = "sweep"
    out: Path = Path("runs/sweep")
    fixed: dict[str, Any] = Field(default_factory=dict)
    grids: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)
    grid_fixed: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def grid(self) -> dict[str, list[Any]]:
        """All grid keys (for display)."""
        out: dict[str, list[Any]] = {}
        for grid in self.grids.values():
            out.update(grid)
        return out


#: Segmentation settings a sweep may set (see server.segmentation.SegmentationPlan).
SEGMENT_KEYS = ("k", "iterations", "seg_epsilon")
#: Training settings that mean nothing to a segmentation cell.
TRAIN_KEYS = ("rounds", "model", "strategy", "proximal_mu", "local_epochs", "learning_rate", "batch_size",
              "privacy", "epsilon", "delta", "noise_multiplier", "sample_rate", "max_grad_norm", "clipping_norm",
              "baselines", "min_fit_units", "ledger")


def load_spec(path: Path) -> SweepSpec:
    """Read and check a sweep file."""
    if not path.exists():
        raise SweepError(f"{path}: no such sweep file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: not valid TOML ({exc})") from None
    head = raw.get("sweep", {})
    grid = raw.get("grid", {})
    if grid and all(isinstance(v, dict) for v in grid.values()):
        grids = {name: {k: v for k, v in sub.items() if k != "fixed"} for name, sub in grid.items()}
        grid_fixed = {name: sub.get("fixed", {}) for name, sub in grid.items()}
    else:
        grids, grid_fixed = {"grid": grid}, {"grid": {}}
    spec = SweepSpec(name=head.get("name", path.stem), out=Path(head.get("out", f"runs/sweep-{path.stem}")),
                     fixed=raw.get("fixed", {}), grids=grids, grid_fixed=grid_fixed)
    for name, sub in spec.grids.items():
        for key, values in sub.items():
            if not isinstance(values, list) or not values:
                raise SweepError(f"{path}: [grid] {name}.{key} must be a non-empty list")
    from fedseg.config import TrainingPlan
    from simulations.runner import PLAN_ALIASES

    allowed = ((set(SimulationConfig.model_fields) - {"plan"}) | set(TrainingPlan.model_fields) | set(PLAN_ALIASES)
               | {"task", *SEGMENT_KEYS})
    fixed_keys = set(spec.fixed).union(*map(set, spec.grid_fixed.values())) if spec.grid_fixed else set(spec.fixed)
    unknown = sorted((fixed_keys | set(spec.grid)) - allowed)
    if unknown:
        raise SweepError(f"{path}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return spec


def _normalise(cell: dict[str, Any]) -> dict[str, Any]:
    cell = dict(cell)
    if cell.get("privacy", "none") == "none":
        cell.pop("epsilon", None)
    if cell.get("partition", "auto") != "dirichlet":
        cell.pop("alpha", None)
    if cell.get("strategy", "fedavg") != "fedprox":
        cell.pop("proximal_mu", None)
    if cell.get("task", "train") != "segment":
        for key in SEGMENT_KEYS:
            cell.pop(key, None)
    else:
        for key in TRAIN_KEYS:
            cell.pop(key, None)
    return cell


def cell_id(cell: dict[str, Any]) -> str:
    """Stable id of a cell: the first 12 hex digits of the sha256 of its sorted settings."""
    return hashlib.sha256(json.dumps(cell, sort_keys=True, default=str).encode()).hexdigest()[:12]


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """The distinct cells of the sweep, in grid order."""
    cells, seen = [], set()
    for name, grid in spec.grids.items():
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            cell = _normalise({**spec.fixed, **spec.grid_fixed.get(name, {}), **dict(zip(keys, values))})
            cid = cell_id(cell)
            if cid not in seen:
                seen.add(cid)
                cells.append({"cell_id": cid, **cell})
    for cell in cells:  # validate every cell before running any
        try:
            _simulation_config(cell, Path("."))
        except ValidationError as exc:
            raise SweepError(f"cell {cell['cell_id']} {cell}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    return cells


def _simulation_config(cell: dict[str, Any], out: Path) -> SimulationConfig:
    fields = {k: v for k, v in cell.items() if k not in ("cell_id", "task", *SEGMENT_KEYS)}
    return SimulationConfig.from_settings(**{**fields, "out": out})


def finished_cells(out: Path) -> set[str]:
    """Ids of cells already in the results table."""
    path = out / RESULTS_CSV
    if not path.exists():
        return set()
    return set(pd.read_csv(path, usecols=["cell_id"], dtype=str)["cell_id"])


def run_cell(cell: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run one cell; returns its row (settings and metrics)."""
    cell_dir = out / "cells" / cell["cell_id"]
    cfg = _simulation_config(cell, cell_dir)
    started = time.perf_counter()
    row = dict(cell)
    if cell.get("task", "train") == "segment":
        from fedseg.config import SegmentationPlan
        from simulations.segment_runner import run_segment_job

        plan = SegmentationPlan(k=cell.get("k"), iterations=cell.get("iterations"), epsilon=cell.get("seg_epsilon"),
                                seed=cfg.seed)
        report = run_segment_job(cfg, plan)
        comparison = report.get("centralised_comparison", {})
        row.update({"k_found": report["k"], "ari": comparison.get("adjusted_rand_index"),
                    "inertia_ratio": comparison.get("inertia_ratio"),
                    "epsilon_spent": report["privacy"]["epsilon"]})
    else:
        from simulations.runner import run_simulation_job

        summary = run_simulation_job(cfg)
        metrics = summary["metrics"]
        row.update({key: metrics.get(key) for key in ("auc", "log_loss", "brier", "centralized_auc", "bgnbd_auc")})
        row["auc_exact"] = metrics.get("auc_exact_pooled")
        row["rounds_json"] = json.dumps([{k: r.get(k) for k in ("round", "auc", "log_loss")}
                                         for r in metrics["rounds"]])
        if "privacy" in summary:
            row["epsilon_spent"] = summary["privacy"].get("epsilon")
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def append_row(out: Path, row: dict[str, Any]) -> None:
    """Add a row to results.csv (creating it) and rewrite results.parquet from the CSV."""
    csv_path = out / RESULTS_CSV
    frame = pd.DataFrame([row])
    if csv_path.exists():
        frame = pd.concat([pd.read_csv(csv_path), frame], ignore_index=True)
    tmp = csv_path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(csv_path)
    frame.to_parquet(out / RESULTS_PARQUET, index=False)


def run_sweep(spec: SweepSpec, on_cell: Callable[[int, int, dict[str, Any], str], None] | None = None) -> pd.DataFrame:
    """Run every unfinished cell; returns the full results table."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = expand(spec)
    done = finished_cells(out)
    (out / "sweep.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    for index, cell in enumerate(cells, start=1):
        if cell["cell_id"] in done:
            if on_cell:
                on_cell(index, len(cells), cell, "skipped (already in results)")
            continue
        if on_cell:
            on_cell(index, len(cells), cell, "running")
        row = run_cell(cell, out)
        append_row(out, row)
        if on_cell:
            on_cell(index, len(cells), row, "done")
    return pd.read_csv(out / RESULTS_CSV) if (out / RESULTS_CSV).exists() else pd.DataFrame()
