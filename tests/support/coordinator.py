"""Shared by several test folders: run a coordinator function as the real ServerApp against the real ClientApp on
Flower's simulation engine, with every reply recorded."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tests.support.flower import RecordingGrid

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def run_coordinator(job: Callable[[Any], Any], files: list[Path], **client_kwargs: Any) -> tuple[Any, RecordingGrid]:
    """``job(grid)`` as the ServerApp's main, units reading ``files``; a FedsegError is returned."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from fedseg.errors import FedsegError
    from simulations.runner import quiet_flower

    results: list[Any] = []
    grids: list[RecordingGrid] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        recording = RecordingGrid(grid)
        grids.append(recording)
        try:
            results.append(job(recording))
        except FedsegError as exc:
            results.append(exc)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=server, client_app=make_client_app(files, **client_kwargs), num_supernodes=len(files),
                   backend_config=quiet_flower(False))
    return results[0], grids[0]


def random_events(n_users: int = 300, n_events: int = 4000, seed: int = 0, days: int = 200,
                  start: str = "2024-01-01") -> pd.DataFrame:
    """A small events log with several event types, prices and late users (real contract frame)."""
    from fedseg.contract import to_canonical_events

    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n_events)
    offset = rng.integers(0, days * 86400, n_events) + (user % 7) * 86400 * 9  # users start at different times
    ts = pd.Timestamp(start) + pd.to_timedelta(offset, unit="s")
    kinds = np.array(["purchase", "visit", "login", "refund"], dtype=object)
    event_type = kinds[rng.choice(4, n_events, p=[0.35, 0.35, 0.27, 0.03])]
    amount = np.where(event_type == "purchase", np.round(rng.lognormal(3, 1, n_events), 2),
                      np.where(event_type == "refund", 5.0, 0.0))
    item = rng.integers(0, 20, n_events)
    price = np.where(event_type == "purchase", np.round(10 + item * 2 * rng.uniform(0.7, 1.1, n_events), 2), np.nan)
    return to_canonical_events(pd.DataFrame({
        "user_id": np.char.add("u", user.astype(str)).astype(object), "ts": ts, "event_type": event_type,
        "amount": amount, "item_id": np.char.add("i", item.astype(str)).astype(object), "price": price,
        "event_id": [f"e{i}" for i in range(n_events)]}))
