"""Federated segmentation on Flower's simulation engine, CDNOW split over units."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from fedseg.config import SegmentationPlan
from tests.support.flower import RecordingGrid, write_units

CUTOFF = dt.date(1997, 9, 30)


def run_segmentation_on(files: list[Path], plan: SegmentationPlan, output_dir: Path):
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from server.segmentation import run_segmentation
    from simulations.runner import quiet_flower

    reports, grids = [], []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        recording = RecordingGrid(grid)
        grids.append(recording)
        reports.append(run_segmentation(recording, plan))

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=server, client_app=make_client_app(files, output_dir=output_dir),
                   num_supernodes=len(files), backend_config=quiet_flower(False))
    return reports[0], grids[0]


@pytest.fixture(scope="module")
def cdnow_segmentation(tmp_path_factory):
    from fedseg.datasets import load_cdnow

    base = tmp_path_factory.mktemp("seg")
    files = write_units(load_cdnow(), 5, base / "in")
    plan = SegmentationPlan(cutoff=CUTOFF, horizon_days=273, previous_cutoff=dt.date(1997, 6, 30), k=4,
                            min_units=5)
    report, grid = run_segmentation_on(files, plan, base / "out")
    return report, grid, base / "out"


def test_cdnow_churn_rate_is_highest_in_silent_and_at_risk(cdnow_segmentation):
    report, _, _ = cdnow_segmentation
    by_churn = sorted(report["segments"], key=lambda s: -s["churn_rate"])
    top_two = {s["name"].split("-2")[0] for s in by_churn[:2]}
    assert top_two == {"silent", "at-risk"}, [(s["name"], s["churn_rate"]) for s in by_churn]
    assert sum(s["size"] for s in report["segments"]) == 23570
    silent = next(s for s in report["segments"] if s["name"] == "silent")
    assert silent["churn_rate"] > 0.8


def test_units_keep_per_user_files_and_send_only_aggregates(cdnow_segmentation):
    report, grid, out = cdnow_segmentation
    files = sorted(out.glob("segments_unit_*.parquet"))
    assert len(files) == 5
    users = pd.concat([pd.read_parquet(f) for f in files])
    assert len(users) == 23570 and users["user_id"].is_unique
    assert set(users.columns) >= {"segment", "segment_name", "rfm_segment", "value_tier", "lifecycle_stage", "warning"}
    assert len(sorted(out.glob("actions_unit_*.parquet"))) == 5
    for reply in grid.replies:
        assert not reply.has_error()
        for value in reply.content["metrics"].values():
            assert not isinstance(value, list) or len(value) <= 1024   # grids and histograms only
    # the transition matrix holds every user once
    matrix = report["transition_matrix"]["counts"]
    assert sum(map(sum, matrix)) == 23570
    json.dumps(report)  # serialisable as segments.json
