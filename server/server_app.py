"""The Flower ServerApp the coordinator runs (``flwr run .`` loads :data:`app`).

Its configuration comes from ``[tool.flwr.app.config]`` in ``pyproject.toml`` (override with
``flwr run . --run-config "num-server-rounds=5 model='gru'"``). ``task`` selects the job:
``train`` (default, :class:`server.training.TrainingPlan`) or ``segment``
(:class:`server.segmentation.SegmentationPlan`, keys prefixed ``segment-``, writing
``<output-dir>/segments.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.training import TrainingPlan, log_round, run_training

#: pyproject keys whose names differ from the plan's fields.
_RENAMES = {"num-server-rounds": "num_rounds"}
#: run-config keys that are not training-plan fields.
_NOT_PLAN = ("task", "segment-")
#: optional fields that pyproject spells as 0 or "" when unset (TOML has no null).
_UNSET_WHEN_EMPTY = ("target_epsilon", "noise_multiplier", "delta")
_SEGMENT_UNSET_WHEN_EMPTY = ("epsilon", "delta", "k", "iterations", "previous_cutoff")


def _unset_empty(values: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``values`` with the ``keys`` that hold 0 or "" set to None (the field's "not set")."""
    return {k: (None if k in keys and v in (0, "") else v) for k, v in values.items()}


def plan_from_run_config(run_config: dict[str, Any]) -> TrainingPlan:
    """A validated training plan from Flower's run config (kebab-case keys)."""
    values = {_RENAMES.get(k, k.replace("-", "_")): v for k, v in run_config.items()
              if not k.startswith(_NOT_PLAN)}
    return TrainingPlan.model_validate(_unset_empty(values, _UNSET_WHEN_EMPTY))


def segmentation_plan_from_run_config(run_config: dict[str, Any]):  # noqa: ANN201
    """A segmentation plan from ``cutoff``, ``horizon-days``, ``seed`` and ``segment-*`` keys."""
    from server.segmentation import SegmentationPlan

    values = {k.removeprefix("segment-").replace("-", "_"): v for k, v in run_config.items()
              if k.startswith("segment-")}
    for key in ("cutoff", "horizon-days", "seed", "dataset", "population"):
        if key in run_config:
            values.setdefault(key.replace("-", "_"), run_config[key])
    # epsilon 0: no noise; k and iterations 0: the default; previous-cutoff "": none
    return SegmentationPlan.model_validate(_unset_empty(values, _SEGMENT_UNSET_WHEN_EMPTY))


def make_server_app(
    plan: TrainingPlan | None = None,
    on_round: Callable[[dict[str, Any]], None] = log_round,
    results: list[Any] | None = None,
) -> ServerApp:
    """A ServerApp running ``plan`` (or the plan in the run config when None).

    ``results``, if given, receives the :class:`TrainingResult`, or the :class:`FedsegError` that
    stopped the run (simulations read it and report it as one line).
    """
    from fedseg.errors import FedsegError

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = dict(context.run_config)
        if plan is None and run_config.get("task", "train") == "segment":
            _segment(grid, run_config)
            return
        run_plan = plan if plan is not None else plan_from_run_config(run_config)
        try:
            result = run_training(grid, run_plan, on_round=on_round)
        except FedsegError as exc:
            if results is None:  # deployment: one line in the run's log, no traceback
                from logging import ERROR

                from flwr.common.logger import log

                log(ERROR, "error: %s", exc)
                return
            results.append(exc)
            return
        if results is not None:
            results.append(result)

    return app


def _segment(grid: Grid, run_config: dict[str, Any]) -> None:
    import json
    from pathlib import Path

    from server.segmentation import run_segmentation

    report = run_segmentation(grid, segmentation_plan_from_run_config(run_config))
    out = Path(str(run_config.get("output-dir", "runs/flwr")))
    out.mkdir(parents=True, exist_ok=True)
    (out / "segments.json").write_text(json.dumps(report, indent=2, default=str))


app = make_server_app()
