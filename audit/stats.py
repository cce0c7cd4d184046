"""Statistics shared by the audits: estimates with intervals, multiplicity correction, file reading.

Everything here is small and vectorised; the audits build on it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel


class Estimate(BaseModel):
    """A figure with its confidence interval (``None`` where undefined, e.g. TPR of a group
    with no positives)."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None


def _f(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def estimate(value: float, replicates: np.ndarray | None, level: float = 0.95) -> Estimate:
    """Point value with a percentile interval from bootstrap ``replicates`` (NaNs ignored)."""
    if replicates is None:
        return Estimate(value=_f(value))
    r = np.asarray(replicates, dtype=float)
    r = r[~np.isnan(r)]
    if math.isnan(float(value)) or r.size < 2:
        return Estimate(value=_f(value))
    a = (1 - level) / 2
    lo, hi = np.quantile(r, [a, 1 - a])
    return Estimate(value=_f(value), ci_low=_f(lo), ci_high=_f(hi))


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (controls the family-wise error rate, any dependence).

    ``p_adj[(i)] = max_{k <= i} min(1, (m - k + 1) p_(k))`` over the sorted p-values; NaNs stay NaN
    and do not count towards ``m``.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    adj = np.minimum(1.0, (m - np.arange(m)) * q[order])
    adj = np.maximum.accumulate(adj)
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def read_table(path: str | Path, columns: list[str] | None = None):  # noqa: ANN201 - pandas lazily
    """Read a .parquet or .csv file (only ``columns`` if given); ValueError with the reason."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        have = set(pq.read_schema(path).names)
        if columns:
            missing = [c for c in columns if c not in have]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; it has {sorted(have)}")
        return pd.read_parquet(path, columns=columns)
    if suffix == ".csv":
        frame = pd.read_csv(path)
        if columns:
            missing = [c for c in columns if c not in frame]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; it has {sorted(frame.columns)}")
            frame = frame[columns]
        return frame
    raise ValueError(f"{path}: unknown file type {suffix!r}; use .csv or .parquet")


def avoid_hugepage_stalls() -> str:
    """Turn off numpy's huge-page advice where it makes first-touch page faults stall.

    numpy madvises ``MADV_HUGEPAGE`` on large arrays. With transparent huge pages in ``madvise``
    defrag mode (``/sys/kernel/mm/transparent_hugepage/defrag`` = ``[madvise]``, as on the audit
    machine), every first touch of such an array compacts memory synchronously: allocating and
    filling 128 MB took 0.46 s there against 0.11 s without the advice, and a cold 2M-row pricing
    audit over 1.2M strata 3.3-4.8 s against 1.7-2.6 s (four alternating runs each, load 6). The audit commands call this once (numpy's own switch, also
    ``NUMPY_MADVISE_HUGEPAGE=0``); elsewhere it does nothing. Returns what it did.
    """
    try:
        defrag = Path("/sys/kernel/mm/transparent_hugepage/defrag").read_text()
    except OSError:
        return "huge pages: left as they are (no THP settings)"
    if "[madvise]" not in defrag:
        return "huge pages: left as they are"
    try:
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    if setter is None:
        return "huge pages: left as they are (numpy has no switch)"
    setter(False)
    return "huge pages: numpy's madvise turned off (THP defrag=madvise stalls first-touch faults)"
