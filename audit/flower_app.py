"""The federated audit on Flower's simulation engine (ServerApp + ClientApp, message type ``query``).

Each simulated unit (SuperNode ``partition-id`` i) reads ONLY its own file ``units[i]`` and
answers queries with the statistics of :mod:`audit.federated`; the ServerApp combines them with
the same functions as the in-process run. Steps (``config["step"]``):

* ``fairness``       -> ``stats``: :class:`audit.fairness.FairnessStats` as JSON;
* ``pricing_tables`` -> ``tables`` (parquet bytes), ``rows``, ``dropped``;
* ``pricing_meat``   (with the server's ``fit`` bytes) -> ``meat`` (npz bytes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from audit.fairness import FairnessReport, FairnessSpec, FairnessStats
from audit.federated import (DPConfig, OnSpend, combine_fairness, server_pricing_fit, server_pricing_report,
                             unit_fairness, unit_pricing_meat, unit_pricing_tables)
from audit.pricing import PricingReport, PricingSpec


def make_client_app(units: Sequence[Path]):  # noqa: ANN201
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def answer(msg: Message, context: Context) -> Message:
        path = units[int(context.node_config["partition-id"])]
        cfg = msg.content["config"]
        step = str(cfg["step"])
        if step == "fairness":
            stats = unit_fairness(path, FairnessSpec.model_validate_json(str(cfg["spec"])))
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


def _ask(grid, nodes: list[int], config: dict) -> list:  # noqa: ANN001
    from flwr.app import ConfigRecord, Message, RecordDict

    msgs = [Message(content=RecordDict({"config": ConfigRecord(config)}), message_type="query", dst_node_id=n)
            for n in nodes]
    answers = []
    for reply in grid.send_and_receive(msgs, timeout=600):
        if reply.has_error():
            raise RuntimeError(f"unit {reply.metadata.src_node_id} failed {config['step']}: {reply.error.reason}")
        answers.append(reply.content["stats"])
    if len(answers) != len(nodes):
        raise RuntimeError(f"{config['step']}: {len(answers)} of {len(nodes)} units answered")
    return answers


def run_federated_audit(units: Sequence[str | Path], spec: FairnessSpec | PricingSpec, dp: DPConfig | None = None,
                        on_spend: OnSpend | None = None, verbose: bool = False) -> FairnessReport | PricingReport:
    """Run the federated audit over ``units`` on Flower's simulation engine; return the report."""
    import logging
    import os

    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    units = [Path(u).resolve() for u in units]
    result: list = []
    errors: list[str] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            deadline = time.monotonic() + 120
            while len(nodes := sorted(grid.get_node_ids())) < len(units):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(nodes)} of {len(units)} units connected")
                time.sleep(0.2)
            if isinstance(spec, FairnessSpec):
                answers = _ask(grid, nodes, {"step": "fairness", "spec": spec.model_dump_json()})
                stats = [FairnessStats.model_validate_json(str(a["stats"])) for a in answers]
                result.append(combine_fairness(stats, spec, dp, on_spend))
            else:
                answers = _ask(grid, nodes, {"step": "pricing_tables", "spec": spec.model_dump_json()})
                fits, blob = server_pricing_fit([bytes(a["tables"]) for a in answers], spec)
                meats = _ask(grid, nodes, {"step": "pricing_meat", "spec": spec.model_dump_json(), "fit": blob})
                result.append(server_pricing_report(
                    fits, [bytes(m["meat"]) for m in meats], spec, n_rows=sum(int(a["rows"]) for a in answers),
                    n_dropped=sum(int(a["dropped"]) for a in answers), units=len(units)))
        except Exception as exc:  # reported to the caller below
            errors.append(f"{type(exc).__name__}: {exc}")

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=server, client_app=make_client_app(units), num_supernodes=len(units),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"logging_level": logging.ERROR, "log_to_driver": verbose}},
                   verbose_logging=verbose)
    if errors:
        raise ValueError(f"federated audit failed: {errors[0]}")
    if not result:
        raise ValueError("the federated audit did not finish; run with verbose=True to see Flower's logs")
    return result[0]
