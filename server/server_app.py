"""The Flower ServerApp the coordinator runs (``flwr run .`` loads :data:`app`).

Its configuration comes from ``[tool.flwr.app.config]`` in ``pyproject.toml`` (override with
``flwr run . --run-config "num-server-rounds=5 model='gru'"``); see :class:`TrainingPlan`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.training import TrainingPlan, TrainingResult, log_round, run_training

#: pyproject keys whose names differ from the plan's fields.
_RENAMES = {"num-server-rounds": "num_rounds"}


def plan_from_run_config(run_config: dict[str, Any]) -> TrainingPlan:
    """A validated plan from Flower's run config (kebab-case keys)."""
    values = {_RENAMES.get(k, k.replace("-", "_")): v for k, v in run_config.items()}
    return TrainingPlan.model_validate(values)


def make_server_app(
    plan: TrainingPlan | None = None,
    on_round: Callable[[dict[str, Any]], None] = log_round,
    results: list[TrainingResult] | None = None,
) -> ServerApp:
    """A ServerApp running ``plan`` (or the plan in the run config when None).

    ``results``, if given, receives the :class:`TrainingResult` (simulations read it).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_plan = plan if plan is not None else plan_from_run_config(dict(context.run_config))
        result = run_training(grid, run_plan, on_round=on_round)
        if results is not None:
            results.append(result)

    return app


app = make_server_app()
