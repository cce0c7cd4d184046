"""Federated tags, coordinator side: quantiles from merged histograms, then tag prevalence by segment.

1. ``query.tag_quantiles`` (only when a rule calls ``qNN(feature)`` or segments are RFM segments):
   each unit sends users per fixed bin of every feature a quantile names (:data:`fedseg.tags.QUANTILE_EDGES`)
   and, for RFM segments, the three RFM histograms; the coordinator sums them and reads every
   ``qNN(feature)`` (:func:`fedseg.tags.quantile_value`) and the RFM quintile thresholds.
2. ``query.tags``: the coordinator sends the rules (TOML) and the quantile values; each unit tags its
   users, keeps the per-user file (``tags_<unit>.parquet``) and sends only the tag x segment counts
   and the segment sizes. Prevalence of a tag = its row sum / all users.

Privacy (``TagPlan.epsilon``): each step is one Gaussian release the unit applies itself, with the
sensitivities of :mod:`privacy.tags_dp`; the budget (zCDP rho) is split ``quantile_share`` to the
histograms and the rest to the counts (:func:`privacy.accounting.split_gaussian_budget`), so the
accountant gives exactly the target epsilon. Units accept the plan first and charge each release to
their ledger before answering. Noisy counts are clipped at 0 and shares to [0, 1]; a segment's
shares are null when its noisy size is below four merged noise deviations (post-processing).
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from fedseg import protocol
from fedseg.config import LIFECYCLE_STAGES, TagPlan
from fedseg.errors import FedsegError
from fedseg.segments import RFM_EDGES, RFM_SEGMENT_NAMES, quantile_bins
from fedseg.tags import QUANTILE_EDGES, TagRule, load_rules, needed_quantiles, quantiles_from_histograms, rules_to_toml
from privacy.accounting import default_delta, epsilon, split_gaussian_budget
from privacy.tags_dp import TASK, step_sensitivity, tag_releases
from server.grid import agree_privacy, ask, wait_for_units


def _ask(grid: Grid, nodes: list[int], message_type: str, config: dict[str, Any], timeout: float,
         key: str) -> np.ndarray:
    answers = ask(grid, nodes, message_type, RecordDict({protocol.CONFIG: ConfigRecord(config)}), timeout)
    return np.sum([np.asarray(a[protocol.METRICS][key], dtype=float) for a in answers.values()], axis=0)


def plan_steps(plan: TagPlan, rules: list[TagRule], run_id: str) -> tuple[dict[str, Any] | None, dict[str, Any], float, float]:
    """The configs of both steps with their noise, the report's epsilon and delta."""
    if plan.cutoff is None:
        raise FedsegError("the tag report needs its day (--cutoff; tags-cutoff)")
    base = {"cutoff": plan.cutoff.isoformat(), "horizon-days": 1, "model": "mlp", "dataset": plan.dataset,
            "segment-by": plan.segment_by, protocol.RUN_ID: run_id}
    features = needed_quantiles(rules)
    quantile_cfg = {**base, "features": json.dumps(features)} if features or plan.segment_by == "rfm" else None
    tags_cfg = {**base, "rules": rules_to_toml(rules)}
    delta = plan.delta if plan.delta is not None else default_delta(plan.population)
    if plan.epsilon is None:
        return quantile_cfg, tags_cfg, 0.0, delta
    parts = {"tags": (1.0 - plan.quantile_share if quantile_cfg else 1.0, step_sensitivity("tags", tags_cfg))}
    if quantile_cfg is not None:
        parts["quantiles"] = (plan.quantile_share, step_sensitivity("quantiles", quantile_cfg))
    sigmas = split_gaussian_budget(plan.epsilon, delta, parts)
    tags_cfg["sigma"] = sigmas["tags"]
    if quantile_cfg is not None:
        quantile_cfg["sigma"] = sigmas["quantiles"]
    releases = tag_releases("tags", tags_cfg) + (tag_releases("quantiles", quantile_cfg) if quantile_cfg else [])
    return quantile_cfg, tags_cfg, epsilon(releases, delta), delta


def run_tags(grid: Grid, plan: TagPlan, nodes: list[int] | None = None) -> dict[str, Any]:
    """Both steps of the module doc; returns the ``tags.json`` content."""
    rules = load_rules(plan.tags_file)
    nodes = nodes or wait_for_units(grid, plan.min_units, plan.timeout_s)
    run_id = uuid.uuid4().hex[:12]
    quantile_cfg, tags_cfg, eps, delta = plan_steps(plan, rules, run_id)
    if plan.epsilon is not None:
        releases = tag_releases("tags", tags_cfg) + (tag_releases("quantiles", quantile_cfg) if quantile_cfg else [])
        agree_privacy(grid, nodes, run_id, TASK, delta, eps, releases, ConfigRecord(tags_cfg), plan.timeout_s)
    quantiles: dict[tuple[str, int], float] = {}
    thresholds: dict[str, list[int]] = {}
    if quantile_cfg is not None:
        merged = _ask(grid, nodes, protocol.TAG_QUANTILES, quantile_cfg, plan.timeout_s, "histograms")
        quantiles = quantiles_from_histograms(rules, merged)
        offset = sum(len(QUANTILE_EDGES[f]) for f in json.loads(quantile_cfg["features"]))
        if plan.segment_by == "rfm":
            for name, edges in RFM_EDGES.items():
                thresholds[name] = quantile_bins(merged[offset:offset + len(edges)])
                offset += len(edges)
    tags_cfg["quantiles"] = json.dumps({f"{f}:{q}": v for (f, q), v in sorted(quantiles.items())})
    for name, bins in thresholds.items():
        tags_cfg[f"thr-{name}"] = bins
    answers = ask(grid, nodes, protocol.TAGS, RecordDict({protocol.CONFIG: ConfigRecord(tags_cfg)}), plan.timeout_s)
    segments = list(RFM_SEGMENT_NAMES) if plan.segment_by == "rfm" else list(LIFECYCLE_STAGES)
    matrix = np.maximum(np.sum([np.asarray(a[protocol.METRICS]["matrix"], float) for a in answers.values()], axis=0),
                        0.0).reshape(len(rules), len(segments))
    sizes = np.maximum(np.sum([np.asarray(a[protocol.METRICS]["sizes"], float) for a in answers.values()], axis=0), 0.0)
    total = float(sizes.sum())
    merged_std = float(tags_cfg.get("sigma", 0.0)) * math.sqrt(len(answers))
    # a segment's shares are reported when its noisy size is at least four merged noise deviations
    min_size = max(1.0, 4.0 * merged_std)
    return {
        "cutoff": plan.cutoff.isoformat() if plan.cutoff else None,
        "users": total,
        "segment_by": plan.segment_by,
        "segments": dict(zip(segments, sizes.tolist())),
        "tags": [{"tag": rule.name, "rule": rule.text, "description": rule.description,
                  "users": float(row.sum()), "prevalence": float(row.sum() / total) if total > 0 else None,
                  "by_segment": dict(zip(segments, row.tolist())),
                  "share_of_segment": {s: (float(min(v / n, 1.0)) if n >= min_size else None)
                                       for s, v, n in zip(segments, row.tolist(), sizes.tolist())}}
                 for rule, row in zip(rules, matrix)],
        "quantiles": {f"q{q}({f})": v for (f, q), v in sorted(quantiles.items())},
        "rfm_threshold_bins": thresholds or None,
        "units": len(answers),
        "privacy": {"epsilon": eps if plan.epsilon is not None else None,
                    "delta": delta if plan.epsilon is not None else None,
                    "accountant": "RDP (dp-accounting) over the quantile histograms and the tag x segment counts, "
                                  "add/remove one end user; units add the noise",
                    "merged_noise_std_counts": merged_std, "min_reported_segment_size": min_size},
    }
