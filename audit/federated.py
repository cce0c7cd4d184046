"""Federated audits: units compute sufficient statistics, the server combines them.

Nothing per-row leaves a unit:

* fairness: per attribute and group, counts and score sums of the cells (label, decision,
  score bin) and, with ``auc_bins``, a score histogram per label (:class:`audit.fairness.FairnessStats`);
* pricing, round 1: per (slice, item, window, level) the count and the sum of log prices;
  round 2 (after the server's fit): per slice the K x K matrix ``sum_c u_c u_c'`` over the
  unit's customers and the number of customers (:mod:`audit.pricing`). Customers are assumed
  not to span units (a customer seen by two units counts as two clusters).

The server sums them; the report is built by the same functions as the pooled audit, so with
no noise the federated report equals the pooled report (tests check this on unit files).
Small-cell suppression is applied to the combined figures (``min_group_size`` / ``min_count``).

Optional DP noise (fairness only), added by **each unit** to its own statistics before they
leave it, so the guarantee holds against the coordinator: Gaussian noise ``N(0, sigma^2)`` on
every count, score sum and histogram entry (the server adds nothing; the combined table carries
noise of standard deviation ``sigma * sqrt(units)``; the bootstrap then resamples the noisy table,
negative cells taken as 0 there, and its intervals do not include the DP noise). Cells are not
clipped, so derived counts stay unbiased; the noise on a derived count is ``sigma * sqrt(cells
summed)``: with DP, use a coarse ``score_bins`` (e.g. 20) to keep it small. Unit of privacy: one
end user, who holds ONE row of the scored table. Adding or removing that user changes, per
attribute, one cell count by 1, the matching score sum by at most 1 (scores lie in [0, 1]) and,
with ``auc_bins``, one histogram entry by 1; so the L2 sensitivity over all ``A`` audited
attributes (intersections included) is ``Delta = sqrt(A * m)`` with ``m = 3`` (score mode with
auc_bins), ``2`` (score mode) or ``1`` (outcome mode). For a target ``(epsilon, delta)`` sigma is
the smallest with the accountant's epsilon (:mod:`privacy.accounting`, RDP) at most epsilon.
Before adding the noise each unit charges the release to its own privacy account
(:class:`privacy.budget.UnitPrivacy`: the same ledger as training and segmentation).
The pricing statistics are not noised (a user's log-price sum is unbounded without clipping);
they stay with the coordinator and only the premium figures are released.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from audit.fairness import FairnessReport, FairnessSpec, FairnessStats, combine_stats, local_stats, report_from_stats
from audit.pricing import (ComparisonFit, PricingReport, PricingSpec, SliceFit, build_report, combine_meats,
                           combine_tables, fit, local_meat, local_tables, prepare)
from audit.stats import read_table
from privacy.accounting import Release
from privacy.budget import UnitPrivacy

class DPConfig(BaseModel):
    """Target of the Gaussian mechanism each unit applies to its fairness statistics."""

    epsilon: float = Field(gt=0)
    delta: float = Field(1e-6, gt=0, lt=1)
    seed: int | None = Field(None, description="Noise seed (None = fresh OS randomness; set only in tests).")


def sensitivity_sq(spec: FairnessSpec) -> float:
    """Squared L2 sensitivity of one user's row over all released tables (module doc)."""
    per = 1 if spec.mode == "outcome" else (3 if spec.auc_bins else 2)
    return float(len(spec.attributes()) * per)


def release_for(spec: FairnessSpec, dp: DPConfig) -> Release:
    """The Gaussian release one unit makes: noise multiplier calibrated to ``dp`` by the accountant."""
    from privacy.accounting import gaussian_noise_multiplier

    return Release(noise_multiplier=gaussian_noise_multiplier(dp.epsilon, dp.delta), task="audit")


def sigma_for(spec: FairnessSpec, dp: DPConfig) -> float:
    """Per-entry noise standard deviation a unit adds: ``z * Delta``."""
    return release_for(spec, dp).noise_multiplier * math.sqrt(sensitivity_sq(spec))


def _noised(stats: FairnessStats, sigma: float, rng: np.random.Generator) -> FairnessStats:
    out = {}
    for name, st in stats.attributes.items():
        upd = {}
        for key in ("cells", "score_sums", "auc_hist"):
            arr = np.asarray(getattr(st, key), dtype=float)
            if arr.size:
                upd[key] = (arr + rng.normal(0.0, sigma, arr.shape)).tolist()  # unclipped: sums stay unbiased
        out[name] = st.model_copy(update=upd)
    return FairnessStats(n_rows=stats.n_rows, attributes=out)


def combine_fairness(units: Sequence[FairnessStats], spec: FairnessSpec, dp: DPConfig | None = None) -> FairnessReport:
    """Server side: sum the units' (already noised, under DP) statistics and build the report."""
    stats = combine_stats(list(units))
    sigma = sigma_for(spec, dp) * math.sqrt(len(units)) if dp is not None else None
    return report_from_stats(stats, spec, units=len(units), dp_noise_sigma=sigma)


# ---------------------------------------------------------------- pricing wire formats


def tables_to_bytes(tables: dict[str, pd.DataFrame]) -> bytes:
    buf = io.BytesIO()
    frame = pd.concat([t.assign(comparison=k) for k, t in tables.items()], ignore_index=True)
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def tables_from_bytes(data: bytes) -> dict[str, pd.DataFrame]:
    frame = pd.read_parquet(io.BytesIO(data))
    return {k: g.drop(columns="comparison").reset_index(drop=True) for k, g in frame.groupby("comparison", sort=False)}


def fits_to_bytes(fits: dict[str, ComparisonFit]) -> bytes:
    buf = io.BytesIO()
    strata = pd.concat([cf.strata.assign(comparison=k) for k, cf in fits.items()], ignore_index=True)
    strata.to_parquet(buf, index=False)
    meta = {k: {"attribute": cf.attribute, "slice_col": cf.slice_col, "slices": [s.model_dump() for s in cf.slices]}
            for k, cf in fits.items()}
    head = json.dumps(meta).encode()
    return len(head).to_bytes(8, "big") + head + buf.getvalue()


def fits_from_bytes(data: bytes) -> dict[str, ComparisonFit]:
    n = int.from_bytes(data[:8], "big")
    meta = json.loads(data[8:8 + n])
    strata = pd.read_parquet(io.BytesIO(data[8 + n:]))
    out = {}
    for k, m in meta.items():
        s = strata[strata["comparison"] == k].drop(columns="comparison").dropna(axis=1, how="all").reset_index(drop=True)
        out[k] = ComparisonFit(m["attribute"], m["slice_col"], [SliceFit(**x) for x in m["slices"]], s)
    return out


def meat_to_bytes(meat: dict[str, dict[str, np.ndarray]]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{f"{k}::{part}": v for k, d in meat.items() for part, v in d.items()})
    return buf.getvalue()


def meat_from_bytes(data: bytes) -> dict[str, dict[str, np.ndarray]]:
    z = np.load(io.BytesIO(data))
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in z.files:
        k, part = name.rsplit("::", 1)
        out.setdefault(k, {})[part] = z[name]
    return out


# ---------------------------------------------------------------- unit side


def unit_fairness(path: str | Path, spec: FairnessSpec, dp: DPConfig | None = None,
                  account: UnitPrivacy | None = None, run_id: str = "") -> FairnessStats:
    """A unit's fairness statistics from its file; under ``dp`` the unit charges the release to its
    own ``account`` first, then adds its own noise."""
    stats = local_stats(read_table(path), spec)
    if dp is None:
        return stats
    if account is not None:
        account.charge(run_id, "audit", release_for(spec, dp))
    return _noised(stats, sigma_for(spec, dp), np.random.default_rng(dp.seed))


def unit_rows(path: str | Path) -> int:
    """Rows (end users) in a unit's scored table: what its delta rule is checked against."""
    return len(read_table(path))


def unit_pricing_tables(path: str | Path, spec: PricingSpec) -> tuple[bytes, int, int]:
    """Round 1 on a unit: (tables, rows used, rows dropped)."""
    prep = prepare(read_table(path), spec)
    return tables_to_bytes(local_tables(prep, spec)), len(prep.y), prep.n_dropped


def unit_pricing_meat(path: str | Path, spec: PricingSpec, fits: bytes) -> bytes:
    """Round 2 on a unit: cluster-score matrices given the server's fit."""
    prep = prepare(read_table(path), spec)
    return meat_to_bytes(local_meat(prep, spec, fits_from_bytes(fits)))


# ---------------------------------------------------------------- in-process runs (same functions)


def federated_fairness(paths: Sequence[str | Path], spec: FairnessSpec, dp: DPConfig | None = None,
                       accounts: Sequence[UnitPrivacy] | None = None) -> FairnessReport:
    """Federated fairness audit in-process: each unit's (noised) statistics, then the server
    combine. Under ``dp`` with ``accounts`` every unit first accepts the release, then charges it."""
    import uuid

    run_id = "audit-" + uuid.uuid4().hex[:12]
    if dp is not None and accounts is not None:
        release = release_for(spec, dp)
        for path, account in zip(paths, accounts):  # every unit accepts before any releases
            account.accept(run_id, "audit", dp.delta, dp.epsilon, [release], n_users=unit_rows(path))
    return combine_fairness([unit_fairness(p, spec, dp, a, run_id)
                             for p, a in zip(paths, accounts or [None] * len(paths))], spec, dp)


def server_pricing_fit(tables: Sequence[bytes], spec: PricingSpec) -> tuple[dict[str, ComparisonFit], bytes]:
    fits = fit(combine_tables([tables_from_bytes(t) for t in tables]), spec)
    return fits, fits_to_bytes(fits)


def server_pricing_report(fits: dict[str, ComparisonFit], meats: Sequence[bytes], spec: PricingSpec,
                          n_rows: int, n_dropped: int, units: int) -> PricingReport:
    return build_report(fits, combine_meats([meat_from_bytes(m) for m in meats]), spec, n_rows=n_rows,
                        n_dropped=n_dropped, units=units)


def federated_pricing(paths: Sequence[str | Path], spec: PricingSpec) -> PricingReport:
    """Federated pricing audit in-process: two rounds through the byte wire formats."""
    round1 = [unit_pricing_tables(p, spec) for p in paths]
    fits, blob = server_pricing_fit([r[0] for r in round1], spec)
    meats = [unit_pricing_meat(p, spec, blob) for p in paths]
    return server_pricing_report(fits, meats, spec, n_rows=sum(r[1] for r in round1),
                                 n_dropped=sum(r[2] for r in round1), units=len(paths))
