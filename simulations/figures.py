"""The pictures written beside each command's JSON (matplotlib, PNG, no display needed).

Every chart is drawn from what the coordinator holds (merged aggregates, the report), never from
a unit's rows, so the same functions serve a deployment:

- :func:`model_charts` (``fedseg simulate``, ``fedseg clv``): ``calibration.png`` (predicted against
  observed, by tenth of users ranked by the prediction) and ``gain.png`` (cumulative share of the
  churners, or of the window's revenue, reached by contacting the top-ranked users first), from
  the merged histograms of the last federated evaluation;
- :func:`segment_charts` (``fedseg segment``): ``segments.png`` (users and churn rate per
  activity segment) and ``transitions.png`` (the lifecycle transition matrix as row shares);
- :func:`uplift_chart` (``fedseg effects``): ``uplift.png``, the uplift of each segment x action
  with its 95% interval (and the planted truth on synthetic data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot with a file-only backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from fedseg.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def bin_groups(counts: np.ndarray, groups: int = 10) -> np.ndarray:
    """Group index (0 = lowest values) of every bin, so that each group holds about ``1/groups``
    of the users (bins in ascending order of the value; a bin is never split)."""
    counts = np.maximum(np.asarray(counts, dtype=float), 0.0)
    total = counts.sum()
    if total <= 0:
        return np.zeros(len(counts), dtype=int)
    middle = np.cumsum(counts) - counts / 2
    return np.minimum((middle / total * groups).astype(int), groups - 1)


def _grouped(values: np.ndarray, groups: np.ndarray, n: int = 10) -> np.ndarray:
    return np.bincount(groups, weights=values, minlength=n)


def _gain_curve(counts: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative share of users and of ``gains`` through the bins, highest value first."""
    c = np.maximum(np.asarray(counts, dtype=float)[::-1], 0.0)
    g = np.maximum(np.asarray(gains, dtype=float)[::-1], 0.0)
    x = np.concatenate([[0.0], np.cumsum(c) / max(c.sum(), 1e-12)])
    y = np.concatenate([[0.0], np.cumsum(g) / max(g.sum(), 1e-12)])
    return x, y


def _value_centres(edges: np.ndarray) -> np.ndarray:
    upper = np.append(edges[1:], edges[-1])
    return np.where(edges > 0, np.sqrt(edges * np.maximum(upper, edges)), upper / 2)


def model_charts(target: str, evaluation: dict[str, Any], out: Path, clip: float | None = None,
                 noisy: bool = False) -> list[Path]:
    """``calibration.png`` and ``gain.png`` of a churn or CLV run from its merged evaluation
    (``clip``: a CLV evaluation under DP sent money in units of it; ``noisy``: a DP release)."""
    plt = _pyplot()
    if target == "clv":
        from fedseg.value_metrics import VALUE_EDGES, dp_edges

        counts = np.asarray(evaluation["pred-count"], dtype=float)
        spend = np.asarray(evaluation["pred-spend"], dtype=float) * (clip or 1.0)
        centres = _value_centres(dp_edges(clip) if clip else VALUE_EDGES)
        observed, gains = spend, spend
        what, unit = "customer value over the horizon", "currency units"
        gain_label = "share of the window's revenue"
    else:
        pos = np.asarray(evaluation["hist-pos"], dtype=float)
        neg = np.asarray(evaluation["hist-neg"], dtype=float)
        counts, observed, gains = pos + neg, pos, pos
        centres = (np.arange(len(counts)) + 0.5) / len(counts)
        what, unit = "churn probability", "probability"
        gain_label = "share of the churners reached"
    noise = " (noisy DP release)" if noisy else ""
    groups = bin_groups(counts)
    users = np.maximum(_grouped(counts, groups), 1e-12)
    predicted = _grouped(np.maximum(counts, 0) * centres, groups) / users
    actual = _grouped(observed, groups) / users
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    top = max(predicted.max(), actual.max()) * 1.05
    bottom = max(min(predicted.min(), actual.min()) * 0.9, 1e-3) if target == "clv" else 0.0
    ax.plot([bottom, top], [bottom, top], color="0.6", lw=1, ls="--", label="perfect calibration")
    ax.plot(predicted, actual, "o-", color="C0", label="tenths of users by prediction")
    if target == "clv" and predicted.min() > 0 and actual.min() > 0:  # spend is skewed: tenths on log axes
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(f"mean predicted {what} ({unit})")
    ax.set_ylabel(f"mean observed ({unit})")
    ax.set_title(f"Calibration: {what}{noise}", fontsize=10)
    ax.legend(fontsize=8)
    paths = [_save(fig, out / "calibration.png")]

    x, y = _gain_curve(counts, gains)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="random order")
    ax.plot(x, y, color="C1", label="ranked by the model")
    at = np.interp(0.1, x, y)
    ax.annotate(f"top 10%: {at:.0%} (lift {at / 0.1:.1f}x)", (0.1, at), xytext=(0.3, max(at - 0.25, 0.05)),
                arrowprops={"arrowstyle": "->", "color": "0.3"}, fontsize=9)
    ax.set_xlabel("share of users contacted, highest prediction first")
    ax.set_ylabel(gain_label)
    ax.set_title(f"Gain chart: {what}{noise}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    paths.append(_save(fig, out / "gain.png"))
    return paths


def segment_charts(report: dict[str, Any], out: Path) -> list[Path]:
    """``segments.png`` (users and churn rate per segment) and, with a transition matrix,
    ``transitions.png`` (row shares: where the users of each stage went)."""
    plt = _pyplot()
    segments = sorted(report["segments"], key=lambda s: -s["size"])
    names = [s["name"] for s in segments]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.bar(names, [s["size"] for s in segments], color="C0")
    ax.set_ylabel("users", color="C0")
    ax.set_title(f"Activity segments: size and churn rate ({report['units']} units)", fontsize=10)
    rates = ax.twinx()
    rates.plot(names, [100 * (s["churn_rate"] or 0.0) for s in segments], "o-", color="C3")
    rates.set_ylabel("churn rate in the label window (%)", color="C3")
    rates.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=20)
    paths = [_save(fig, out / "segments.png")]
    matrix = report.get("transition_matrix")
    if matrix:
        counts = np.maximum(np.asarray(matrix["counts"], dtype=float), 0.0)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
        fig, ax = plt.subplots(figsize=(5.6, 4.6))
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        states = matrix["states"]
        ax.set_xticks(range(len(states)), states, rotation=30)
        ax.set_yticks(range(len(states)), states)
        for i in range(len(states)):
            for j in range(len(states)):
                ax.text(j, i, f"{shares[i, j]:.0%}\n{counts[i, j]:,.0f}", ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.6 else "black")
        ax.set_xlabel(f"stage at {matrix['to_cutoff']}")
        ax.set_ylabel(f"stage at {matrix['from_cutoff']}")
        ax.set_title("Lifecycle transitions (row shares, users)", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046)
        paths.append(_save(fig, out / "transitions.png"))
    return paths


def uplift_chart(effects: list[dict[str, Any]], out: Path, outcome: str = "conversion") -> Path:
    """``uplift.png``: the primary outcome's uplift per segment x action with its 95% interval,
    and the planted uplift where the data has one."""
    plt = _pyplot()
    rows = [e for e in effects if e.get("uplift") is not None]
    labels = [f"{e['segment']} | {e['action']}" for e in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(rows) + 1.4))
    uplift = np.array([e["uplift"] for e in rows])
    low = uplift - np.array([e["ci_low"] for e in rows])
    high = np.array([e["ci_high"] for e in rows]) - uplift
    ax.errorbar(uplift, y, xerr=[low, high], fmt="o", color="C0", capsize=3, label="estimate, 95% interval")
    planted = [e.get("planted_uplift") for e in rows]
    if any(p is not None for p in planted):
        ax.plot([p if p is not None else np.nan for p in planted], y, "x", color="C3", ms=8, label="planted uplift")
    ax.axvline(0, color="0.5", lw=1)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"uplift in {outcome} (treated minus holdout)")
    ax.set_title("Effect of each action by segment", fontsize=10, pad=24)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)  # clear of the data
    return _save(fig, out / "uplift.png")
