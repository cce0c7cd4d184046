"""Benchmark of the audits: pricing on 10M generated transactions (few and many strata), fairness with
bootstrap on 1M predictions.

Run: .venv/bin/python bench/bench_audit.py [--rows 10000000] [--strata-rows 2000000] [--predictions 1000000]
     [--bootstrap 1000] [--only many-strata]
Prints wall time, rows/s and peak RSS of each step, and the machine load (1-minute load average)
before each step: the machine is shared, so read the figures with the load beside them.

Many strata: the cost must not grow with the number of item x window strata (they are
integer-coded). ``--strata-rows`` rows over about ``rows / 2`` items x 52 weeks give about one
stratum per 1.5 rows (about 1M strata for 2M rows); 10M rows over 200k items x 52 weeks give
several million strata.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--predictions", type=int, default=1_000_000)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--strata-rows", type=int, default=2_000_000)
    ap.add_argument("--only", choices=["all", "many-strata"], default="all")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each many-strata audit (first = cold)")
    ap.add_argument("--keep-hugepages", action="store_true", help="leave numpy's huge-page advice on")
    args = ap.parse_args()
    import numpy as np
    import pandas as pd

    from audit import FairnessSpec, PricingSpec, fairness_audit, pricing_audit
    from simulations.transactions import generate_transactions

    from audit.stats import avoid_hugepage_stalls

    print(f"command: {' '.join(sys.argv)}")
    if not args.keep_hugepages:
        print(avoid_hugepage_stalls(), "(as the fedseg audit commands do)")
    print(f"load before: {os.getloadavg()}")
    many_strata(args)
    if args.only == "many-strata":
        return
    t = time.perf_counter()
    tx = generate_transactions(n_rows=args.rows, n_customers=max(args.rows // 20, 10), n_items=2000, n_weeks=52,
                               premium_pct=2.5, seed=0)
    print(f"generate {args.rows:,} transactions: {time.perf_counter() - t:.1f} s")
    spec = PricingSpec(price="price", item="item_id", time="week", window="raw", groups=["loyalty", "data_richness"],
                       references={"loyalty": "new"}, customer="customer_id", returning="returning")
    t = time.perf_counter()
    rep = pricing_audit(tx, spec)
    dt = time.perf_counter() - t
    f = next(x for x in rep.findings if x.group == "loyal" and x.slice == "all")
    print(f"pricing audit (loyalty, data_richness, renewal; item x week strata; cluster-robust by customer): "
          f"{dt:.1f} s, {args.rows / dt:,.0f} rows/s, peak RSS {rss_mb():,.0f} MB; "
          f"loyal premium {f.premium_pct:.3f}% [{f.ci_low:.3f}, {f.ci_high:.3f}] (planted 2.5), flagged={f.flagged}")
    import tempfile

    from audit.stats import read_table

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tx.parquet"
        tx.to_parquet(path)
        t = time.perf_counter()
        cols = ["price", "item_id", "week", "loyalty", "data_richness", "customer_id", "returning"]
        rep = pricing_audit(read_table(path, cols), spec)
        dt = time.perf_counter() - t
    print(f"read parquet + pricing audit (what `fedseg audit pricing` does): {dt:.1f} s, {args.rows / dt:,.0f} rows/s, "
          f"peak RSS {rss_mb():,.0f} MB")
    spec_by = spec.model_copy(update={"by": ["category"]})
    t = time.perf_counter()
    rep = pricing_audit(tx, spec_by)
    dt = time.perf_counter() - t
    print(f"pricing audit with --by category ({len(rep.findings)} comparisons): {dt:.1f} s, "
          f"{args.rows / dt:,.0f} rows/s, peak RSS {rss_mb():,.0f} MB")
    del tx, rep

    n = args.predictions
    rng = np.random.default_rng(0)
    g = rng.choice(["f", "m", "x"], n, p=[0.48, 0.48, 0.04])
    age = rng.choice(["18-29", "30-44", "45-64", "65+"], n)
    y = (rng.random(n) < 0.3).astype(np.int8)
    s = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    frame = pd.DataFrame({"gender": g, "age_band": age, "churned": y, "score": s})
    fspec = FairnessSpec(label="churned", score="score", groups=["gender", "age_band"], intersect=True,
                         bootstrap=args.bootstrap)
    t = time.perf_counter()
    fairness_audit(frame, fspec)
    dt = time.perf_counter() - t
    print(f"fairness audit of {n:,} predictions (gender, age_band, intersection; B={args.bootstrap}): {dt:.1f} s, "
          f"{n / dt:,.0f} rows/s, peak RSS {rss_mb():,.0f} MB")
    print(f"load after: {os.getloadavg()}")


def many_strata(args: argparse.Namespace) -> None:
    """Pricing audit where almost every row has its own item x week stratum."""
    from audit import PricingSpec, pricing_audit
    from simulations.transactions import generate_transactions

    spec = PricingSpec(price="price", item="item_id", time="week", window="raw", groups=["loyalty", "data_richness"],
                       references={"loyalty": "new"}, customer="customer_id", returning="returning")
    for rows, items in ((args.strata_rows, max(args.strata_rows // 52, 2)), (args.rows, 200_000)):
        tx = generate_transactions(n_rows=rows, n_customers=max(rows // 20, 10), n_items=items, n_weeks=52,
                                   premium_pct=2.5, seed=1)
        key = tx["item_id"].to_numpy().astype("int64") * 52 + tx["week"].to_numpy()
        import numpy as np

        strata = len(np.unique(key))
        del key
        for run in range(args.repeat):  # the first run in a process is what one CLI call sees (cold memory)
            print(f"load before (1 min): {os.getloadavg()[0]:.2f}")
            t = time.perf_counter()
            rep = pricing_audit(tx, spec)
            dt = time.perf_counter() - t
            f = next(x for x in rep.findings if x.group == "loyal" and x.slice == "all")
            print(f"pricing audit run {run + 1}, {rows:,} rows over {strata:,} item x week strata ({rows / strata:.2f} "
                  f"rows per stratum; loyalty, data_richness, renewal; CR1 by customer): {dt:.2f} s, "
                  f"{rows / dt:,.0f} rows/s, peak RSS {rss_mb():,.0f} MB; loyal premium {f.premium_pct:.3f}% "
                  f"[{f.ci_low:.3f}, {f.ci_high:.3f}] (planted 2.5)")
            del rep
        del tx


if __name__ == "__main__":
    main()
