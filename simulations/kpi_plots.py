"""Plots of a KPI report: activity over time and the cohort retention heatmap (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``activity.png`` and ``retention.png`` in ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    return [plot_activity(report, out / "activity.png"), plot_retention(report, out / "retention.png")]


def _title_suffix(report: dict[str, Any]) -> str:
    eps = (report.get("privacy") or {}).get("epsilon")
    units = report.get("units")
    who = f"{units} units" if units else "pooled"
    return f"{who}, " + (f"DP epsilon {eps:.2g} per user" if eps else "exact")


def plot_activity(report: dict[str, Any], path: Path) -> Path:
    """DAU, WAU and MAU per day (top) and stickiness DAU/MAU (bottom)."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import pandas as pd

    activity = report["activity"]
    days = pd.to_datetime(activity["days"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[3, 1])
    for name, colour in (("mau", "tab:blue"), ("wau", "tab:orange"), ("dau", "tab:green")):
        top.plot(days, activity[name], label=name.upper(), color=colour, linewidth=1)
    top.set_yscale("symlog", linthresh=100)
    top.set_ylabel("active users")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    top.set_title(f"Activity over time ({_title_suffix(report)})")
    sticky = np.array([np.nan if s is None else s for s in activity["stickiness"]], dtype=float)
    bottom.plot(days, sticky, color="tab:purple", linewidth=1)
    bottom.set_ylabel("DAU / MAU")
    bottom.grid(alpha=0.3)
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m"))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_retention(report: dict[str, Any], path: Path) -> Path:
    """Cohort x period heatmap of the share of each cohort active in period k (percent)."""
    import matplotlib.pyplot as plt

    retention = report["retention"]
    cohorts = [c for c in retention["cohorts"] if c["active_share"] and c["active_share"][0] is not None]
    n = max((len(c["active_share"]) for c in cohorts), default=1)
    grid = np.full((len(cohorts), n), np.nan)
    for i, c in enumerate(cohorts):
        grid[i, :len(c["active_share"])] = [np.nan if s is None else 100 * s for s in c["active_share"]]
    fig, ax = plt.subplots(figsize=(min(2 + 0.55 * n, 22), 1.5 + 0.45 * max(len(cohorts), 1)))
    shown = np.where(np.isnan(grid), np.nan, np.minimum(grid, 30.0))  # period 0 is 100%: keep the scale readable
    image = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=0, vmax=30)
    if n <= 40 and len(cohorts) <= 40:
        for i in range(len(cohorts)):
            for k in range(n):
                if not np.isnan(grid[i, k]):
                    ax.text(k, i, f"{grid[i, k]:.0f}" if grid[i, k] >= 10 else f"{grid[i, k]:.1f}",
                            ha="center", va="center", fontsize=7, color="white" if grid[i, k] < 20 else "black")
    ax.set_yticks(range(len(cohorts)), [f"{c['cohort']} ({c['size']:,.0f})" for c in cohorts])
    ax.set_xticks(range(n))
    ax.set_xlabel(f"{retention['granularity']}s since the first event (k)")
    ax.set_ylabel("cohort (users)")
    ax.set_title(f"Cohort retention: % of the cohort active in period k ({_title_suffix(report)})")
    fig.colorbar(image, ax=ax, label="% active (scale capped at 30)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
