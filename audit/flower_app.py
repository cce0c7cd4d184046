"""The federated audit on Flower's simulation engine (ServerApp + ClientApp).

Each simulated unit (SuperNode ``partition-id`` i) reads ONLY its own file ``units[i]`` and
answers with the statistics of :mod:`audit.federated`; the ServerApp combines them with the same
functions as the in-process run. Message types (:mod:`fedseg.protocol`), each reply through the
unit's outgoing guard (:mod:`clients.guard`):

* ``query.privacy`` (DP audits, first): the unit accepts the release with its own account, or
  refuses it (:func:`server.grid.agree_privacy`, the same acceptance as training and segmentation);
* ``query.audit_fairness`` -> ``stats``: :class:`audit.fairness.FairnessStats` as JSON (noised by
  the unit under DP, after charging the release);
* ``query.audit_pricing_tables`` -> ``tables`` (parquet bytes), ``rows``, ``dropped``;
* ``query.audit_pricing_meat`` (with the server's ``fit`` bytes) -> ``meat`` (npz bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from audit.fairness import FairnessReport, FairnessSpec, FairnessStats
from audit.federated import (DPConfig, combine_fairness, release_for, server_pricing_fit, server_pricing_report,
                             unit_fairness, unit_pricing_meat, unit_pricing_tables, unit_rows)
from audit.pricing import PricingReport, PricingSpec
from fedseg import protocol


def make_client_app(units: Sequence[Path], ledger_path: Path | None = None, dataset_id: str | None = None):  # noqa: ANN201
    """The units' ClientApp: unit ``i`` reads only ``units[i]``; under DP it accepts the release
    first (``query.privacy``), then charges it to its own account and adds its own noise."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp

    from audit.stats import read_table
    from clients.guard import outgoing_guard_mod
    from clients.unit_privacy import answer_privacy_plan, events_fingerprint, unit_account

    app = ClientApp()

    def unit_file(context: Context) -> Path:
        return units[int(context.node_config["partition-id"])]

    def account(context: Context):  # noqa: ANN202
        path = unit_file(context)
        return unit_account(context, path.stem, dataset_id or events_fingerprint(read_table(path)), ledger_path)

    def reply(msg: Message, values: dict) -> Message:
        return Message(content=RecordDict({protocol.AUDIT_STATS: ConfigRecord(values)}), reply_to=msg)

    @app.query(protocol.PRIVACY.removeprefix("query."), mods=[outgoing_guard_mod])
    def privacy(msg: Message, context: Context) -> Message:
        metrics, configs = answer_privacy_plan(account(context), msg.content[protocol.PRIVACY_PLAN],
                                               unit_rows(unit_file(context)))
        from flwr.app import MetricRecord

        return Message(RecordDict({protocol.METRICS: MetricRecord(metrics),
                                   **{k: ConfigRecord(v) for k, v in configs.items()}}), reply_to=msg)

    @app.query(protocol.AUDIT_FAIRNESS.removeprefix("query."), mods=[outgoing_guard_mod])
    def fairness(msg: Message, context: Context) -> Message:
        cfg = msg.content[protocol.CONFIG]
        dp = DPConfig.model_validate_json(str(cfg[protocol.AUDIT_DP])) if protocol.AUDIT_DP in cfg else None
        stats = unit_fairness(unit_file(context), FairnessSpec.model_validate_json(str(cfg[protocol.AUDIT_SPEC])), dp,
                              account(context) if dp is not None else None, str(cfg.get(protocol.RUN_ID, "")))
        return reply(msg, {"stats": stats.model_dump_json()})

    @app.query(protocol.AUDIT_PRICING_TABLES.removeprefix("query."), mods=[outgoing_guard_mod])
    def pricing_tables(msg: Message, context: Context) -> Message:
        spec = PricingSpec.model_validate_json(str(msg.content[protocol.CONFIG][protocol.AUDIT_SPEC]))
        tables, rows, dropped = unit_pricing_tables(unit_file(context), spec)
        return reply(msg, {"tables": tables, "rows": rows, "dropped": dropped})

    @app.query(protocol.AUDIT_PRICING_MEAT.removeprefix("query."), mods=[outgoing_guard_mod])
    def pricing_meat(msg: Message, context: Context) -> Message:
        cfg = msg.content[protocol.CONFIG]
        spec = PricingSpec.model_validate_json(str(cfg[protocol.AUDIT_SPEC]))
        return reply(msg, {"meat": unit_pricing_meat(unit_file(context), spec, bytes(cfg[protocol.AUDIT_FIT]))})

    return app


def _ask(grid, nodes: list[int], message_type: str, config: dict) -> list:  # noqa: ANN001
    from flwr.app import ConfigRecord, RecordDict

    from server.grid import ask

    content = RecordDict({protocol.CONFIG: ConfigRecord(config)})
    return [c[protocol.AUDIT_STATS] for c in ask(grid, nodes, message_type, content, timeout=600).values()]


def run_federated_audit(units: Sequence[str | Path], spec: FairnessSpec | PricingSpec, dp: DPConfig | None = None,
                        ledger_path: Path | None = None, dataset_id: str | None = None,
                        verbose: bool = False) -> FairnessReport | PricingReport:
    """Run the federated audit over ``units`` on Flower's simulation engine; return the report.

    Under ``dp`` every unit first accepts the release with its own account (``ledger_path``,
    under ``dataset_id``; default the fingerprint of its file): one refusal stops the audit before
    anything was released (:class:`server.grid.PrivacyPlanRefused`)."""
    import logging
    import os
    import uuid

    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedseg.errors import FedsegError
    from server.grid import agree_privacy, wait_for_units

    units = [Path(u).resolve() for u in units]
    result: list = []
    errors: list[Exception] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            nodes = wait_for_units(grid, len(units), 120)
            if isinstance(spec, FairnessSpec):
                request = {protocol.AUDIT_SPEC: spec.model_dump_json()}
                if dp is not None:
                    from flwr.app import ConfigRecord

                    run_id = "audit-" + uuid.uuid4().hex[:12]
                    agree_privacy(grid, nodes, run_id, "audit", dp.delta, dp.epsilon, [release_for(spec, dp)],
                                  ConfigRecord({}), 600)
                    request.update({protocol.AUDIT_DP: dp.model_dump_json(), protocol.RUN_ID: run_id})
                answers = _ask(grid, nodes, protocol.AUDIT_FAIRNESS, request)
                stats = [FairnessStats.model_validate_json(str(a["stats"])) for a in answers]
                result.append(combine_fairness(stats, spec, dp))
            else:
                request = {protocol.AUDIT_SPEC: spec.model_dump_json()}
                answers = _ask(grid, nodes, protocol.AUDIT_PRICING_TABLES, request)
                fits, blob = server_pricing_fit([bytes(a["tables"]) for a in answers], spec)
                meats = _ask(grid, nodes, protocol.AUDIT_PRICING_MEAT, {**request, protocol.AUDIT_FIT: blob})
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
