"""Pricing audit: do groups pay more than a reference group for the same item in the same window?

The math (prices in currency units; ``y = ln price``):

For one attribute with levels ``g = 0..K-1`` and reference ``r``, and one slice (all rows, or
one value of ``--by``), strata ``s`` are (item, time window) cells, one week by default. The
within-stratum (fixed-effects) regression

    y_i = alpha_{s(i)} + sum_{j != r} beta_j [g(i) = j] + e_i

compares each level with the reference only inside strata where both occur: product mix
(which items a group buys) and promotions (which weeks it buys them in) are absorbed by
``alpha_s`` and cannot masquerade as a premium. ``premium_pct = 100 (exp(beta_j) - 1)``: how much
more (in percent) level ``j`` pays than the reference for the same item in the same week.

Everything the estimate needs is a per-(stratum, level) count ``n_sg`` and sum ``S_sg`` of
``y``: with ``n_s = sum_g n_sg``, ``ybar_s = sum_g S_sg / n_s`` and ``p_sg = n_sg / n_s``,

    A_jk = sum_s (n_sj [j = k] - n_sj n_sk / n_s),   b_j = sum_s (S_sj - n_sj ybar_s),   beta = A^-1 b.

These tables are the federated sufficient statistics (:mod:`audit.federated`).

Uncertainty is cluster-robust by customer (the same customer's lines share coupons and habits,
so rows are not independent): with ``x~_i = onehot(g_i) - p_s`` (non-reference columns) and
residual ``e_i = y_i - ybar_s - x~_i' beta``, the cluster scores are ``u_c = sum_{i in c} x~_i e_i``
and ``V = G/(G-1) A^-1 (sum_c u_c u_c') A^-1`` (CR1) with ``G`` clusters; the p-value is
two-sided from Student's t with ``G - 1`` degrees of freedom; the CI is
``100 (exp(beta +- t_{G-1} se) - 1)``. Without a customer column each row is its own cluster
(heteroskedasticity-robust HC1-like). Holm's step-down correction is applied across ALL
comparisons in the report (every attribute, level, slice and the renewal check): it controls
the family-wise error rate under any dependence, which suits a compliance finding better
than a false-discovery rate. A comparison is ``flagged`` when ``premium_pct > threshold_pct``
and the Holm-adjusted p-value is below ``alpha``. Comparisons with fewer than ``min_count``
rows of the level or of the reference in shared strata are suppressed and listed.

Renewal check (UK FCA PS21/5): returning customers vs first-time buyers of the same item in
the same window, the same estimator with attribute ``renewal``, levels ``returning`` and
reference ``first_time``. ``naive_premium_pct`` (ratio of geometric mean prices, no strata) is
reported beside each finding to show what the product mix alone would have suggested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from scipy import stats as sps

from audit.models import RuleResult, now_utc
from audit.stats import holm

ALL = "all"
RENEWAL = "renewal"
KEYS = ["slice", "item", "window", "level"]


class PricingSpec(BaseModel):
    """What to compare (column names of the transactions file) and the decision rule."""

    price: str = Field(description="Unit price paid, currency units, > 0.")
    item: str
    time: str = Field(description="Datetime column (binned by `window`) or a window id (window='raw').")
    groups: list[str] = Field(min_length=0)
    by: str | None = Field(None, description="Slice column (e.g. category): the audit is repeated per value.")
    references: dict[str, str] = Field(default_factory=dict, description="attribute -> reference level.")
    threshold_pct: float = 1.0
    alpha: float = Field(0.05, gt=0, lt=1)
    customer: str | None = Field(None, description="Customer column: clusters for the robust variance.")
    returning: str | None = Field(None, description="Boolean column, True = returning customer (renewal check).")
    window: Literal["week", "day", "raw"] = "week"
    min_count: int = Field(30, ge=1)
    ci_level: float = Field(0.95, gt=0, lt=1)

    def comparisons(self) -> list[tuple[str, str | None]]:
        """(attribute, slice column) pairs audited, in report order."""
        attrs = list(self.groups) + ([RENEWAL] if self.returning else [])
        out: list[tuple[str, str | None]] = [(a, None) for a in attrs]
        if self.by:
            out += [(a, self.by) for a in attrs]
        return out


class PricingFinding(BaseModel):
    """One level of one attribute against its reference, in one slice."""

    attribute: str
    group: str
    reference: str
    slice: str
    premium_pct: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_adjusted: float | None = Field(None, description="Holm-adjusted across all comparisons.")
    flagged: bool = False
    suppressed: bool = False
    naive_premium_pct: float | None = None
    n_rows: int = Field(0, description="Rows of the level in strata shared with the reference.")
    n_reference_rows: int = 0
    n_strata: int = Field(0, description="Strata (item x window) holding both level and reference.")
    n_clusters: int = 0


class PricingReport(BaseModel):
    kind: Literal["pricing"] = "pricing"
    created_at: str = Field(default_factory=now_utc)
    spec: PricingSpec
    n_rows: int
    n_dropped: int = Field(0, description="Rows without a positive price, item or time.")
    units: int = 1
    correction: str = "holm"
    findings: list[PricingFinding]
    rules: list[RuleResult] = Field(default_factory=list)


# ---------------------------------------------------------------- local preparation


@dataclass
class Prepared:
    """Codes of one unit's rows, computed once (never leaves the unit)."""

    y: np.ndarray
    n_dropped: int
    strata: dict[str | None, tuple[np.ndarray, pd.DataFrame]]  # slice col -> (codes, keys)
    levels: dict[str, tuple[np.ndarray, np.ndarray]]  # attribute -> (codes, labels); -1 = missing
    clusters: np.ndarray | None
    n_clusters: int = 0
    extra: dict = field(default_factory=dict)


def _labels(values: np.ndarray) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)


def _windows(col: pd.Series, window: str) -> pd.Series:
    if window == "raw" or not (pd.api.types.is_datetime64_any_dtype(col)):
        if window != "raw" and not pd.api.types.is_numeric_dtype(col):
            col = pd.to_datetime(col)
        else:
            return col
    days = col.to_numpy().astype("datetime64[D]").astype(np.int64)
    if window == "week":
        days = (days + 3) // 7 * 7 - 3  # Monday of the ISO week (1970-01-01 was a Thursday)
    return pd.Series(days.astype("datetime64[D]"), index=col.index)


def prepare(frame: pd.DataFrame, spec: PricingSpec) -> Prepared:
    """Validate columns, drop unusable rows, and factorize strata, levels and customers."""
    need = [spec.price, spec.item, spec.time, *spec.groups]
    need += [c for c in (spec.by, spec.customer, spec.returning) if c]
    missing = [c for c in dict.fromkeys(need) if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s) {missing}; the data has {list(frame.columns)}")
    price = pd.to_numeric(frame[spec.price], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(price) & (price > 0) & frame[spec.item].notna().to_numpy() & frame[spec.time].notna().to_numpy()
    n_dropped = int((~ok).sum())
    if n_dropped:
        frame = frame.loc[ok]
        price = price[ok]
    y = np.log(price)
    item_codes, item_uniques = pd.factorize(frame[spec.item])
    win_codes, win_uniques = pd.factorize(_windows(frame[spec.time], spec.window))
    base = item_codes.astype(np.int64) * max(len(win_uniques), 1) + win_codes
    strata: dict[str | None, tuple[np.ndarray, pd.DataFrame]] = {}
    for slice_col in dict.fromkeys([None, spec.by]):
        if slice_col is None:
            key, sl_codes, sl_uniques = base, np.zeros(len(base), np.int64), np.array([ALL], dtype=object)
        else:
            sl_codes, sl_uniques = pd.factorize(frame[slice_col], use_na_sentinel=False)
            key = sl_codes.astype(np.int64) * (len(item_uniques) * max(len(win_uniques), 1)) + base
        codes, uniq = pd.factorize(key)
        first = np.zeros(len(uniq), dtype=np.int64)
        first[codes[::-1]] = np.arange(len(codes))[::-1]
        keys = pd.DataFrame({
            "slice": _labels(np.asarray(sl_uniques, dtype=object)[sl_codes[first]]),
            "item": _labels(np.asarray(item_uniques)[item_codes[first]]),
            "window": _labels(np.asarray(win_uniques)[win_codes[first]]),
        })
        strata[slice_col] = (codes.astype(np.int64), keys)
    levels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for attr in spec.groups:
        codes, uniques = pd.factorize(frame[attr])
        levels[attr] = (codes.astype(np.int64), _labels(np.asarray(uniques)))
    if spec.returning:
        ret = frame[spec.returning]
        if not (pd.api.types.is_bool_dtype(ret) or set(pd.unique(ret.dropna())) <= {0, 1}):
            raise ValueError(f"--returning column {spec.returning!r} must be boolean (True = returning customer)")
        codes = np.where(ret.isna().to_numpy(), -1, ret.fillna(False).to_numpy().astype(np.int64))
        levels[RENEWAL] = (codes, np.array(["first_time", "returning"], dtype=object))
    clusters, n_clusters = None, 0
    if spec.customer:
        c, u = pd.factorize(frame[spec.customer], use_na_sentinel=False)
        clusters, n_clusters = c.astype(np.int64), len(u)
    return Prepared(y=y, n_dropped=n_dropped, strata=strata, levels=levels, clusters=clusters, n_clusters=n_clusters)


def comparison_key(attr: str, slice_col: str | None) -> str:
    return f"{attr}|{slice_col or ALL}"


def local_tables(prep: Prepared, spec: PricingSpec) -> dict[str, pd.DataFrame]:
    """Per comparison: rows (slice, item, window, level, n, sum_log_price) for non-empty cells."""
    out = {}
    for attr, slice_col in spec.comparisons():
        s_codes, keys = prep.strata[slice_col]
        g_codes, labels = prep.levels[attr]
        k = len(labels)
        ok = g_codes >= 0
        cell = s_codes[ok] * k + g_codes[ok]
        size = len(keys) * k
        n = np.bincount(cell, minlength=size)
        sy = np.bincount(cell, weights=prep.y[ok], minlength=size)
        nz = np.flatnonzero(n)
        t = keys.iloc[nz // k].reset_index(drop=True)
        t["level"] = labels[nz % k]
        t["n"] = n[nz].astype(np.int64)
        t["sy"] = sy[nz]
        out[comparison_key(attr, slice_col)] = t
    return out


def combine_tables(tables: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Sum the units' tables cell by cell (the server side of the federated audit)."""
    keys = list(dict.fromkeys(k for t in tables for k in t))
    out = {}
    for key in keys:
        parts = [t[key] for t in tables if key in t]
        frame = pd.concat(parts, ignore_index=True)
        out[key] = frame.groupby(KEYS, sort=True, as_index=False)[["n", "sy"]].sum()
    return out


# ---------------------------------------------------------------- fit (server side)


class SliceFit(BaseModel):
    """The fitted within-stratum regression of one attribute in one slice."""

    model_config = {"arbitrary_types_allowed": True}
    slice: str
    levels: list[str]
    reference: str
    included: list[int]  # level indices estimated (non-reference, sharing strata with reference)
    beta: list[float]  # per level, 0 for the reference and for levels not included
    a_inv: list[list[float]]  # inverse of A over `included`
    naive_log_gap: list[float]  # mean ln price of level minus reference (no strata)
    n_rows: list[int]
    n_ref_rows: list[int]
    n_strata: list[int]


@dataclass
class ComparisonFit:
    attribute: str
    slice_col: str | None
    slices: list[SliceFit]
    strata: pd.DataFrame  # slice, item, window, slice_idx, ybar, adj, p_<level>...


def _reference(attr: str, spec: PricingSpec, levels: list[str], totals: np.ndarray) -> str:
    if attr == RENEWAL:
        return "first_time"
    ref = spec.references.get(attr)
    if ref is None:
        return levels[int(np.argmax(totals))]
    if ref not in levels:
        raise ValueError(f"reference {attr}={ref} does not occur; levels of {attr!r} are {levels}")
    return ref


def fit(tables: dict[str, pd.DataFrame], spec: PricingSpec) -> dict[str, ComparisonFit]:
    """Estimate beta per comparison and slice from combined tables (see the module doc)."""
    out = {}
    for attr, slice_col in spec.comparisons():
        t = tables[comparison_key(attr, slice_col)]
        levels = sorted(t["level"].unique().tolist())
        if attr == RENEWAL:
            levels = [lv for lv in ("first_time", "returning")]
        lidx = {lv: i for i, lv in enumerate(levels)}
        k = len(levels)
        totals = np.bincount(t["level"].map(lidx).to_numpy(), weights=t["n"].to_numpy(), minlength=k)
        ref = _reference(attr, spec, levels, totals)
        r = lidx[ref]
        s_codes, s_uniq = pd.factorize(pd.MultiIndex.from_frame(t[["slice", "item", "window"]]))
        ns = len(s_uniq)
        g = t["level"].map(lidx).to_numpy()
        N = np.zeros((ns, k))
        SY = np.zeros((ns, k))
        np.add.at(N, (s_codes, g), t["n"].to_numpy())
        np.add.at(SY, (s_codes, g), t["sy"].to_numpy())
        strata = pd.DataFrame(list(s_uniq), columns=["slice", "item", "window"])
        n_s = N.sum(axis=1)
        ybar = SY.sum(axis=1) / n_s
        P = N / n_s[:, None]
        slice_codes, slice_names = pd.factorize(strata["slice"], sort=True)
        betas = np.zeros((len(slice_names), k))
        fits = []
        for si, sname in enumerate(slice_names):
            m = slice_codes == si
            Nm, SYm, ybm = N[m], SY[m], ybar[m]
            shared = (Nm > 0) & (Nm[:, [r]] > 0)
            n_rows = (Nm * shared).sum(axis=0)
            n_ref = np.array([Nm[shared[:, j], r].sum() for j in range(k)])
            n_strata = shared.sum(axis=0)
            inc = [j for j in range(k) if j != r and n_strata[j] > 0]
            beta = np.zeros(k)
            a_inv = np.zeros((0, 0))
            if inc:
                NJ = Nm[:, inc]
                A = np.diag(NJ.sum(axis=0)) - NJ.T @ (NJ / Nm.sum(axis=1)[:, None])
                b = SYm[:, inc].sum(axis=0) - NJ.T @ ybm
                a_inv = np.linalg.pinv(A)
                beta[inc] = a_inv @ b
            tot_n = Nm.sum(axis=0)
            mean_y = np.divide(SYm.sum(axis=0), tot_n, out=np.full(k, np.nan), where=tot_n > 0)
            betas[si] = beta
            fits.append(SliceFit(slice=str(sname), levels=levels, reference=ref, included=inc, beta=beta.tolist(),
                                 a_inv=a_inv.tolist(), naive_log_gap=(mean_y - mean_y[r]).tolist(),
                                 n_rows=n_rows.astype(int).tolist(), n_ref_rows=n_ref.astype(int).tolist(),
                                 n_strata=n_strata.astype(int).tolist()))
        strata["slice_idx"] = slice_codes
        strata["ybar"] = ybar
        strata["adj"] = (P * betas[slice_codes]).sum(axis=1)
        for j in range(k):
            strata[f"p{j}"] = P[:, j]
        out[comparison_key(attr, slice_col)] = ComparisonFit(attr, slice_col, fits, strata)
    return out


# ---------------------------------------------------------------- cluster scores (local)


def local_meat(prep: Prepared, spec: PricingSpec, fits: dict[str, ComparisonFit],
               level_labels: dict[str, list[str]] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per comparison: ``meat`` (slices x K x K, sum over this unit's clusters of u_c u_c')
    and ``clusters`` (per slice, clusters with at least one row). Needs the fitted strata."""
    out = {}
    for attr, slice_col in spec.comparisons():
        key = comparison_key(attr, slice_col)
        cf = fits[key]
        levels = cf.slices[0].levels if cf.slices else []
        k, n_sl = len(levels), len(cf.slices)
        s_codes, keys = prep.strata[slice_col]
        g_local, labels = prep.levels[attr]
        glob = np.array([levels.index(lv) if lv in levels else -1 for lv in labels] + [-1], dtype=np.int64)
        merged = keys.merge(cf.strata, on=["slice", "item", "window"], how="left")
        ok = g_local >= 0
        s = s_codes[ok]
        g = glob[g_local[ok]]
        y = prep.y[ok]
        sl = merged["slice_idx"].to_numpy()[s].astype(np.int64)
        beta = np.array([f.beta for f in cf.slices])
        P = merged[[f"p{j}" for j in range(k)]].to_numpy()
        e = y - merged["ybar"].to_numpy()[s] - (beta[sl, g] - merged["adj"].to_numpy()[s])
        if prep.clusters is not None:
            c = sl * prep.n_clusters + prep.clusters[ok]
            size = n_sl * prep.n_clusters
            u = np.empty((size, k))
            for j in range(k):
                u[:, j] = (np.bincount(c, weights=e * (g == j), minlength=size)
                           - np.bincount(c, weights=e * P[s, j], minlength=size))
            u = u.reshape(n_sl, prep.n_clusters, k)
            meat = np.einsum("sci,scj->sij", u, u)
            present = np.bincount(c, minlength=size).reshape(n_sl, prep.n_clusters) > 0
            clusters = present.sum(axis=1)
        else:
            xt = (g[:, None] == np.arange(k)[None, :]) - P[s]
            ue = xt * e[:, None]
            meat = np.zeros((n_sl, k, k))
            for i in range(k):
                for j in range(i, k):
                    meat[:, i, j] = meat[:, j, i] = np.bincount(sl, weights=ue[:, i] * ue[:, j], minlength=n_sl)
            clusters = np.bincount(sl, minlength=n_sl)
        out[key] = {"meat": meat, "clusters": clusters.astype(np.int64)}
    return out


def combine_meats(meats: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Sum the units' meat matrices and cluster counts (clusters assumed not to span units)."""
    out = {}
    for key in meats[0]:
        out[key] = {"meat": sum(m[key]["meat"] for m in meats), "clusters": sum(m[key]["clusters"] for m in meats)}
    return out


# ---------------------------------------------------------------- report


def _pct(x: float) -> float:
    return float(100 * np.expm1(x))


def build_report(fits: dict[str, ComparisonFit], meats: dict[str, dict[str, np.ndarray]], spec: PricingSpec,
                 n_rows: int, n_dropped: int = 0, units: int = 1) -> PricingReport:
    """Findings with cluster-robust CIs and Holm-adjusted p-values; PASS/FAIL rules."""
    findings: list[PricingFinding] = []
    for key, cf in fits.items():
        for si, f in enumerate(cf.slices):
            meat = meats[key]["meat"][si]
            G = int(meats[key]["clusters"][si])
            r = f.levels.index(f.reference)
            inc = f.included
            V = None
            if inc and G > 1:
                ai = np.asarray(f.a_inv)
                V = G / (G - 1) * ai @ meat[np.ix_(inc, inc)] @ ai
            for j, lv in enumerate(f.levels):
                if j == r:
                    continue
                base = dict(attribute=cf.attribute, group=lv, reference=f.reference, slice=f.slice,
                            n_rows=f.n_rows[j], n_reference_rows=f.n_ref_rows[j], n_strata=f.n_strata[j],
                            n_clusters=G)
                naive = f.naive_log_gap[j]
                small = f.n_rows[j] < spec.min_count or f.n_ref_rows[j] < spec.min_count
                if small or j not in inc or V is None:
                    findings.append(PricingFinding(**base, premium_pct=None, ci_low=None, ci_high=None,
                                                   p_value=None, suppressed=True))
                    continue
                ii = inc.index(j)
                b, se = f.beta[j], float(np.sqrt(max(V[ii, ii], 0.0)))
                q = float(sps.t.ppf(0.5 + spec.ci_level / 2, G - 1))
                p = float(2 * sps.t.sf(abs(b) / se, G - 1)) if se > 0 else 0.0
                findings.append(PricingFinding(**base, premium_pct=_pct(b), ci_low=_pct(b - q * se),
                                               ci_high=_pct(b + q * se), p_value=p,
                                               naive_premium_pct=None if np.isnan(naive) else _pct(naive)))
    adj = holm([f.p_value if f.p_value is not None else np.nan for f in findings])
    for f, pa in zip(findings, adj):
        if not np.isnan(pa):
            f.p_adjusted = float(pa)
            f.flagged = bool(f.premium_pct > spec.threshold_pct and pa < spec.alpha)
    rules = []
    for f in findings:
        if f.suppressed:
            continue
        rule = "renewal" if f.attribute == RENEWAL else "threshold-pct"
        rules.append(RuleResult(
            rule=rule, subject=f"{f.attribute}={f.group} vs {f.reference} [{f.slice}]", passed=not f.flagged,
            detail=(f"premium {f.premium_pct:+.2f}% (CI {f.ci_low:+.2f}..{f.ci_high:+.2f}), "
                    f"Holm p {f.p_adjusted:.3g}; threshold {spec.threshold_pct}%")))
    return PricingReport(spec=spec, n_rows=n_rows, n_dropped=n_dropped, units=units, findings=findings, rules=rules)


def pricing_audit(frame: pd.DataFrame, spec: PricingSpec) -> PricingReport:
    """Pooled pricing audit of one frame (same code path as the federated audit, one unit)."""
    prep = prepare(frame, spec)
    tables = combine_tables([local_tables(prep, spec)])
    fits = fit(tables, spec)
    meats = combine_meats([local_meat(prep, spec, fits)])
    return build_report(fits, meats, spec, n_rows=len(prep.y), n_dropped=prep.n_dropped)
