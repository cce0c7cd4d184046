"""The research harness: a real (tiny) sweep through Flower, resumed, tabled and plotted."""

from __future__ import annotations

import pandas as pd
import pytest

from simulations.sweep import SweepError, expand, load_spec, run_sweep
from simulations.plots import make_plots

SWEEP = """
[sweep]
name = "tiny"
out = "{out}"

[fixed]
dataset = "synthetic"
synthetic_users = 1500
units = 2
rounds = 2
baselines = false

[grid]
privacy = ["none", "user"]
epsilon = [4.0]
seed = [0]
"""


def test_tiny_sweep_runs_resumes_and_plots(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(SWEEP.format(out=tmp_path / "out"))
    spec = load_spec(config)
    cells = expand(spec)
    assert len(cells) == 2                                    # epsilon is dropped for privacy=none
    seen = []
    table = run_sweep(spec, on_cell=lambda i, n, cell, status: seen.append(status))
    assert len(table) == 2 and table["auc"].notna().all()
    assert set(table["privacy"]) == {"none", "user"}
    user_row = table[table["privacy"] == "user"].iloc[0]
    assert 0 < user_row["epsilon_spent"] <= 4.0 + 1e-9
    assert (tmp_path / "out" / "results.parquet").exists()
    # a second run skips both finished cells
    seen.clear()
    again = run_sweep(spec, on_cell=lambda i, n, cell, status: seen.append(status))
    assert len(again) == 2 and all(s.startswith("skipped") for s in seen)
    plots = make_plots(pd.read_csv(tmp_path / "out" / "results.csv"), tmp_path / "plots")
    names = {p.name for p in plots}
    assert {"convergence.png", "privacy_utility.png"} <= names
    assert all(p.stat().st_size > 5000 for p in plots)


def test_bad_sweep_files_are_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nwarp_speed = [1]\n")
    with pytest.raises(SweepError, match="unknown setting\\(s\\) warp_speed"):
        load_spec(bad)
    bad.write_text("[grid]\nseed = []\n")
    with pytest.raises(SweepError, match="non-empty list"):
        load_spec(bad)
    with pytest.raises(SweepError, match="no such sweep file"):
        load_spec(tmp_path / "nope.toml")
