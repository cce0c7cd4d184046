"""The unit's side of federated segmentation: answers to the coordinator's ``seg_*`` queries.

Each function takes the unit's events (and users) and the query's config, and returns the
aggregate answer (numpy arrays), with the unit's own Gaussian noise added when the config
asks for it. :func:`final_step` also writes the unit's per-user segment file and action list
to the unit's own disk; those never leave the unit.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clients.features import build_features
from clients.playbook import PlaybookConfig, churn_warnings, plan_actions
from clients.segments import (
    activity_vectors,
    add_noise,
    assign,
    binned,
    grid_histogram,
    lloyd_statistics,
    quintile_score,
    rfm_histograms,
    rfm_scores,
    value_tier,
)
from fedseg.config import LIFECYCLE_STAGES, FeatureConfig
from fedseg.errors import FedsegError
from fedseg.io import write_table
from fedseg.segments import CLV_EDGES, D, RFM_SEGMENT_NAMES, VALUE_TIERS


def _features(events: pd.DataFrame, users: pd.DataFrame | None, cfg: dict[str, Any],
              cutoff_key: str = "cutoff") -> pd.DataFrame:
    config = FeatureConfig(cutoff=dt.date.fromisoformat(str(cfg[cutoff_key])),
                           horizon_days=int(cfg.get("horizon-days", 273)))
    return build_features(events, config, users=users)


def _centroids(cfg: dict[str, Any]) -> np.ndarray:
    return np.asarray(cfg["centroids"], dtype=float).reshape(int(cfg["k"]), D)


def grid_step(events: pd.DataFrame, users: pd.DataFrame | None, cfg: dict[str, Any],
              rng: np.random.Generator | None = None) -> dict[str, Any]:
    vectors = activity_vectors(_features(events, users, cfg))
    return {"grid": add_noise(grid_histogram(vectors), float(cfg.get("sigma", 0.0)), rng).tolist()}


def lloyd_step(events: pd.DataFrame, users: pd.DataFrame | None, cfg: dict[str, Any],
               rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Sums and counts per centroid for each of ``restarts`` candidate centroid sets."""
    vectors = activity_vectors(_features(events, users, cfg))
    k, restarts = int(cfg["k"]), int(cfg.get("restarts", 1))
    candidates = np.asarray(cfg["centroids"], dtype=float).reshape(restarts, k, D)
    sums, counts, inertias = [], [], []
    for centroids in candidates:
        s, c, i = lloyd_statistics(vectors, centroids)
        sums.append(s)
        counts.append(c)
        inertias.append(i)
    out = {"sums": add_noise(np.asarray(sums), float(cfg.get("sigma-sums", 0.0)), rng).ravel().tolist(),
           "counts": add_noise(np.asarray(counts), float(cfg.get("sigma-counts", 0.0)), rng).ravel().tolist()}
    if float(cfg.get("sigma-sums", 0.0)) == 0.0:
        out["inertia"] = inertias  # only without noise: an exact inertia is not a DP release
    return out


class ScoresMissing(FedsegError):
    """The step needs per-user scores this unit does not have."""


def _clv_of(features: pd.DataFrame, scores: pd.DataFrame | None) -> np.ndarray:
    """Each user's predicted CLV from the unit's scores (tiers by CLV need it)."""
    if scores is None or "clv" not in scores:
        raise ScoresMissing("value tiers by CLV need CLV scores on this unit: a CLV model from the coordinator, or a "
                            "scores file with a clv column (`fedseg score --clv-model`)")
    clv = scores.set_index("user_id")["clv"].reindex(features["user_id"])
    if clv.isna().any():
        raise ScoresMissing(f"the scores file has no CLV for {int(clv.isna().sum())} of this unit's users; score "
                            "them at the segmentation cutoff")
    return clv.to_numpy(dtype=float)


def rfm_step(events: pd.DataFrame, users: pd.DataFrame | None, cfg: dict[str, Any],
             scores: pd.DataFrame | None = None, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Users per fixed RFM bin (and per CLV bin when tiers are by CLV), noisy under DP."""
    features = _features(events, users, cfg)
    hists = rfm_histograms(features)
    if cfg.get("tier-by") == "clv":
        hists["clv"] = np.bincount(binned(_clv_of(features, scores), CLV_EDGES), minlength=len(CLV_EDGES)).astype(float)
    sigma = float(cfg.get("sigma", 0.0))
    return {name: add_noise(h, sigma, rng).tolist() for name, h in hists.items()}


SCORE_COLUMNS = ("churn_probability", "clv", "value_at_risk")


def segment_users(features: pd.DataFrame, cfg: dict[str, Any], scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-user segment, RFM scores, tier (by spend or by CLV), stage, scores and churn warning
    (stays on the unit). With a churn probability, ``churn-threshold`` raises warnings."""
    thresholds = {name: [int(b) for b in cfg[f"thr-{name}"]] for name in ("recency", "frequency", "monetary")}
    table = features[["user_id", "recency_days", "frequency", "monetary_total", "days_since_last_event",
                      "lifecycle_stage", "churned"]].copy()
    table["segment"] = assign(activity_vectors(features), _centroids(cfg))
    if "names" in cfg:
        table["segment_name"] = np.asarray(list(cfg["names"]), dtype=object)[table["segment"].to_numpy()]
    table = pd.concat([table, rfm_scores(features, thresholds)], axis=1)
    if scores is not None:
        present = [c for c in SCORE_COLUMNS if c in scores]
        table = table.merge(scores[["user_id", *present]], on="user_id", how="left")
    if cfg.get("tier-by") == "clv":
        r, f = table["r_score"].to_numpy(), table["f_score"].to_numpy()
        table["clv_score"] = quintile_score(binned(_clv_of(features, scores), CLV_EDGES),
                                            [int(b) for b in cfg["thr-clv"]], higher_is_better=True)
        table["value_tier"] = value_tier(r, f, table["clv_score"].to_numpy())
    warn = churn_warnings(table, inactivity_days=float(cfg.get("inactivity-days", 30.0)),
                          churn_threshold=float(cfg.get("churn-threshold", 0.7)))
    table["warning"] = warn
    return table


def final_step(events: pd.DataFrame, users: pd.DataFrame | None, cfg: dict[str, Any],
               output_dir: Path | None, unit_name: str, scores: pd.DataFrame | None = None,
               playbook: PlaybookConfig | None = None, contact_log: pd.DataFrame | None = None,
               rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Segment every user, write the local files (segments, the CRM action list as Parquet and CSV),
    return noisy per-segment totals. ``rng`` (the unit's private generator) draws the noise, then the holdout."""
    features = _features(events, users, cfg)
    k = int(cfg["k"])
    table = segment_users(features, cfg, scores)
    vectors = activity_vectors(features)
    seg = table["segment"].to_numpy()
    sizes = np.bincount(seg, minlength=k).astype(float)
    churned = np.bincount(seg, weights=table["churned"].to_numpy(dtype=float), minlength=k)
    profile_sums = np.zeros((k, D))
    np.add.at(profile_sums, seg, vectors)
    rfm_counts = table["rfm_segment"].value_counts().reindex(RFM_SEGMENT_NAMES, fill_value=0).to_numpy(float)
    tier_counts = table["value_tier"].value_counts().reindex(VALUE_TIERS, fill_value=0).to_numpy(float)
    stage_counts = table["lifecycle_stage"].astype(str).value_counts().reindex(LIFECYCLE_STAGES, fill_value=0).to_numpy(float)
    warnings = float(table["warning"].notna().sum())
    sigma = float(cfg.get("sigma", 0.0))
    out: dict[str, Any] = {
        "sizes": add_noise(sizes, sigma, rng).tolist(),
        "churned": add_noise(churned, sigma, rng).tolist(),
        "profile-sums": add_noise(profile_sums, sigma, rng).ravel().tolist(),
        "rfm-segments": add_noise(rfm_counts, sigma, rng).tolist(),
        "tiers": add_noise(tier_counts, sigma, rng).tolist(),
        "stages": add_noise(stage_counts, sigma, rng).tolist(),
        "warnings": float(add_noise(np.array([warnings]), sigma, rng)[0]),
    }
    if int(cfg.get("score-sums", 0)):
        # per segment: churn probability (in [0, 1]) and CLV (under DP clipped, in units of the clip)
        prob = table["churn_probability"].fillna(0.0).to_numpy(float) if "churn_probability" in table \
            else np.zeros(len(table))
        clv = table["clv"].fillna(0.0).to_numpy(float) if "clv" in table else np.zeros(len(table))
        if sigma > 0:
            clv = np.minimum(np.maximum(clv, 0.0), float(cfg["value-clip"])) / float(cfg["value-clip"])
        out["prob-sums"] = add_noise(np.bincount(seg, weights=prob, minlength=k), sigma, rng).tolist()
        out["clv-sums"] = add_noise(np.bincount(seg, weights=clv, minlength=k), sigma, rng).tolist()
    if "previous-cutoff" in cfg:
        previous = _features(events, users, cfg, cutoff_key="previous-cutoff")
        states = ["absent", *LIFECYCLE_STAGES]
        before = pd.Series(previous["lifecycle_stage"].astype(str).to_numpy(), index=previous["user_id"])
        before = before.reindex(table["user_id"]).fillna("absent").to_numpy()
        after = table["lifecycle_stage"].astype(str).to_numpy()
        index = {s: i for i, s in enumerate(states)}
        counts = np.zeros((len(states), len(states)))
        np.add.at(counts, ([index[s] for s in before], [index[s] for s in after]), 1.0)
        out["transitions"] = add_noise(counts, float(cfg.get("sigma-transitions", 0.0)), rng).ravel().tolist()
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_table(table, output_dir / f"segments_{unit_name}.parquet")
        actions = plan_actions(table, playbook or PlaybookConfig(), today=dt.date.fromisoformat(str(cfg["cutoff"])),
                               contact_log=contact_log, rng=rng)
        for suffix in (".parquet", ".csv"):  # the CRM takes either
            write_table(actions, output_dir / f"actions_{unit_name}{suffix}")
    return out
