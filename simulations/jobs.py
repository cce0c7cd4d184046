"""One coordinator job (segmentation, KPIs, tags) on Flower's simulation engine: the real ClientApp
on one virtual SuperNode per unit file, the job as the ServerApp's main."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedseg.errors import FedsegError
from simulations.runner import quiet_flower


def run_coordinator_job(job: Callable[[Any], dict[str, Any]], files: list[Path], out: Path, what: str,
                        ledger: Path | None = None, dataset_id: str | None = None, verbose: bool = False,
                        unit_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``job(grid)`` as the ServerApp's main against units reading ``files`` (they write their
    per-user files into ``out/units``; ``unit_options``: further :func:`clients.client_app.make_client_app`
    arguments, such as scores or a playbook); a :class:`FedsegError` the job raises is raised here, so the
    command line prints one line."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app

    reports: list[Any] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            reports.append(job(grid))
        except FedsegError as exc:
            reports.append(exc)

    client = make_client_app(files, output_dir=out / "units", ledger_path=ledger, dataset_id=dataset_id,
                             **(unit_options or {}))
    run_simulation(server_app=server, client_app=client, num_supernodes=len(files),
                   backend_config=quiet_flower(verbose), verbose_logging=verbose)
    if not reports:
        raise RuntimeError(f"the federated {what} did not finish; run with --verbose to see why")
    if isinstance(reports[0], Exception):
        raise reports[0]
    return reports[0]
