"""Pricing audit: do groups pay more than a reference group for the same item in the same window?

The math (prices in currency units; ``y = ln price``):

For one attribute with levels ``g = 0..K-1`` and reference ``r``, and one slice (all rows, or
one value of a ``--by`` column), strata ``s`` are (item, time window) cells, one ISO week by
default. The within-stratum (fixed-effects) regression

    y_i = alpha_{s(i)} + sum_{j != r} beta_j [g(i) = j] + e_i

compares each level with the reference only inside strata where both occur: product mix
(which items a group buys) and promotions (which weeks it buys them in) are absorbed by
``alpha_s`` and cannot masquerade as a premium. ``premium_pct = 100 (exp(beta_j) - 1)``: how much
more (in percent) level ``j`` pays than the reference for the same item in the same week.

Everything the estimate needs is a per-(stratum, level) count ``n_sg`` and sum ``S_sg`` of
``y``: with ``n_s = sum_g n_sg``, ``ybar_s = sum_g S_sg / n_s`` and ``p_sg = n_sg / n_s``,

    A_jk = sum_s (n_sj [j = k] - n_sj n_sk / n_s),   b_j = sum_s (S_sj - n_sj ybar_s),   beta = A^-1 b.

These tables are the federated sufficient statistics (:mod:`audit.federated`). Strata and
levels are integer-coded once (``pd.factorize`` of the columns, one int64 key per stratum) and
every table is a ``np.bincount``: the cost is linear in rows whatever the number of strata.

Uncertainty is cluster-robust by customer (the same customer's lines share coupons and habits,
so rows are not independent): with ``x~_i = onehot(g_i) - p_s`` (non-reference columns) and
residual ``e_i = y_i - ybar_s - x~_i' beta``, the cluster scores are ``u_c = sum_{i in c} x~_i e_i``
and ``V = q A^-1 (sum_c u_c u_c') A^-1`` with the small-sample factor

    q = G / (G - 1) * (N - 1) / (N - K - S)

(``G`` clusters, ``N`` rows, ``K`` estimated premiums, ``S`` absorbed strata of the slice), as
Stata's ``areg`` (and ``reghdfe``, the strata not being nested in customers) count the absorbed
parameters. Without a customer column each row is its own cluster and ``q = N / (N - K - S)``,
exactly HC1 of the regression with explicit stratum dummies (tests: statsmodels). Without the
``S`` term the interval was too narrow by up to sqrt 2 when strata hold two rows. The p-value is
two-sided from Student's t with ``G - 1`` degrees of freedom; the CI is
``100 (exp(beta +- t_{G-1} se) - 1)``.

Holm's step-down correction is applied across ALL comparisons in the report (every attribute,
level, slice, slope and the renewal check). ``flag_rule``:

* ``significant`` (default): ``flagged = premium_pct > threshold and Holm p (beta != 0) < alpha``;
* ``above-threshold``: one-sided test of ``H0: premium <= threshold`` at the threshold,
  ``t = (beta - ln(1 + threshold/100)) / se``, ``flagged = Holm p < alpha``.

Verdict per comparison (the policy's ``premium_pct`` rule gives the threshold unless
``threshold_pct`` is set): FAIL when flagged; else PASS when the interval lies within the
allowed range; else INCONCLUSIVE; NOT TESTED when suppressed (fewer than ``min_count`` rows or
``min_clusters`` customers of the level or of the reference in shared strata). When nothing
could be compared, the report's verdict is NOT TESTED with the reason.

Missing attribute values form their own level ``(missing)``, counted in ``missing``.
Continuous attributes: quantile bins (``continuous``; edges stated in the report) or a slope
(``slopes``): ``y_i = alpha_s + gamma x_i + e_i`` within strata, ``gamma = sum_s (Sxy_s - Sx_s Sy_s /
n_s) / sum_s (Sxx_s - Sx_s^2 / n_s)``, premium per unit of ``x`` = ``100 (exp(gamma) - 1)``, with the
same cluster-robust variance (``u_c = sum (x_i - xbar_s) e_i``, ``K = 1``).

Renewal check (UK FCA PS21/5): returning customers vs first-time buyers of the same item in
the same window, attribute ``renewal``, levels ``returning`` and reference ``first_time``.
``naive_premium_pct`` (ratio of geometric mean prices, no strata) is reported beside each finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator
from scipy import stats as sps

from audit.models import Overall, RuleResult, now_utc, overall
from audit.policy import Policy, Rule, decide, load_policy
from audit.stats import holm

ALL = "all"
SLOPE_PREFIX = "slope:"
RENEWAL = "renewal"
MISSING = "(missing)"
SLOPE = "(per unit)"
KEYS = ["slice", "item", "window", "level"]


class PricingSpec(BaseModel):
    """What to compare (column names of the transactions file) and the decision rule."""

    price: str = Field(description="Unit price paid, currency units, > 0.")
    item: str
    time: str = Field(description="Datetime column (binned by `window`) or a window id (window='raw').")
    groups: list[str] = Field(min_length=0)
    by: list[str] = Field(default_factory=list, description="Slice columns (e.g. category): the audit is "
                                                            "repeated per value of each.")
    references: dict[str, str] = Field(default_factory=dict, description="attribute -> reference level.")
    threshold_pct: float | None = Field(None, description="Flag threshold in percent; None: the policy's "
                                                          "premium_pct rule (1% in the default policy).")
    flag_rule: Literal["significant", "above-threshold"] = "significant"
    alpha: float = Field(0.05, gt=0, lt=1)
    customer: str | None = Field(None, description="Customer column: clusters for the robust variance.")
    returning: str | None = Field(None, description="Boolean column, True = returning customer (renewal check).")
    window: Literal["week", "day", "raw"] = "week"
    min_count: int = Field(30, ge=1)
    min_clusters: int = Field(1, ge=1, description="Suppress comparisons with fewer customers of the level or "
                                                   "the reference in shared strata.")
    continuous: dict[str, int | list[float]] = Field(
        default_factory=dict, description="group column -> number of quantile bins, or explicit bin edges.")
    slopes: list[str] = Field(default_factory=list, description="Numeric columns audited as a premium per unit.")
    ci_level: float = Field(0.95, gt=0, lt=1)
    policy: Policy = Field(default_factory=load_policy)

    @field_validator("by", mode="before")
    @classmethod
    def _by_list(cls, v: object) -> object:
        if v is None:
            return []
        return [v] if isinstance(v, str) else v

    @field_validator("continuous")
    @classmethod
    def _bins(cls, v: dict) -> dict:
        for k, b in v.items():
            if isinstance(b, int) and b < 2:
                raise ValueError(f"continuous {k!r}: use at least 2 quantile bins")
            if isinstance(b, list) and (len(b) < 2 or any(x >= y for x, y in zip(b, b[1:]))):
                raise ValueError(f"continuous {k!r}: bin edges must increase (at least two)")
        return v

    def comparisons(self) -> list[tuple[str, str | None]]:
        """(attribute, slice column) pairs audited, in report order."""
        attrs = list(self.groups) + ([RENEWAL] if self.returning else []) + [SLOPE_PREFIX + s for s in self.slopes]
        out: list[tuple[str, str | None]] = [(a, None) for a in attrs]
        for b in self.by:
            out += [(a, b) for a in attrs]
        return out

    def premium_rule(self, attribute: str) -> Rule:
        """The rule deciding this attribute's premiums: the policy's first premium_pct rule that
        applies (its max replaced by ``threshold_pct`` when set), else '<= 1%'."""
        rule = next((r for r in self.policy.for_audit("pricing") if r.applies_to(attribute)), None)
        if rule is None:
            rule = Rule(name="premium", metric="premium_pct", max=1.0, source="fedseg default threshold")
        if self.threshold_pct is not None:
            rule = rule.model_copy(update={"max": self.threshold_pct, "min": None,
                                           "source": "--threshold-pct (given on the command line)"})
        return rule


class PricingFinding(BaseModel):
    """One level of one attribute against its reference (or one slope), in one slice."""

    attribute: str
    group: str
    reference: str
    slice: str
    slice_column: str | None = None
    kind: Literal["level", "slope"] = "level"
    premium_pct: float | None = Field(None, description="Percent; for a slope: per unit of the attribute.")
    ci_low: float | None
    ci_high: float | None
    se_log: float | None = Field(None, description="Standard error of beta (log-price scale).")
    p_value: float | None
    p_adjusted: float | None = Field(None, description="Holm-adjusted across all comparisons.")
    threshold_pct: float | None = None
    flagged: bool = False
    suppressed: bool = False
    suppressed_reason: str = ""
    naive_premium_pct: float | None = None
    n_rows: int = Field(0, description="Rows of the level in strata shared with the reference.")
    n_reference_rows: int = 0
    n_strata: int = Field(0, description="Strata (item x window) holding both level and reference.")
    n_clusters: int = Field(0, description="Clusters (customers, or rows) in the slice.")
    n_level_clusters: int = Field(0, description="Clusters with rows of the level in shared strata.")
    n_reference_clusters: int = Field(0, description="Clusters with reference rows in shared strata.")
    small_sample_factor: float | None = Field(None, description="q = G/(G-1) (N-1)/(N-K-S).")


class PricingReport(BaseModel):
    kind: Literal["pricing"] = "pricing"
    created_at: str = Field(default_factory=now_utc)
    spec: PricingSpec
    n_rows: int
    n_dropped: int = Field(0, description="Rows without a positive price, item or time.")
    missing: dict[str, int] = Field(default_factory=dict, description="Rows per attribute in the (missing) level.")
    binning: dict[str, str] = Field(default_factory=dict, description="Continuous attribute -> how it was binned.")
    units: int = 1
    correction: str = "holm"
    findings: list[PricingFinding]
    rules: list[RuleResult] = Field(default_factory=list)
    overall: Overall | None = None


# ---------------------------------------------------------------- local preparation


@dataclass
class Strata:
    """Integer-coded strata of one slicing (never leaves the unit)."""

    codes: np.ndarray  # per row: stratum id 0..n-1
    n: int
    slice_of: np.ndarray  # per stratum: slice index into slice_names
    slice_names: list[str]
    first: np.ndarray  # per stratum: index of its first row (to recover key values)
    slice_codes: np.ndarray  # per row: slice index


@dataclass
class Prepared:
    """Codes of one unit's rows, computed once (never leaves the unit)."""

    y: np.ndarray
    n_dropped: int
    item_codes: np.ndarray
    item_uniques: np.ndarray
    win_codes: np.ndarray
    win_uniques: np.ndarray
    strata: dict[str | None, Strata]
    levels: dict[str, tuple[np.ndarray, np.ndarray]]  # attribute -> (codes, labels); every row has a level
    clusters: np.ndarray | None
    n_clusters: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    slopes: dict[str, np.ndarray] = field(default_factory=dict)
    binning: dict[str, str] = field(default_factory=dict)

    def keys(self, slice_col: str | None) -> pd.DataFrame:
        """Per stratum its (slice, item, window) labels: what units and server align on."""
        st = self.strata[slice_col]
        f = st.first
        return pd.DataFrame({
            "slice": np.asarray(st.slice_names, dtype=object)[st.slice_of].astype(str),
            "item": np.asarray(self.item_uniques)[self.item_codes[f]].astype(str),
            "window": np.asarray(self.win_uniques)[self.win_codes[f]].astype(str),
        })


def _windows(col: pd.Series, window: str, name: str) -> pd.Series:
    """Time values -> window ids (ISO week Monday, or day); raw: as they are."""
    if window == "raw":
        return col
    if pd.api.types.is_datetime64_any_dtype(col):
        dt = col
    elif pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise ValueError(f"time column {name!r} holds numbers, not dates; if they are window ids (week numbers), "
                         f"use --window raw; for --window {window} give dates")
    else:
        dt = pd.to_datetime(col, errors="coerce", utc=True, format="mixed")
        bad = dt.isna() & col.notna()
        if bad.any():
            example = col[bad].iloc[0]
            raise ValueError(f"time column {name!r} holds text that is not a date (e.g. {example!r}); if these are "
                             f"window ids, use --window raw; for --window {window} give dates")
    if getattr(dt.dt, "tz", None) is not None:
        dt = dt.dt.tz_convert("UTC").dt.tz_localize(None)
    days = dt.to_numpy().astype("datetime64[D]").astype(np.int64)
    if window == "week":
        days = (days + 3) // 7 * 7 - 3  # Monday of the ISO week (1970-01-01 was a Thursday)
    return pd.Series(days.astype("datetime64[D]"), index=col.index)


def _codes_with_missing(values: pd.Series) -> tuple[np.ndarray, np.ndarray, int]:
    """Factorize; missing values become the level MISSING (last). Labels are sorted strings (the
    order the federated server uses), codes int64; one gather remaps the codes."""
    codes = None
    if isinstance(values.dtype, pd.CategoricalDtype):  # the codes are there already
        codes, uniques = values.cat.codes.to_numpy(), values.cat.categories
        if (np.bincount(codes[codes >= 0], minlength=len(uniques)) == 0).any():
            codes = None  # unused categories are not levels: factorize what occurs
    if codes is None:
        codes, uniques = pd.factorize(values)
    labels = np.asarray(uniques, dtype=object).astype(str)
    order = np.argsort(labels, kind="stable")
    n_miss = int(np.count_nonzero(codes < 0))
    remap = np.empty(len(order) + 1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    remap[-1] = len(order)  # code -1 (missing) -> the MISSING level after the labels
    codes = remap[codes]
    labels = labels[order].astype(object)
    if n_miss:
        labels = np.append(labels, MISSING).astype(object)
    return codes, labels, n_miss


def _dense_codes(key: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes 0..u-1 of non-negative int64 keys (in key order) and u. A direct table when the key
    range is at most a few times the rows (no hashing: O(rows + range)), else ``pd.factorize``."""
    if key.size == 0:
        return key.astype(np.int64), 0
    top = int(key.max()) + 1
    if top <= 4 * key.size + 1024:
        seen = np.zeros(top, dtype=bool)
        seen[key] = True
        ids = np.cumsum(seen, dtype=np.int64) - 1
        return ids[key], int(ids[-1]) + 1
    codes, uniq = pd.factorize(key)
    return codes.astype(np.int64), len(uniq)


def _fmt_edge(x: float) -> str:
    return f"{x:.6g}"


def _bin_labels(edges: np.ndarray | list[float]) -> list[str]:
    labels = [f"[{_fmt_edge(a)}, {_fmt_edge(b)})" for a, b in zip(edges[:-1], edges[1:])]
    labels[-1] = labels[-1][:-1] + "]"
    return labels


def _given_edges_statement(edges: list[float]) -> str:
    labels = _bin_labels(edges)
    return f"{len(labels)} bins at given edges: {', '.join(labels)}"


def _binned(values: pd.Series, bins: int | list[float], name: str) -> tuple[pd.Series, str]:
    x = pd.to_numeric(values, errors="coerce")
    if (x.isna() & values.notna()).any():
        raise ValueError(f"continuous attribute {name!r} must be numeric")
    if isinstance(bins, int):
        edges = np.unique(np.nanquantile(x.to_numpy(dtype=float), np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:
            raise ValueError(f"continuous attribute {name!r} has a single value; it cannot be binned")
    else:
        edges = np.asarray(bins, dtype=float)
    labels = _bin_labels(edges)
    inner = edges[1:-1]
    idx = np.searchsorted(inner, x.to_numpy(dtype=float), side="right")
    out_of_range = (x < edges[0]) | (x > edges[-1])
    lab = np.asarray(labels, dtype=object)[idx]
    lab = np.where(x.isna() | out_of_range, None, lab)
    if out_of_range.any():
        raise ValueError(f"continuous attribute {name!r}: {int(out_of_range.sum())} value(s) outside the bin edges "
                         f"[{_fmt_edge(edges[0])}, {_fmt_edge(edges[-1])}]")
    how = (f"{len(labels)} quantile bins" + (f" (asked for {bins}; tied quantiles merged)" if len(labels) < bins
                                              else "") if isinstance(bins, int) else "")
    statement = f"{how}: {', '.join(labels)}" if how else _given_edges_statement(list(bins))
    return pd.Series(pd.Categorical(lab, categories=labels), index=values.index), statement


def prepare(frame: pd.DataFrame, spec: PricingSpec) -> Prepared:
    """Validate columns, drop unusable rows, and integer-code strata, levels and customers."""
    need = [spec.price, spec.item, spec.time, *spec.groups, *spec.by, *spec.slopes]
    need += [c for c in (spec.customer, spec.returning) if c]
    missing = [c for c in dict.fromkeys(need) if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s) {missing}; the data has {list(frame.columns)}")
    for c in spec.continuous:
        if c not in spec.groups:
            raise ValueError(f"continuous attribute {c!r} is not one of the --group columns {spec.groups}")
    price = pd.to_numeric(frame[spec.price], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(price) & (price > 0) & frame[spec.item].notna().to_numpy() & frame[spec.time].notna().to_numpy()
    n_dropped = int((~ok).sum())
    if n_dropped:
        frame = frame.loc[ok]
        price = price[ok]
    y = np.log(price)
    item_codes, item_uniques = pd.factorize(frame[spec.item])
    win_codes, win_uniques = pd.factorize(_windows(frame[spec.time], spec.window, spec.time))
    n_items, n_win = max(len(item_uniques), 1), max(len(win_uniques), 1)
    base = item_codes.astype(np.int64) * n_win + win_codes
    strata: dict[str | None, Strata] = {}
    for slice_col in dict.fromkeys([None, *spec.by]):
        if slice_col is None:
            sl_codes, sl_names = np.zeros(len(base), np.int64), [ALL]
            key = base
        else:
            sl_codes, sl_labels, _ = _codes_with_missing(frame[slice_col])
            sl_names = [str(x) for x in sl_labels]
            key = sl_codes * (n_items * n_win) + base
        codes, n_strata = _dense_codes(key)
        first = np.empty(n_strata, dtype=np.int64)
        first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)
        strata[slice_col] = Strata(codes=codes, n=n_strata, slice_of=sl_codes[first],
                                   slice_names=sl_names, first=first, slice_codes=sl_codes)
    levels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    n_missing: dict[str, int] = {}
    binning: dict[str, str] = {}
    for attr in spec.groups:
        col = frame[attr]
        if attr in spec.continuous:
            col, binning[attr] = _binned(col, spec.continuous[attr], attr)
        codes, labels, nm = _codes_with_missing(col)
        levels[attr], n_missing[attr] = (codes, labels), nm
    if spec.returning:
        ret = frame[spec.returning]
        if not (pd.api.types.is_bool_dtype(ret) or set(pd.unique(ret.dropna())) <= {0, 1}):
            raise ValueError(f"--returning column {spec.returning!r} must be boolean (True = returning customer)")
        miss = ret.isna().to_numpy()
        codes = np.where(miss, 2, ret.fillna(False).to_numpy().astype(np.int64))
        labels = np.array(["first_time", "returning"] + ([MISSING] if miss.any() else []), dtype=object)
        levels[RENEWAL], n_missing[RENEWAL] = (codes, labels), int(miss.sum())
    slopes = {}
    for s in spec.slopes:
        x = pd.to_numeric(frame[s], errors="coerce")
        if (x.isna() & frame[s].notna()).any():
            raise ValueError(f"--slope column {s!r} must be numeric")
        slopes[s] = x.to_numpy(dtype=float)
        n_missing[s] = int(np.isnan(slopes[s]).sum())
    clusters, n_clusters = None, 0
    if spec.customer:
        c, u = pd.factorize(frame[spec.customer], use_na_sentinel=False)
        clusters, n_clusters = c.astype(np.int64), len(u)
    return Prepared(y=y, n_dropped=n_dropped, item_codes=item_codes.astype(np.int64), item_uniques=np.asarray(item_uniques),
                    win_codes=win_codes.astype(np.int64), win_uniques=np.asarray(win_uniques), strata=strata,
                    levels=levels, clusters=clusters, n_clusters=n_clusters, missing=n_missing, slopes=slopes,
                    binning=binning)


def comparison_key(attr: str, slice_col: str | None) -> str:
    return f"{attr}|{slice_col or ALL}"


@dataclass
class Coded:
    """One comparison's combined tables, dense over (stratum, level): the input of :func:`fit`."""

    N: np.ndarray  # (strata, K) row counts; slope: (strata, 1)
    SY: np.ndarray  # (strata, K) sums of ln price
    levels: list[str]
    slice_of: np.ndarray
    slice_names: list[str]
    keys: pd.DataFrame | None = None  # (slice, item, window) labels per stratum (federated only)
    SX: np.ndarray | None = None  # slope: per-stratum sums of x, x^2, x*y
    SXX: np.ndarray | None = None
    SXY: np.ndarray | None = None


def _is_slope(attr: str, spec: PricingSpec | None = None) -> bool:
    return attr.startswith(SLOPE_PREFIX)


def attribute_name(attr: str) -> str:
    """The column audited by comparison attribute ``attr`` (slopes are keyed ``slope:COLUMN``)."""
    return attr.removeprefix(SLOPE_PREFIX)


def _local_coded(prep: Prepared, spec: PricingSpec, attr: str, slice_col: str | None) -> Coded:
    st = prep.strata[slice_col]
    if _is_slope(attr, spec):
        x = prep.slopes[attribute_name(attr)]
        ok = ~np.isnan(x)
        s, yy, xx = st.codes[ok], prep.y[ok], x[ok]
        bc = lambda w=None: np.bincount(s, weights=w, minlength=st.n)  # noqa: E731
        return Coded(N=bc()[:, None].astype(float), SY=bc(yy)[:, None], levels=[SLOPE], slice_of=st.slice_of,
                     slice_names=st.slice_names, SX=bc(xx), SXX=bc(xx * xx), SXY=bc(xx * yy))
    g, labels = prep.levels[attr]
    k = len(labels)
    cell = st.codes * k + g
    N = np.bincount(cell, minlength=st.n * k).reshape(st.n, k).astype(float)
    SY = np.bincount(cell, weights=prep.y, minlength=st.n * k).reshape(st.n, k)
    return Coded(N=N, SY=SY, levels=[str(x) for x in labels], slice_of=st.slice_of, slice_names=st.slice_names)


def local_tables(prep: Prepared, spec: PricingSpec) -> dict[str, pd.DataFrame]:
    """Per comparison: rows (slice, item, window, level, n, sy[, sx, sxx, sxy]) for non-empty cells.
    What a unit sends in a federated audit (labels as text so units align)."""
    out = {}
    keys_cache: dict[str | None, pd.DataFrame] = {}
    for attr, slice_col in spec.comparisons():
        c = _local_coded(prep, spec, attr, slice_col)
        if slice_col not in keys_cache:
            keys_cache[slice_col] = prep.keys(slice_col)
        keys = keys_cache[slice_col]
        s, j = np.nonzero(c.N)
        t = keys.iloc[s].reset_index(drop=True)
        t["level"] = np.asarray(c.levels, dtype=object)[j]
        t["n"] = c.N[s, j].astype(np.int64)
        t["sy"] = c.SY[s, j]
        if c.SX is not None:
            t["sx"], t["sxx"], t["sxy"] = c.SX[s], c.SXX[s], c.SXY[s]
        out[comparison_key(attr, slice_col)] = t
    return out


def combine_tables(tables: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Sum the units' tables cell by cell (the server side of the federated audit)."""
    keys = list(dict.fromkeys(k for t in tables for k in t))
    out = {}
    for key in keys:
        parts = [t[key] for t in tables if key in t]
        frame = pd.concat(parts, ignore_index=True)
        cols = [c for c in ("n", "sy", "sx", "sxx", "sxy") if c in frame and frame[c].notna().any()]
        out[key] = frame.groupby(KEYS, sort=True, as_index=False)[cols].sum()
    return out


def _sorted_labels(labels: list[str]) -> list[str]:
    """Sorted, with (missing) last: the same order as the pooled audit's codes."""
    return sorted(x for x in labels if x != MISSING) + ([MISSING] if MISSING in labels else [])


def _coded_from_table(t: pd.DataFrame, attr: str, spec: PricingSpec) -> Coded:
    """Dense (stratum, level) arrays from a combined text-keyed table (integer codes per column)."""
    parts = [pd.factorize(t[c]) for c in ("slice", "item", "window")]
    sizes = [max(len(u), 1) for _, u in parts]
    key = (parts[0][0].astype(np.int64) * sizes[1] + parts[1][0]) * sizes[2] + parts[2][0]
    s_codes, uniq = pd.factorize(key)
    ns = len(uniq)
    first = np.empty(ns, dtype=np.int64)
    first[s_codes[::-1]] = np.arange(len(s_codes) - 1, -1, -1)
    keys = t[["slice", "item", "window"]].iloc[first].reset_index(drop=True)
    slice_names = _sorted_labels(keys["slice"].unique().tolist())
    slice_of = pd.Categorical(keys["slice"], categories=slice_names).codes.astype(np.int64)
    if _is_slope(attr, spec):
        bc = lambda w: np.bincount(s_codes, weights=t[w].to_numpy(dtype=float), minlength=ns)  # noqa: E731
        return Coded(N=bc("n")[:, None], SY=bc("sy")[:, None], levels=[SLOPE], slice_of=slice_of,
                     slice_names=slice_names, keys=keys, SX=bc("sx"), SXX=bc("sxx"), SXY=bc("sxy"))
    labels = t["level"].astype(str)
    levels = _sorted_labels(labels.unique().tolist())
    if attr == RENEWAL:
        levels = ["first_time", "returning"] + ([MISSING] if MISSING in levels else [])
    g = pd.Categorical(labels, categories=levels).codes.astype(np.int64)
    k = len(levels)
    cell = s_codes * k + g
    N = np.bincount(cell, weights=t["n"].to_numpy(dtype=float), minlength=ns * k).reshape(ns, k)
    SY = np.bincount(cell, weights=t["sy"].to_numpy(dtype=float), minlength=ns * k).reshape(ns, k)
    return Coded(N=N, SY=SY, levels=levels, slice_of=slice_of, slice_names=slice_names, keys=keys)


# ---------------------------------------------------------------- fit (server side)


class SliceFit(BaseModel):
    """The fitted within-stratum regression of one attribute in one slice."""

    slice: str
    levels: list[str]
    reference: str
    included: list[int]  # level indices estimated (non-reference, sharing strata with reference)
    beta: list[float]  # per level, 0 for the reference and for levels not included; slope: [gamma]
    a_inv: list[list[float]]  # inverse of A over `included` (slope: 1 / sum_s Sxx~)
    naive_log_gap: list[float]  # mean ln price of level minus reference (no strata)
    n_rows: list[int]
    n_ref_rows: list[int]
    n_strata: list[int]
    rows_total: int = 0  # N: rows of the slice in this regression
    strata_total: int = 0  # S: strata of the slice (absorbed parameters)
    level_totals: list[int] = Field(default_factory=list)
    kind: Literal["level", "slope"] = "level"


@dataclass
class ComparisonFit:
    attribute: str
    slice_col: str | None
    slices: list[SliceFit]
    # per stratum: slice_idx, ybar, adj, p<level>... (slope: xbar, n); a frame with slice, item, window
    # labels in the federated audit, plain arrays in the pooled one
    strata: pd.DataFrame | dict[str, np.ndarray]
    local: bool = False  # strata ids are the pooled frame's own (no key merge needed)


def _reference(attr: str, spec: PricingSpec, levels: list[str], totals: np.ndarray) -> str:
    if attr == RENEWAL:
        return "first_time"
    ref = spec.references.get(attr)
    if ref is None:
        cand = [i for i, lv in enumerate(levels) if lv != MISSING] or list(range(len(levels)))
        return levels[max(cand, key=lambda i: totals[i])]
    if ref not in levels:
        raise ValueError(f"reference {attr}={ref} does not occur; levels of {attr!r} are {levels}")
    return ref


def _fit_levels(attr: str, c: Coded, spec: PricingSpec) -> tuple[list[SliceFit], dict[str, np.ndarray]]:
    levels, k = c.levels, len(c.levels)
    cols = np.ascontiguousarray(c.N.T)  # (K, strata): per-level work on contiguous rows
    ycols = np.ascontiguousarray(c.SY.T)
    ref = _reference(attr, spec, levels, cols.sum(axis=1))
    r = levels.index(ref)
    n_s = cols.sum(axis=0)
    safe = np.where(n_s > 0, n_s, 1)
    ybar = np.where(n_s > 0, ycols.sum(axis=0) / safe, 0.0)
    P = cols / safe
    betas = np.zeros((len(c.slice_names), k))
    fits = []
    single = len(c.slice_names) == 1
    if not single:
        order = np.argsort(c.slice_of, kind="stable")
        bounds = np.searchsorted(c.slice_of[order], np.arange(len(c.slice_names) + 1))
    for si, sname in enumerate(c.slice_names):
        m = slice(None) if single else order[bounds[si]:bounds[si + 1]]
        Nm, SYm, ybm, nsm = cols[:, m], ycols[:, m], ybar[m], n_s[m]
        has_ref = Nm[r] > 0
        n_rows, n_ref, n_strata = np.zeros(k), np.zeros(k), np.zeros(k, dtype=np.int64)
        for j in range(k):
            shared = (Nm[j] > 0) & has_ref
            n_strata[j] = np.count_nonzero(shared)
            n_rows[j] = np.add.reduce(Nm[j], where=shared)  # no float copy of the mask
            n_ref[j] = np.add.reduce(Nm[r], where=shared)
        inc = [j for j in range(k) if j != r and n_strata[j] > 0]
        beta = np.zeros(k)
        a_inv = np.zeros((0, 0))
        if inc:
            NJ = Nm[inc]  # (|inc|, strata)
            A = np.diag(NJ.sum(axis=1)) - (NJ / np.where(nsm > 0, nsm, 1)) @ NJ.T
            b = SYm[inc].sum(axis=1) - NJ @ ybm
            a_inv = np.linalg.pinv(A)
            beta[inc] = a_inv @ b
        tot_n = Nm.sum(axis=1)
        mean_y = np.divide(SYm.sum(axis=1), tot_n, out=np.full(k, np.nan), where=tot_n > 0)
        betas[si] = beta
        fits.append(SliceFit(slice=str(sname), levels=levels, reference=ref, included=inc, beta=beta.tolist(),
                             a_inv=a_inv.tolist(), naive_log_gap=(mean_y - mean_y[r]).tolist(),
                             n_rows=n_rows.astype(int).tolist(), n_ref_rows=n_ref.astype(int).tolist(),
                             n_strata=n_strata.astype(int).tolist(), rows_total=int(round(float(tot_n.sum()))),
                             strata_total=int(np.count_nonzero(nsm > 0)), level_totals=tot_n.astype(int).tolist()))
    adj = betas[0] @ P if single else np.einsum("ks,sk->s", P, betas[c.slice_of])
    return fits, {"slice_idx": c.slice_of, "ybar": ybar, "adj": adj, **{f"p{j}": P[j] for j in range(k)}}


def _fit_slope(c: Coded) -> tuple[list[SliceFit], dict[str, np.ndarray]]:
    n = c.N[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        nn = np.where(n > 0, n, 1)
        sxx = c.SXX - c.SX ** 2 / nn  # within-stratum sum of squares of x
        sxy = c.SXY - c.SX * c.SY[:, 0] / nn
        ybar, xbar = c.SY[:, 0] / nn, c.SX / nn
    D = np.bincount(c.slice_of, weights=sxx, minlength=len(c.slice_names))
    Cxy = np.bincount(c.slice_of, weights=sxy, minlength=len(c.slice_names))
    rows = np.bincount(c.slice_of, weights=n, minlength=len(c.slice_names))
    strata_n = np.bincount(c.slice_of, weights=(n > 0), minlength=len(c.slice_names))
    informative = np.bincount(c.slice_of, weights=(n > 1) * n, minlength=len(c.slice_names))
    inf_strata = np.bincount(c.slice_of, weights=(n > 1), minlength=len(c.slice_names))
    fits = []
    gammas = np.zeros(len(c.slice_names))
    for si, sname in enumerate(c.slice_names):
        ok = D[si] > 1e-12 * max(rows[si], 1)
        gamma = float(Cxy[si] / D[si]) if ok else 0.0
        gammas[si] = gamma
        fits.append(SliceFit(slice=str(sname), levels=[SLOPE], reference="", included=[0] if ok else [],
                             beta=[gamma], a_inv=[[1.0 / D[si]]] if ok else [], naive_log_gap=[float("nan")],
                             n_rows=[int(informative[si])], n_ref_rows=[int(informative[si])],
                             n_strata=[int(inf_strata[si])], rows_total=int(rows[si]),
                             strata_total=int(strata_n[si]), level_totals=[int(rows[si])], kind="slope"))
    return fits, {"slice_idx": c.slice_of, "ybar": ybar, "xbar": xbar, "adj": np.zeros(len(n)), "n": n}


def _fit_coded(attr: str, slice_col: str | None, c: Coded, spec: PricingSpec, local: bool) -> ComparisonFit:
    fits, strata = _fit_slope(c) if c.SX is not None else _fit_levels(attr, c, spec)
    if c.keys is not None:  # federated: a frame with the stratum labels (what travels to the units)
        strata = pd.concat([c.keys, pd.DataFrame(strata)], axis=1)
    return ComparisonFit(attr, slice_col, fits, strata, local=local)


def fit(tables: dict[str, pd.DataFrame], spec: PricingSpec) -> dict[str, ComparisonFit]:
    """Estimate beta per comparison and slice from combined (text-keyed) tables; see the module doc."""
    return {comparison_key(a, s): _fit_coded(a, s, _coded_from_table(tables[comparison_key(a, s)], a, spec),
                                             spec, local=False)
            for a, s in spec.comparisons()}


# ---------------------------------------------------------------- cluster scores (local)


def _stratum_map(prep: Prepared, slice_col: str | None, cf: ComparisonFit) -> np.ndarray:
    """Unit stratum id -> row of ``cf.strata`` (identity in the pooled audit; -1 if the server lacks it)."""
    st = prep.strata[slice_col]
    if cf.local:
        return np.arange(st.n)
    server = cf.strata[["slice", "item", "window"]].astype(str).assign(_row=np.arange(len(cf.strata)))
    merged = prep.keys(slice_col).merge(server, on=["slice", "item", "window"], how="left")
    return merged["_row"].fillna(-1).to_numpy().astype(np.int64)


def local_meat(prep: Prepared, spec: PricingSpec, fits: dict[str, ComparisonFit],
               level_labels: dict[str, list[str]] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per comparison: ``meat`` (slices x K x K, sum over this unit's clusters of u_c u_c'),
    ``clusters`` (per slice, clusters with at least one row), ``level_clusters`` and
    ``reference_clusters`` (slices x K: clusters with rows of level j, resp. of the reference, in
    strata holding both). Needs the fitted strata. Per-stratum constants are gathered once per
    row; every sum over clusters is one ``np.bincount``."""
    out = {}
    for attr, slice_col in spec.comparisons():
        key = comparison_key(attr, slice_col)
        cf = fits[key]
        n_sl = len(cf.slices)
        st = prep.strata[slice_col]
        strata = cf.strata
        slope = bool(cf.slices) and cf.slices[0].kind == "slope"
        if slope:
            x = prep.slopes[attribute_name(attr)]
            ok = ~np.isnan(x)
            g_local, k, levels = np.zeros(len(x), np.int64), 1, [SLOPE]
        else:
            levels = cf.slices[0].levels if cf.slices else []
            k = len(levels)
            g_codes, labels = prep.levels[attr]
            glob = np.array([levels.index(lv) if lv in levels else -1 for lv in labels] + [-1], dtype=np.int64)
            g_local = glob[g_codes]
            ok = g_local >= 0
        if cf.local:
            row = st.codes
        else:
            row = _stratum_map(prep, slice_col, cf)[st.codes]
            ok = ok & (row >= 0)
        everything = bool(ok.all())
        sel = (lambda a: a) if everything else (lambda a: a[ok])  # noqa: E731
        row, g, y = sel(row), sel(g_local), sel(prep.y)
        col = lambda name: np.asarray(strata[name])  # noqa: E731 - DataFrame (federated) or dict (pooled)
        sl_s = col("slice_idx").astype(np.int64)
        sl = sl_s[row] if n_sl > 1 else np.zeros(len(row), np.int64)
        if prep.clusters is not None:
            n_cl = prep.n_clusters
            c = sl * n_cl + sel(prep.clusters) if n_sl > 1 else sel(prep.clusters)
        else:
            n_cl = 0
            c = None
        size = n_sl * n_cl
        beta = np.array([f.beta for f in cf.slices]) if cf.slices else np.zeros((0, k))
        if slope:
            xs = sel(x)
            xc = xs - col("xbar")[row]
            e = y - col("ybar")[row] - beta[sl, 0] * xc
            cols = {0: xc * e}
            inc = [0]
            r = -1
        else:
            r = levels.index(cf.slices[0].reference) if cf.slices else 0
            inc = sorted({j for f in cf.slices for j in f.included})
            const = col("ybar") - col("adj")
            e = y - const[row] - (beta[sl, g] if n_sl > 1 else beta[0][g])
            P = {j: col(f"p{j}") for j in range(k)}
            cols = {j: np.where(g == j, e, 0.0) - e * P[j][row] for j in inc}
        meat = np.zeros((n_sl, k, k))
        if c is not None:
            u = {j: np.bincount(c, weights=v, minlength=size).reshape(n_sl, n_cl) for j, v in cols.items()}
            for a in inc:
                for b in inc:
                    if b >= a:
                        meat[:, a, b] = meat[:, b, a] = np.einsum("sc,sc->s", u[a], u[b])
            clusters = (np.bincount(c, minlength=size).reshape(n_sl, n_cl) > 0).sum(axis=1)
        else:
            for a in inc:
                for b in inc:
                    if b >= a:
                        meat[:, a, b] = meat[:, b, a] = np.bincount(sl, weights=cols[a] * cols[b], minlength=n_sl)
            clusters = np.bincount(sl, minlength=n_sl)

        def distinct(mask: np.ndarray) -> np.ndarray:
            if c is None:  # rows are the clusters
                return np.bincount(sl, weights=mask, minlength=n_sl)
            hit = np.bincount(c, weights=mask, minlength=size).reshape(n_sl, n_cl) > 0
            return hit.sum(axis=1).astype(float)

        lev_cl = np.zeros((n_sl, k))
        ref_cl = np.zeros((n_sl, k))
        if slope:
            lev_cl[:, 0] = ref_cl[:, 0] = distinct(col("n")[row] > 1)  # strata with 2+ rows
        else:
            for j in inc:
                shared_s = (P[j] > 0) & (P[r] > 0)
                sh = shared_s[row]
                lev_cl[:, j] = distinct(sh & (g == j))
                ref_cl[:, j] = distinct(sh & (g == r))
        out[key] = {"meat": meat, "clusters": clusters.astype(np.int64), "level_clusters": lev_cl,
                    "reference_clusters": ref_cl}
    return out


def combine_meats(meats: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Sum the units' meat matrices and cluster counts (clusters assumed not to span units)."""
    return {key: {part: sum(m[key][part] for m in meats) for part in meats[0][key]} for key in meats[0]}


# ---------------------------------------------------------------- report


def _pct(x: float) -> float:
    return float(100 * np.expm1(x))


def _suppression(spec: PricingSpec, n_rows: int, n_ref: int, lev_cl: int, ref_cl: int, slope: bool) -> str:
    what = "rows in strata with 2+ rows" if slope else "rows"
    if n_rows < spec.min_count:
        return f"{n_rows} {what} of the level in shared strata < {spec.min_count} (--min-count)"
    if not slope and n_ref < spec.min_count:
        return f"{n_ref} reference rows in shared strata < {spec.min_count} (--min-count)"
    if lev_cl < spec.min_clusters:
        return f"{lev_cl} customers of the level in shared strata < {spec.min_clusters} (--min-clusters)"
    if not slope and ref_cl < spec.min_clusters:
        return f"{ref_cl} reference customers in shared strata < {spec.min_clusters} (--min-clusters)"
    return ""


def format_p(p: float | None) -> str:
    """A p-value for people: '< 1e-300' instead of 0 (a t tail below double precision)."""
    if p is None:
        return "–"
    return "< 1e-300" if p < 1e-300 else f"{p:.3g}"


def build_report(fits: dict[str, ComparisonFit], meats: dict[str, dict[str, np.ndarray]], spec: PricingSpec,
                 n_rows: int, n_dropped: int = 0, units: int = 1,
                 binning: dict[str, str] | None = None) -> PricingReport:
    """Findings with cluster-robust CIs and Holm-adjusted p-values; verdicts per the policy."""
    findings: list[PricingFinding] = []
    tests: list[tuple[float, float, int, bool]] = []  # (beta, se, df, one-sided?) per finding
    missing: dict[str, int] = {}
    for key, cf in fits.items():
        for si, f in enumerate(cf.slices):
            mt = meats[key]
            meat = mt["meat"][si]
            G = int(mt["clusters"][si])
            lev_cl = mt.get("level_clusters", np.zeros((len(cf.slices), len(f.levels))))[si]
            ref_cl = mt.get("reference_clusters", np.zeros((len(cf.slices), len(f.levels))))[si]
            slope = f.kind == "slope"
            if cf.slice_col is None and not slope and MISSING in f.levels:
                missing[cf.attribute] = f.level_totals[f.levels.index(MISSING)]
            r = 0 if slope else f.levels.index(f.reference)
            inc = f.included
            V, q = None, None
            dof = f.rows_total - len(inc) - f.strata_total
            if inc and G > 1 and dof > 0:
                q = G / (G - 1) * (f.rows_total - 1) / dof
                ai = np.asarray(f.a_inv)
                V = q * ai @ meat[np.ix_(inc, inc)] @ ai
            rule = spec.premium_rule(attribute_name(cf.attribute))
            thr = rule.max
            for j, lv in enumerate(f.levels):
                if j == r and not slope:
                    continue
                base = dict(attribute=attribute_name(cf.attribute), group=lv, reference=f.reference, slice=f.slice,
                            slice_column=cf.slice_col, kind=f.kind, n_rows=f.n_rows[j],
                            n_reference_rows=f.n_ref_rows[j], n_strata=f.n_strata[j], n_clusters=G,
                            n_level_clusters=int(lev_cl[j]), n_reference_clusters=int(ref_cl[j]),
                            threshold_pct=thr, small_sample_factor=q)
                naive = f.naive_log_gap[j]
                if j not in inc:
                    why = ("no stratum holds two or more rows with this attribute" if slope
                           else "no stratum holds both the level and the reference")
                else:
                    why = _suppression(spec, f.n_rows[j], f.n_ref_rows[j], int(lev_cl[j]), int(ref_cl[j]), slope)
                if not why and V is None:
                    why = "too few rows or clusters for a variance"
                if why:
                    findings.append(PricingFinding(**base, premium_pct=None, ci_low=None, ci_high=None, p_value=None,
                                                   suppressed=True, suppressed_reason=why))
                    tests.append((np.nan, np.nan, 0, False))
                    continue
                ii = inc.index(j)
                b, se = f.beta[j], float(np.sqrt(max(V[ii, ii], 0.0)))
                tq = float(sps.t.ppf(0.5 + spec.ci_level / 2, G - 1))
                p = float(2 * sps.t.sf(abs(b) / se, G - 1)) if se > 0 else 0.0
                findings.append(PricingFinding(**base, premium_pct=_pct(b), ci_low=_pct(b - tq * se),
                                               ci_high=_pct(b + tq * se), se_log=se, p_value=p,
                                               naive_premium_pct=None if np.isnan(naive) else _pct(naive)))
                tests.append((b, se, G - 1, True))
    raw = [f.p_value if f.p_value is not None else np.nan for f in findings]
    if spec.flag_rule == "above-threshold":
        one = []
        for f, (b, se, df, ok) in zip(findings, tests):
            if not ok or f.threshold_pct is None:
                one.append(np.nan)
                continue
            t0 = math.log1p(f.threshold_pct / 100)
            one.append(float(sps.t.sf((b - t0) / se, df)) if se > 0 else float(b <= t0))
        adj = holm(one)
    else:
        adj = holm(raw)
    for f, pa in zip(findings, adj):
        if not np.isnan(pa):
            f.p_adjusted = float(pa)
            if spec.flag_rule == "above-threshold":
                f.flagged = bool(pa < spec.alpha)
            else:
                f.flagged = bool(f.threshold_pct is not None and f.premium_pct > f.threshold_pct and pa < spec.alpha)
    rules = [_pricing_rule(f, spec) for f in findings]
    if not findings:
        ov = Overall(verdict="NOT TESTED", counts={}, reason="nothing could be compared (no attribute level "
                                                             "shares an item and window with its reference)")
    else:
        ov = overall(rules)
        if ov.verdict == "NOT TESTED":
            ov.reason = "every comparison was suppressed (see the findings for each reason)"
    binning = dict(binning or {})
    for k, v in spec.continuous.items():
        if isinstance(v, list):
            binning.setdefault(k, _given_edges_statement(v))
    return PricingReport(spec=spec, n_rows=n_rows, n_dropped=n_dropped, missing=missing, binning=binning,
                         units=units, findings=findings, rules=rules, overall=ov)


def _pricing_rule(f: PricingFinding, spec: PricingSpec) -> RuleResult:
    rule = spec.premium_rule(f.attribute)
    subject = (f"{f.attribute} {f.group} [{f.slice}]" if f.kind == "slope"
               else f"{f.attribute}={f.group} vs {f.reference} [{f.slice}]")
    base = dict(rule=rule.name, subject=subject, metric="premium_pct" + (" per unit" if f.kind == "slope" else ""),
                allowed=rule.allowed() + "%", source=rule.source)
    if f.suppressed:
        return RuleResult(**base, verdict="NOT TESTED", detail=f.suppressed_reason)
    test = ("one-sided test at the threshold" if spec.flag_rule == "above-threshold"
            else "premium above the threshold and different from 0")
    detail = (f"premium {f.premium_pct:+.3g}% [{f.ci_low:+.3g}, {f.ci_high:+.3g}], Holm p {format_p(f.p_adjusted)} "
              f"({test})")
    if f.flagged:
        return RuleResult(**base, verdict="FAIL", value=f.premium_pct, ci_low=f.ci_low, ci_high=f.ci_high,
                          detail=detail + f": flagged at alpha {spec.alpha}")
    verdict, why = decide(f.premium_pct, f.ci_low, f.ci_high, rule)
    if verdict == "FAIL":  # interval beyond the threshold but the family-wise test does not confirm it
        verdict, why = "INCONCLUSIVE", "interval lies beyond the threshold but the Holm-corrected test does not flag it"
    return RuleResult(**base, verdict=verdict, value=f.premium_pct, ci_low=f.ci_low, ci_high=f.ci_high,
                      detail=f"{detail}; {why}")


def pricing_audit(frame: pd.DataFrame, spec: PricingSpec) -> PricingReport:
    """Pooled pricing audit of one frame: the same math as the federated audit, on integer codes."""
    prep = prepare(frame, spec)
    fits = {comparison_key(a, s): _fit_coded(a, s, _local_coded(prep, spec, a, s), spec, local=True)
            for a, s in spec.comparisons()}
    meats = local_meat(prep, spec, fits)
    return build_report(fits, meats, spec, n_rows=len(prep.y), n_dropped=prep.n_dropped, binning=prep.binning)
