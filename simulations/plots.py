"""Plots of a sweep's results table (PNG, matplotlib's Agg backend).

Each function draws one figure if the table holds the cells it needs and returns its path,
or None (saying nothing is drawn is better than an empty figure).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _train(table: pd.DataFrame) -> pd.DataFrame:
    if "task" in table:
        table = table[table["task"].fillna("train") == "train"]
    return table[table["auc"].notna()] if "auc" in table else table.iloc[0:0]


def privacy_utility(table: pd.DataFrame, out: Path) -> Path | None:
    """AUC against epsilon per privacy mode (mean, min-max over seeds); no-DP as a line."""
    t = _train(table)
    if "privacy" not in t or "epsilon" not in t or t["epsilon"].notna().sum() == 0:
        return None
    # the exact AUC of the final model on the pooled test users (simulation only) when present;
    # the federated figure under DP carries the evaluation noise on top
    metric = "auc_exact" if "auc_exact" in t and t["auc_exact"].notna().all() else "auc"
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, group in t[t["epsilon"].notna()].groupby("privacy"):
        stats = group.groupby("epsilon")[metric].agg(["mean", "min", "max"]).sort_index()
        ax.errorbar(stats.index, stats["mean"], yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                    marker="o", capsize=3, label=f"{mode}-level DP")
    # the no-DP reference: cells on the same data and set-up as the DP cells (not, say, the
    # synthetic skew study in the same table), with and without secure aggregation
    keys = [c for c in ("dataset", "units", "model", "rounds", "partition", "alpha", "strategy") if c in t]
    dp_setups = set(t.loc[t["epsilon"].notna(), keys].astype(str).itertuples(index=False, name=None))
    same = t[keys].astype(str).apply(tuple, axis=1).isin(dp_setups)
    plain = t[same & (t["privacy"].fillna("none") == "none")]
    secagg = plain["secagg"].fillna(False).astype(bool) if "secagg" in plain else pd.Series(False, index=plain.index)
    for rows, label, style in ((plain[~secagg], "no DP", "--"), (plain[secagg], "no DP, SecAgg+", ":")):
        if len(rows):
            value = rows[metric].mean()
            ax.axhline(value, color="grey", linestyle=style, label=f"{label} ({value:.3f})")
    ax.set_xscale("log")
    epsilons = sorted(t.loc[t["epsilon"].notna(), "epsilon"].unique())
    ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
    ax.minorticks_off()
    ax.set_xlabel("epsilon per end user (delta <= 1/(10 n)); mean and range over runs")
    ax.set_ylabel("test AUC (exact, pooled test users)" if metric == "auc_exact" else "test AUC")
    ax.set_title("privacy-utility trade-off")
    ax.legend()
    return _save(fig, out / "privacy_utility.png")


def convergence(table: pd.DataFrame, out: Path, max_lines: int = 12) -> Path | None:
    """AUC per round, one line per cell."""
    t = _train(table)
    if "rounds_json" not in t or t.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, row in t.head(max_lines).iterrows():
        rounds = [r for r in json.loads(row["rounds_json"]) if r.get("auc") is not None]
        if len(rounds) < 2:
            continue  # user-level DP runs evaluate after the last round only
        label = ", ".join(f"{k}={row[k]}" for k in ("privacy", "epsilon", "alpha", "strategy", "seed")
                          if k in row and pd.notna(row[k]))
        ax.plot([r["round"] for r in rounds], [r["auc"] for r in rounds], marker=".", label=label or row["cell_id"])
    ax.set_xlabel("round")
    ax.set_ylabel("test AUC (federated evaluation)")
    ax.set_title("convergence")
    ax.legend(fontsize=6)
    return _save(fig, out / "convergence.png")


def skew(table: pd.DataFrame, out: Path) -> Path | None:
    """Federated and centralised AUC against the Dirichlet alpha of the partition."""
    t = _train(table)
    if "alpha" not in t or t["alpha"].notna().sum() == 0:
        return None
    t = t[t["alpha"].notna()]
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, group in t.groupby(t["strategy"].fillna("fedavg") if "strategy" in t else np.zeros(len(t))):
        stats = group.groupby("alpha")["auc"].mean().sort_index()
        ax.plot(stats.index, stats.values, marker="o", label=f"federated ({strategy})")
    if "centralized_auc" in t:
        central = t.groupby("alpha")["centralized_auc"].mean().sort_index()
        ax.plot(central.index, central.values, color="grey", linestyle="--", label="centralised")
    ax.set_xscale("log")
    ax.set_xlabel("Dirichlet alpha (small = skewed units)")
    ax.set_ylabel("test AUC")
    ax.set_title("effect of unit skew")
    ax.legend()
    return _save(fig, out / "skew.png")


def segment_agreement(table: pd.DataFrame, out: Path) -> Path | None:
    """Adjusted Rand index with centralised k-means against the segmentation epsilon."""
    if "ari" not in table or table["ari"].notna().sum() == 0:
        return None
    t = table[table["ari"].notna()].copy()
    t["eps"] = t["seg_epsilon"].fillna(np.inf) if "seg_epsilon" in t else np.inf
    stats = t.groupby("eps")["ari"].agg(["mean", "min", "max"]).sort_index()
    finite = stats[np.isfinite(stats.index)]
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(finite):
        ax.errorbar(finite.index, finite["mean"], yerr=[finite["mean"] - finite["min"], finite["max"] - finite["mean"]],
                    marker="o", capsize=3, label="DP federated k-means")
        ax.set_xscale("log")
    if np.inf in stats.index:
        ax.axhline(stats.loc[np.inf, "mean"], color="grey", linestyle="--", label="no noise")
    ax.set_xlabel("segmentation epsilon per end user")
    ax.set_ylabel("ARI vs centralised k-means")
    ax.set_title("segment agreement")
    ax.legend()
    return _save(fig, out / "segment_agreement.png")


def make_plots(table: pd.DataFrame, out: Path) -> list[Path]:
    """Every plot the table supports."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [f(table, out) for f in (privacy_utility, convergence, skew, segment_agreement)]
    return [p for p in paths if p is not None]
