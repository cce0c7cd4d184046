"""The Flower ServerApp the coordinator runs (``flwr run .`` loads :data:`app`).

Its configuration comes from ``[tool.flwr.app.config]`` in ``pyproject.toml`` (override with
``flwr run . --run-config "num-server-rounds=5 model='gru'"``). ``task`` selects the job:
``train`` (default, :class:`fedseg.config.TrainingPlan`), ``segment``
(:class:`fedseg.config.SegmentationPlan`, keys prefixed ``segment-``, writing
``<output-dir>/segments.json``), ``kpis`` (:class:`fedseg.config.KpiPlan`, ``kpi-``, ``kpis.json``) or
``tags`` (:class:`fedseg.config.TagPlan`, ``tags-``, ``tags.json``) or ``effects``
(:class:`fedseg.config.EffectsPlan`, ``effects-``, ``effects.json``; each unit names its action
list in its ``unit.toml``, ``actions-path``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedseg.config import TASK_PREFIXES, TrainingPlan, plan_from_run_config
from server.training import log_round, run_training

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
        from server.grid import ResponsiveGrid

        grid = ResponsiveGrid(grid)
        run_config = dict(context.run_config)
        task = run_config.get("task", "train")
        if plan is None and task in TASK_PREFIXES:  # the report tasks, each with its prefixed plan
            _report(grid, run_config, str(task))
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


def _report(grid: Grid, run_config: dict[str, Any], task: str) -> None:
    """A segmentation, KPI, tag or effects report from the run config, written to
    ``<output-dir>/<name>.json``; a :class:`FedsegError` is one line in the run's log."""
    from logging import ERROR
    from pathlib import Path

    from flwr.common.logger import log

    from fedseg import config
    from fedseg.errors import FedsegError
    from fedseg.io import write_json

    try:
        if task == "segment":
            from server.segmentation import run_segmentation

            report, name = run_segmentation(grid, config.segmentation_plan_from_run_config(run_config)), "segments"
        elif task == "effects":
            from fedseg.playbook import load_playbook
            from server.effects import run_effects

            plan = config.effects_plan_from_run_config(run_config)
            book = load_playbook(plan.playbook or None)
            report = run_effects(grid, plan, book.costs, book.channels, book.holdout_share)
            name = "effects"
        elif task == "kpis":
            from server.kpis import run_kpis

            report, name = run_kpis(grid, config.kpi_plan_from_run_config(run_config)), "kpis"
        else:
            from server.tags import run_tags

            report, name = run_tags(grid, config.tag_plan_from_run_config(run_config)), "tags"
    except (FedsegError, ValueError) as exc:
        log(ERROR, "error: %s", exc)
        return
    write_json(report, Path(str(run_config.get("output-dir", "runs/flwr"))) / f"{name}.json")


app = make_server_app()
