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

Optional DP noise (fairness only): Gaussian noise ``N(0, sigma^2)`` on every combined count,
score sum and histogram entry before anything is derived (the bootstrap then resamples the
noisy table, negative cells taken as 0 there; its intervals do not include the DP noise).
Cells are not clipped, so derived counts stay unbiased; the noise on a derived count is
``sigma * sqrt(cells summed)``: with DP, use a coarse ``score_bins`` (e.g. 20) to keep it small. Unit of privacy: one end user, who
holds ONE row of the scored table. Adding or removing that user changes, per attribute, one
cell count by 1, the matching score sum by at most 1 (scores lie in [0, 1]) and, with
``auc_bins``, one histogram entry by 1; so the L2 sensitivity over all ``A`` audited attributes
(intersections included) is ``Delta = sqrt(A * m)`` with ``m = 3`` (score mode with auc_bins),
``2`` (score mode) or ``1`` (outcome mode). For a target ``(epsilon, delta)`` the release is
rho-zCDP with ``rho = Delta^2 / (2 sigma^2)``; sigma is the smallest with
``rho + 2 sqrt(rho ln(1/delta)) <= epsilon`` (Bun and Steinke 2016; the same conversion as
the segmentation, :func:`privacy.accounting.epsilon_for_rho`). ``on_spend(epsilon, delta,
mechanism)`` is called once per noisy release so the privacy ledger can record it.
The pricing statistics are not noised (a user's log-price sum is unbounded without clipping);
they stay with the coordinator and only the premium figures are released.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from audit.fairness import FairnessReport, FairnessSpec, FairnessStats, combine_stats, local_stats, report_from_stats
from audit.pricing import (ComparisonFit, PricingReport, PricingSpec, SliceFit, build_report, combine_meats,
                           combine_tables, fit, local_meat, local_tables, prepare)
from audit.stats import read_table

OnSpend = Callable[[float, float, str], None]


class DPConfig(BaseModel):
    """Target of the Gaussian mechanism on the combined fairness statistics."""

    epsilon: float = Field(gt=0)
    delta: float = Field(1e-6, gt=0, lt=1)
    seed: int | None = Field(None, description="Noise seed (None = fresh OS randomness; set only in tests).")


def sensitivity_sq(spec: FairnessSpec) -> float:
    """Squared L2 sensitivity of one user's row over all released tables (module doc)."""
    per = 1 if spec.mode == "outcome" else (3 if spec.auc_bins else 2)
    return float(len(spec.attributes()) * per)


def sigma_for(spec: FairnessSpec, dp: DPConfig) -> float:
    from privacy.accounting import rho_for_epsilon

    return math.sqrt(sensitivity_sq(spec) / (2 * rho_for_epsilon(dp.epsilon, dp.delta)))


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


def combine_fairness(units: Sequence[FairnessStats], spec: FairnessSpec, dp: DPConfig | None = None,
                     on_spend: OnSpend | None = None) -> FairnessReport:
    """Server side: sum the units' statistics, optionally add DP noise, build the report."""
    stats = combine_stats(list(units))
    sigma = None
    if dp is not None:
        sigma = sigma_for(spec, dp)
        stats = _noised(stats, sigma, np.random.default_rng(dp.seed))
        if on_spend is not None:
            on_spend(dp.epsilon, dp.delta, f"gaussian(sigma={sigma:.4g}, fairness audit)")
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


def unit_fairness(path: str | Path, spec: FairnessSpec) -> FairnessStats:
    """A unit's fairness statistics from its file."""
    return local_stats(read_table(path), spec)


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
                       on_spend: OnSpend | None = None) -> FairnessReport:
    """Federated fairness audit in-process: each unit's statistics, then the server combine."""
    return combine_fairness([unit_fairness(p, spec) for p in paths], spec, dp, on_spend)


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
