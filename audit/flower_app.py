"""The federated audit on Flower's simulation engine (ServerApp + ClientApp, message type ``query``).

Each simulated unit (SuperNode ``partition-id`` i) reads ONLY its own file ``units[i]`` and
answers queries with the statistics of :mod:`audit.federated`; the ServerApp combines them with
the same functions as the in-process run. Steps (``config["step"]``):

* ``privacy``        (DP audits, first) -> ``accepted``, ``reason``: the unit accepts the release or not;
* ``fairness``       -> ``stats``: :class:`audit.fairness.FairnessStats` as JSON (noised by the unit under DP);
* ``pricing_tables`` -> ``tables`` (parquet bytes), ``rows``, ``dropped``;
* ``pricing_meat``   (with the server's ``fit`` bytes) -> ``meat`` (npz bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from audit.fairness import FairnessReport, FairnessSpec, FairnessStats
from audit.federated import (DPConfig, combine_fairness, release_for, server_pricing_fit, server_pricing_report,
                             unit_fairness, unit_pricing_meat, unit_pricing_tables, unit_rows)
from audit.pricing import PricingReport, PricingSpec
from clients.unit_privacy import answer_privacy_plan
from fedseg import protocol


def make_client_app(units: Sequence[Path], ledger_path: Path | None = None, dataset_id: str | None = None):  # noqa: ANN201
    """The units' ClientApp: unit ``i`` reads only ``units[i]``; under DP it accepts the release
    first (``privacy``), then charges it to its own account and adds its own noise (``fairness``)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp

    from clients.unit_privacy import events_fingerprint, unit_account

    app = ClientApp()

    def account(path: Path, context: Context):  # noqa: ANN202
        import pandas as pd

        name = dataset_id or events_fingerprint(pd.read_parquet(path) if path.suffix == ".parquet"
                                                else pd.read_csv(path))
        return unit_account(context, path.stem, name, ledger_path)

    @app.query()
    def answer(msg: Message, context: Context) -> Message:
        path = units[int(context.node_config["partition-id"])]
        cfg = msg.content["config"]
        step = str(cfg["step"])
        if step == "privacy":
            metrics, configs = answer_privacy_plan(account(path, context), msg.content[protocol.PRIVACY_PLAN],
                                                   unit_rows(path))
            out = ConfigRecord({"accepted": int(metrics["accepted"]),
                                "reason": configs.get(protocol.REFUSAL, {}).get("reason", "")})
        elif step == "fairness":
            dp = DPConfig.model_validate_json(str(cfg["dp"])) if "dp" in cfg else None
            stats = unit_fairness(path, FairnessSpec.model_validate_json(str(cfg["spec"])), dp,
                                  account(path, context) if dp is not None else None, str(cfg.get("run-id", "")))
            out = ConfigRecord({"stats": stats.model_dump_json()})
        elif step == "pricing_tables":
            tables, rows, dropped = unit_pricing_tables(path, PricingSpec.model_validate_json(str(cfg["spec"])))
            out = ConfigRecord({"tables": tables, "rows": rows, "dropped": dropped})
        elif step == "pricing_meat":
            meat = unit_pricing_meat(path, PricingSpec.model_validate_json(str(cfg["spec"])), bytes(cfg["fit"]))
            out = ConfigRecord({"meat": meat})
        else:
            raise ValueError(f"unknown audit step {step!r}")
        return Message(content=RecordDict({"stats": out}), reply_to=msg)

    return app


def _ask(grid, nodes: list[int], config: dict, extra: dict | None = None) -> list:  # noqa: ANN001
    from flwr.app import ConfigRecord, RecordDict

    from server.grid import ask

    content = RecordDict({"config": ConfigRecord(config), **(extra or {})})
    return [c["stats"] for c in ask(grid, nodes, "query", content, timeout=600).values()]


def run_federated_audit(units: Sequence[str | Path], spec: FairnessSpec | PricingSpec, dp: DPConfig | None = None,
                        ledger_path: Path | None = None, dataset_id: str | None = None,
                        verbose: bool = False) -> FairnessReport | PricingReport:
    """Run the federated audit over ``units`` on Flower's simulation engine; return the report.

    Under ``dp`` every unit first accepts the release with its own account (``ledger_path``,
    under ``dataset_id``; default the fingerprint of its file): one refusal stops the audit before
    anything was released (:class:`server.grid.PrivacyPlanRefused`)."""
    import json
    import logging
    import os
    import uuid

    from flwr.app import ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedseg.errors import FedsegError
    from server.grid import PrivacyPlanRefused, wait_for_units

    units = [Path(u).resolve() for u in units]
    result: list = []
    errors: list[Exception] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            nodes = wait_for_units(grid, len(units), 120)
            if isinstance(spec, FairnessSpec):
                request = {"step": "fairness", "spec": spec.model_dump_json()}
                if dp is not None:
                    run_id = "audit-" + uuid.uuid4().hex[:12]
                    release = release_for(spec, dp)
                    plan = ConfigRecord({protocol.PLAN_RUN_ID: run_id, protocol.PLAN_TASK: "audit",
                                         protocol.PLAN_DELTA: dp.delta, protocol.PLAN_EPSILON: dp.epsilon,
                                         protocol.PLAN_RELEASES: json.dumps([release.model_dump()])})
                    for answer in _ask(grid, nodes, {"step": "privacy"}, {protocol.PRIVACY_PLAN: plan}):
                        if int(answer["accepted"]) != 1:
                            raise PrivacyPlanRefused(str(answer["reason"]))
                    request.update({"dp": dp.model_dump_json(), "run-id": run_id})
                answers = _ask(grid, nodes, request)
                stats = [FairnessStats.model_validate_json(str(a["stats"])) for a in answers]
                result.append(combine_fairness(stats, spec, dp))
            else:
                answers = _ask(grid, nodes, {"step": "pricing_tables", "spec": spec.model_dump_json()})
                fits, blob = server_pricing_fit([bytes(a["tables"]) for a in answers], spec)
                meats = _ask(grid, nodes, {"step": "pricing_meat", "spec": spec.model_dump_json(), "fit": blob})
                result.append(server_pricing_report(
                    fits, [bytes(m["meat"]) for m in meats], spec, n_rows=sum(int(a["rows"]) for a in answers),
                    n_dropped=sum(int(a["dropped"]) for a in answers), units=len(units)))
        except Exception as exc:  # reported to the caller below
            errors.append(exc)

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=server, client_app=make_client_app(units, ledger_path, dataset_id),
                   num_supernodes=len(units),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"logging_level": logging.ERROR, "log_to_driver": verbose}},
                   verbose_logging=verbose)
    if errors:
        if isinstance(errors[0], FedsegError):
            raise errors[0]
        raise ValueError(f"federated audit failed: {type(errors[0]).__name__}: {errors[0]}")
    if not result:
        raise ValueError("the federated audit did not finish; run with verbose=True to see Flower's logs")
    return result[0]
