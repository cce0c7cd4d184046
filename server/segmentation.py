"""Federated segmentation, coordinator side: DP-Lloyd k-means, RFM thresholds, transitions.

Protocol (each step one round of ``query`` messages; units answer with aggregates only, each
unit adding its own Gaussian noise when a privacy budget is set):

1. ``seg_grid``: users per cell of a fixed 4^5 grid over the bounded activity space
   (:mod:`clients.segments`). The coordinator draws points uniformly inside the cells in
   proportion to their counts, picks k by the elbow of k-means on them (k = 2..8) unless k is
   given, and takes that clustering as the initial centroids: a federated initialisation that
   looks at no user, only at the (noisy) histogram.
2. ``seg_lloyd`` x ``iterations``: per-centroid sums and counts; new centroid = sum / count,
   clipped to [0, 1]; a centroid whose noisy count is below ``min_count`` keeps its place.
3. ``seg_rfm``: users per fixed bin of recency, frequency and monetary value; quintile
   thresholds are read off the merged histograms (:func:`clients.segments.quantile_bins`).
4. ``seg_final``: each unit scores its users, writes its per-user segment file locally and
   returns per-segment totals (sizes, churned users, profile sums, RFM segments, value tiers,
   lifecycle stages, warnings) and the lifecycle transition counts between two cutoffs.

Privacy (add/remove one end user, users in one unit only): every step is a Gaussian mechanism
whose L2 sensitivity the unit itself computes (:func:`clients.segment_handlers.step_sensitivities`):
the grid histogram ``Delta = 1``, a Lloyd step ``Delta^2 = R d`` for the sums and ``R`` for the
counts (R candidate centroid sets), the three RFM histograms ``Delta^2 = 3``, the final totals
``Delta^2 = T + d`` (one count in each of ``T`` tables plus the profile sum) and the transition
counts ``Delta = 1``. Gaussian releases compose in Renyi DP as one Gaussian whose
``1 / (2 z^2)`` is the sum of theirs (zero-concentrated DP ``rho``), so the budget is split over
the steps as shares of ``rho`` (:class:`SegmentationBudget`), with the total ``rho`` chosen so that
the accountant (:mod:`privacy.accounting`, RDP) gives exactly the target epsilon. Each unit adds
the full noise itself (the coordinator sees each unit's answer), so the merged noise has variance
``units x sigma^2``; and each unit charges every step to its own privacy account before it answers.
"""

from __future__ import annotations

import math
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from pydantic import BaseModel

from fedseg.segments import (D, GRID_BINS, RFM_EDGES, SCORE_EDGES, RFM_SEGMENT_NAMES, VALUE_TIERS, grid_centers, quantile_bins,
                             step_sensitivities, vectors_to_profile)
from fedseg import protocol
from fedseg.config import SegmentationPlan
from privacy.accounting import Release, delta_for, epsilon, gaussian_noise_multiplier
from privacy.segmentation_dp import step_releases
from server.grid import agree_privacy, ask, wait_for_units


class NoisePlan(BaseModel):
    """Per-entry noise of every step, and the epsilon they add up to."""

    sigma_grid: float = 0.0
    sigma_lloyd_sums: float = 0.0
    sigma_lloyd_counts: float = 0.0
    sigma_rfm: float = 0.0
    sigma_final: float = 0.0
    sigma_transitions: float = 0.0
    rho: float = 0.0
    epsilon: float = 0.0
    delta: float = 0.0


def _sigma(sens_sq: float, rho_step: float) -> float:
    return math.sqrt(sens_sq / (2 * rho_step))


def noise_plan(plan: SegmentationPlan) -> NoisePlan:
    """Calibrate every step's sigma to the plan's epsilon (see the module doc)."""
    delta = delta_for(plan.delta, plan.population)
    if plan.epsilon is None:
        return NoisePlan(delta=delta)
    b = plan.budget
    total = b.grid + b.lloyd + b.rfm + b.final + (b.transitions if plan.previous_cutoff else 0.0)
    # one Gaussian of noise multiplier z meets the target exactly; its rho = 1 / (2 z^2) is split
    rho = 1.0 / (2.0 * gaussian_noise_multiplier(plan.epsilon, delta) ** 2)
    share = {k: getattr(b, k) / total * rho for k in ("grid", "lloyd", "rfm", "final", "transitions")}
    per_iter = share["lloyd"] / plan.lloyd_iterations
    # a Lloyd step's sums (Delta^2 = R d) and counts (R) get equal sigma: Delta^2 = R (d + 1) in all
    s_lloyd = _sigma(plan.lloyd_restarts * (D + 1), per_iter)
    [(_, rfm_sq)] = step_sensitivities("rfm", rfm_options(plan))
    final_sq = step_sensitivities("final", final_options(plan))[0][1]
    out = NoisePlan(
        sigma_grid=_sigma(1, share["grid"]),
        sigma_lloyd_sums=s_lloyd,
        sigma_lloyd_counts=s_lloyd,
        sigma_rfm=_sigma(rfm_sq, share["rfm"]),
        sigma_final=_sigma(final_sq, share["final"]),
        sigma_transitions=_sigma(1, share["transitions"]) if plan.previous_cutoff else 0.0,
        delta=delta,
    )
    releases = planned_releases(plan, out)
    out.rho = sum(r.count / (2 * r.noise_multiplier ** 2) for r in releases)
    out.epsilon = epsilon(releases, delta)
    return out


def rfm_options(plan: SegmentationPlan) -> dict[str, Any]:
    """What the RFM step's config says beyond its noise: whether units also send a CLV histogram."""
    return {"tier-by": plan.tier_by}


def final_options(plan: SegmentationPlan) -> dict[str, Any]:
    """What the final step's config says beyond its noise: whether units add per-segment score sums,
    the churn warning settings and the CLV clip."""
    return {"score-sums": int(plan.with_scores), "tier-by": plan.tier_by, "value-clip": plan.value_clip,
            "inactivity-days": plan.inactivity_days, "churn-threshold": plan.churn_threshold}


def planned_releases(plan: SegmentationPlan, noise: NoisePlan) -> list[Release]:
    """Every Gaussian release of the run, built with the sensitivities the units use."""
    steps = [("grid", {"sigma": noise.sigma_grid}, 1),
             ("lloyd", {"sigma-sums": noise.sigma_lloyd_sums, "sigma-counts": noise.sigma_lloyd_counts,
                        "restarts": plan.lloyd_restarts}, plan.lloyd_iterations),
             ("rfm", {"sigma": noise.sigma_rfm, **rfm_options(plan)}, 1)]
    final = {"sigma": noise.sigma_final, **final_options(plan)}
    if plan.previous_cutoff:
        final.update({"previous-cutoff": plan.previous_cutoff.isoformat(), "sigma-transitions": noise.sigma_transitions})
    steps.append(("final", final, 1))
    return [r.model_copy(update={"count": count}) for step, cfg, count in steps for r in step_releases(step, cfg)]


def _config(plan: SegmentationPlan, noise: NoisePlan, run_id: str, **extra: Any) -> ConfigRecord:
    """A step's config; the run id keys each unit's privacy account."""
    record = ConfigRecord({"cutoff": plan.cutoff.isoformat(), "horizon-days": plan.horizon_days,
                           "model": "mlp", "dataset": plan.dataset, protocol.RUN_ID: run_id})
    for key, value in extra.items():
        record[key] = value
    return record


def _ask(grid: Grid, nodes: list[int], message_type: str, config: ConfigRecord, timeout: float,
         models: dict[str, Any] | None = None) -> list[MetricRecord]:
    answers = ask(grid, nodes, message_type, RecordDict({protocol.CONFIG: config, **(models or {})}), timeout)
    return [content[protocol.METRICS] for content in answers.values()]


def model_records(plan: SegmentationPlan) -> dict[str, Any]:
    """The global models of the plan as message records: the weights (``churn-model``, ``clv-model``)
    and their metadata and scaler (``churn-model-meta``, ``clv-model-meta``); units score with them."""
    from flwr.app import Array, ArrayRecord

    from fedseg.checkpoint import load_checkpoint
    from fedseg.errors import FedsegError

    records: dict[str, Any] = {}
    for target, path, record in (("churn", plan.churn_model, protocol.CHURN_MODEL),
                                 ("clv", plan.clv_model, protocol.CLV_MODEL)):
        if path is None:
            continue
        flag = f"--{target}-model"
        if not path.exists():
            raise FedsegError(f"{flag} {path}: no such file; a training run writes <run>/server/model.npz")
        try:
            saved = load_checkpoint(path.parent, name=path.name)
        except (ValueError, OSError, KeyError, EOFError):
            saved = None
        if saved is None or "model" not in saved.extra:
            raise FedsegError(f"{flag} {path} is not a fedseg model file; use <run>/server/model.npz")
        found = saved.extra.get("target", "churn")
        if found != target:
            raise FedsegError(f"{flag} {path} is a {found} model; give it as --{found}-model")
        records[record] = ArrayRecord(array_dict={k: Array(v) for k, v in saved.arrays.items()})
        records[record + "-meta"] = ConfigRecord({
            "model": str(saved.extra["model"]), "target": target,
            "model-version": str(saved.extra.get("model_version", "")),
            "horizon-days": int(saved.extra.get("horizon_days", plan.horizon_days)),
            "scaler-mean": [float(x) for x in saved.scaler_mean], "scaler-std": [float(x) for x in saved.scaler_std]})
    return records


def _sum(answers: list[MetricRecord], key: str) -> np.ndarray:
    return np.sum([np.asarray(a[key], dtype=float) for a in answers], axis=0)


def _counts(answers: list[MetricRecord], key: str) -> list[float]:
    return np.maximum(_sum(answers, key), 0.0).tolist()


#: Points drawn from the (noisy) grid histogram to initialise k-means.
INIT_SAMPLE = 20_000


def histogram_sample(histogram: np.ndarray, seed: int, n: int = INIT_SAMPLE, floor: float = 0.0) -> np.ndarray:
    """``n`` points spread uniformly inside the grid cells, in proportion to their counts
    (negative noisy counts read as 0): a continuous stand-in for the users that looks at nothing
    but the released histogram (post-processing, no privacy cost).

    k-means on the cell centres themselves quantises every user to 4 levels per dimension; on
    the planted synthetic data its best solution sat in a poor basin for 4 of 16 (data, seed)
    pairs (ARI 0.47 to 0.69 after Lloyd), the sample's for none (ARI 0.94 to 0.99)."""
    weights = np.asarray(histogram, dtype=float)
    weights = np.where(weights > floor, weights, 0.0)
    if weights.sum() <= 0:
        raise ValueError("the grid histogram is empty (or all noise); no users to segment")
    rng = np.random.default_rng(seed)
    cells = rng.choice(len(weights), size=n, p=weights / weights.sum())
    return grid_centers(D, GRID_BINS)[cells] + rng.uniform(-0.5, 0.5, size=(n, D)) / GRID_BINS


def choose_k_and_init(histogram: np.ndarray, k: int | None, seed: int, restarts: int = 1, floor: float = 0.0
                      ) -> tuple[int, np.ndarray, dict[int, float]]:
    """Elbow over k-means of a sample drawn from the grid histogram (:func:`histogram_sample`).

    Returns k, ``restarts`` distinct initial centroid sets (``[restarts, k, d]``: the best
    k-means solutions on the sample from different seeds, and k-means++ seedings) and the
    elbow inertias.
    """
    from sklearn.cluster import KMeans

    points = histogram_sample(histogram, seed, floor=floor)
    candidates = [k] if k else list(range(2, 9))
    fits, inertias = {}, {}
    for kk in candidates:
        if kk > len(points):
            break
        model = KMeans(n_clusters=kk, n_init=10, random_state=seed).fit(points)
        fits[kk], inertias[kk] = model.cluster_centers_, float(model.inertia_)
    if not fits:  # pragma: no cover - the sample has INIT_SAMPLE points
        raise ValueError("too few points to initialise k-means; use fewer segments")
    if k is None:
        ks = sorted(inertias)
        x = np.array(ks, dtype=float)
        y = np.array([inertias[kk] for kk in ks])
        # elbow: the k farthest below the straight line from the first to the last point
        line = y[0] + (y[-1] - y[0]) * (x - x[0]) / (x[-1] - x[0])
        k = int(ks[int(np.argmax(line - y))])
    if restarts == 1:
        return k, fits[k][None], inertias
    # Half the starts: the best distinct k-means solutions on the sample; the other half:
    # k-means++ seedings of the sample, which land in different basins.
    from sklearn.cluster import kmeans_plusplus

    n_grid = (restarts + 1) // 2
    found = [(inertias[k], fits[k])]
    for extra in range(1, 8 * n_grid):
        if len(found) >= n_grid:
            break
        model = KMeans(n_clusters=k, n_init=1, random_state=seed + extra).fit(points)
        centres = model.cluster_centers_
        if all(np.abs(np.sort(centres, axis=0) - np.sort(c, axis=0)).max() > 1e-6 for _, c in found):
            found.append((float(model.inertia_), centres))
    found.sort(key=lambda item: item[0])
    starts = [c for _, c in found[:n_grid]]
    for extra in range(restarts - len(starts)):
        centres, _ = kmeans_plusplus(points, k, random_state=seed * 1000 + extra)
        starts.append(centres)
    return k, np.stack(starts), inertias


def name_segments(centroids: np.ndarray, sizes: np.ndarray) -> list[str]:
    """Names from centroid profiles (docs/segments.md), first rule that matches:

    new (tenure < 60 days), silent (recency > 180 days), at-risk (recency > 60 days, or
    recency > 30 days with activity falling: trend < -0.5), high-active (frequency >= 4
    purchase days), growing (trend > 0.2), steady.
    Repeated names get ``-2``, ``-3`` ... in order of size.
    """
    names = []
    for p in vectors_to_profile(centroids):
        if p["tenure_days"] < 60:
            names.append("new")
        elif p["recency_days"] > 180:
            names.append("silent")
        elif p["recency_days"] > 60 or (p["recency_days"] > 30 and p["trend"] < -0.5):
            names.append("at-risk")
        elif p["frequency"] >= 4:
            names.append("high-active")
        elif p["trend"] > 0.2:
            names.append("growing")
        else:
            names.append("steady")
    order = np.argsort(-np.asarray(sizes), kind="stable")
    seen: dict[str, int] = {}
    out = list(names)
    for i in order:
        seen[names[i]] = seen.get(names[i], 0) + 1
        if seen[names[i]] > 1:
            out[i] = f"{names[i]}-{seen[names[i]]}"
    return out


def run_segmentation(grid: Grid, plan: SegmentationPlan, nodes: list[int] | None = None) -> dict[str, Any]:
    """Run the protocol of the module doc; returns the aggregate ``segments.json`` content."""
    import uuid

    nodes = nodes or wait_for_units(grid, plan.min_units, plan.timeout_s)
    noise = noise_plan(plan)
    t = plan.timeout_s
    run_id = uuid.uuid4().hex[:12]
    if plan.epsilon is not None:  # every unit accepts the whole plan before any step is released
        agree_privacy(grid, nodes, run_id, "segmentation", noise.delta, noise.epsilon, planned_releases(plan, noise),
                      _config(plan, noise, run_id), t)

    def config(**extra: Any) -> ConfigRecord:
        return _config(plan, noise, run_id, **extra)

    answers = _ask(grid, nodes, protocol.SEG_GRID, config(sigma=noise.sigma_grid), t)
    histogram = _sum(answers, "grid")
    restarts = plan.lloyd_restarts
    # cells whose noisy count is below two standard deviations of the merged noise are read as
    # empty: otherwise the noise of ~1,000 empty cells spreads a uniform haze over the space
    floor = 2.0 * noise.sigma_grid * math.sqrt(len(nodes))
    k, candidates, inertias = choose_k_and_init(histogram, plan.k, plan.seed, restarts, floor=floor)
    if len(candidates) != restarts:  # the noise was calibrated for `restarts` candidate sets
        raise ValueError(f"only {len(candidates)} distinct initialisations for k={k}; use --restarts {len(candidates)}")
    log(INFO, "segmentation: k=%d, %d initialisations (elbow inertias %s)", k, restarts,
        {kk: round(v, 1) for kk, v in inertias.items()})

    history = []
    for it in range(plan.lloyd_iterations):
        answers = _ask(grid, nodes, protocol.SEG_LLOYD, config(
            centroids=candidates.ravel().tolist(), k=k, restarts=restarts,
            **{"sigma-sums": noise.sigma_lloyd_sums, "sigma-counts": noise.sigma_lloyd_counts}), t)
        sums = _sum(answers, "sums").reshape(restarts, k, D)
        counts = _sum(answers, "counts").reshape(restarts, k)
        inertia = _sum(answers, "inertia").tolist() if noise.epsilon == 0 else None
        moved = counts >= max(plan.min_count, 1e-9)
        new = candidates.copy()
        new[moved] = np.clip(sums[moved] / counts[moved][:, None], 0.0, 1.0)
        shift = float(np.abs(new - candidates).max())
        candidates = new
        history.append({"iteration": it + 1, "max_shift": shift, "inertia": inertia})
        if noise.epsilon == 0 and shift < 1e-9:
            break
    if restarts == 1:
        best = 0
    elif inertia is not None:
        best = int(np.argmin(inertia))
    else:
        # No inertia is released under noise; the restarts are ranked by what the last released
        # sums and counts give for free: inertia = sum ||x||^2 - sum_c ||S_c||^2 / n_c, and the
        # first term is the same for every restart (post-processing, no extra budget).
        best = int(np.argmax([(np.square(sums[r][moved[r]]).sum(axis=1) / counts[r][moved[r]]).sum()
                              for r in range(restarts)]))
    centroids, counts = candidates[best], counts[best]

    order = np.lexsort((centroids[:, 0], centroids[:, 1]))  # stable labels: by recency, then frequency
    centroids = centroids[order]
    names = name_segments(centroids, counts[order])

    models = model_records(plan)
    answers = _ask(grid, nodes, protocol.SEG_RFM, config(sigma=noise.sigma_rfm, **rfm_options(plan)), t,
                   models if plan.tier_by == "clv" else None)
    thresholds = {name: quantile_bins(_sum(answers, name)) for name in RFM_EDGES}
    if plan.tier_by == "clv":
        thresholds["clv"] = quantile_bins(_sum(answers, "clv"))

    final_cfg = config(centroids=centroids.ravel().tolist(), k=k, sigma=noise.sigma_final, names=names,
                       **{"thr-" + n: v for n, v in thresholds.items()}, **final_options(plan),
                       **{"sigma-transitions": noise.sigma_transitions})
    if plan.previous_cutoff:
        final_cfg["previous-cutoff"] = plan.previous_cutoff.isoformat()
    answers = _ask(grid, nodes, protocol.SEG_FINAL, final_cfg, t, models)
    return _report(plan, noise, k, centroids, names, thresholds, answers, history, inertias)


def _report(plan, noise, k, centroids, names, thresholds, answers, history, inertias) -> dict[str, Any]:  # noqa: ANN001
    from fedseg.config import LIFECYCLE_STAGES

    # Noisy counts can be negative; clipping at 0 is post-processing and costs no privacy.
    sizes = np.maximum(_sum(answers, "sizes"), 0.0)
    churned = np.maximum(_sum(answers, "churned"), 0.0)
    profile_sums = _sum(answers, "profile-sums").reshape(k, D)
    scored = "prob-sums" in answers[0]
    if scored:  # noisy sums: churn probability, and CLV in units of its clip under DP
        prob_sums = _sum(answers, "prob-sums")
        clv_sums = _sum(answers, "clv-sums") * (plan.value_clip if plan.epsilon else 1.0)
    segments = []
    for i in range(k):
        n = max(sizes[i], 0.0)
        segment = {
            "segment": i,
            "name": names[i],
            "size": float(sizes[i]),
            "share": float(n / max(np.maximum(sizes, 0).sum(), 1e-9)),
            "churn_rate": float(np.clip(churned[i] / n, 0, 1)) if n > 0 else None,
            "centroid": vectors_to_profile(centroids[i])[0],
            "mean_profile": vectors_to_profile(np.clip(profile_sums[i] / n, 0, 1))[0] if n > 0 else None,
        }
        if scored and n > 0 and (plan.churn_model is not None or plan.unit_scores):
            segment["mean_churn_probability"] = float(np.clip(prob_sums[i] / n, 0, 1))
        if scored and n > 0 and (plan.clv_model is not None or plan.unit_scores):
            segment["mean_clv"] = float(max(clv_sums[i], 0.0) / n)
            segment["clv_total"] = float(max(clv_sums[i], 0.0))
        segments.append(segment)
    out: dict[str, Any] = {
        "k": k,
        "segments": segments,
        "rfm_thresholds": {name: [float(SCORE_EDGES[name][b]) for b in bins] for name, bins in thresholds.items()},
        "rfm_threshold_bins": thresholds,
        "rfm_segments": dict(zip(RFM_SEGMENT_NAMES, _counts(answers, "rfm-segments"))),
        "value_tiers": dict(zip(VALUE_TIERS, _counts(answers, "tiers"))),
        "value_tiers_by": plan.tier_by,
        "lifecycle": dict(zip(LIFECYCLE_STAGES, _counts(answers, "stages"))),
        "warnings": max(float(_sum(answers, "warnings")), 0.0),
        "lloyd": history,
        "elbow_inertias": inertias,
        "privacy": {"epsilon": noise.epsilon if plan.epsilon else None, "delta": noise.delta if plan.epsilon else None,
                    "rho": noise.rho, "accountant": "RDP (dp-accounting) over the Gaussian releases of every step, "
                                                    "add/remove one user; units add the noise",
                    "sigmas": noise.model_dump(exclude={"rho", "epsilon", "delta"})},
        "units": len(answers),
        "cutoff": plan.cutoff.isoformat(),
    }
    if plan.previous_cutoff:
        stages = ["absent", *LIFECYCLE_STAGES]
        matrix = np.maximum(_sum(answers, "transitions"), 0.0).reshape(len(stages), len(stages))
        out["transition_matrix"] = {"from_cutoff": plan.previous_cutoff.isoformat(), "to_cutoff": plan.cutoff.isoformat(),
                                    "states": stages, "counts": matrix.tolist()}
    return out
