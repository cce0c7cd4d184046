"""Fairness of the interventions themselves: treatment rates and offers by protected group, within
each segment, through the federated fairness audit (:mod:`audit.federated`, :mod:`audit.fairness`).

Each unit builds a table of its users (:func:`clients.effects.intervention_table`): the offer each
user got (the action for a contacted user; ``holdout``, ``suppressed`` or ``no action`` otherwise)
and, per protected attribute ``g``, the column ``within_g`` = "segment & group". The audit runs in
outcome mode on those columns (``outcome = offer``): every unit sends only counts per (segment &
group, offer) cell (noised and charged to its own ledger under DP, :func:`audit.federated.unit_fairness`),
the coordinator sums them (:func:`audit.fairness.combine_stats`), then splits the table by segment
and builds one audit report per segment and attribute (:func:`audit.fairness.report_from_stats`):
offer shares per group with bootstrap intervals, demographic parity per offer, the four-fifths
flag and the chi-square test of offer against group. Treatment rate per group = the share of its
users contacted with any action; the parity of treatment rates is reported beside it.

Groups differ across segments by design (a VIP offer goes to VIPs): parity is only meaningful
*within* a segment, where the rules treat everyone alike unless the contact policy, the value
ranking or the data make a difference. A segment is flagged when the lowest group's treatment rate
is below four fifths of the highest's **and** the gap is significant at 95% for the report as a
whole: Bonferroni over every pair of groups the report compares, in all segments and attributes
(``m`` pairs, critical ``z = Phi^-1(1 - 0.025 / m)``). A per-segment correction alone flags a gap
in about one report in four when four segments and two attributes are audited and nothing is
wrong (each of the eight families keeps its own 5%; 27% of null reports in the test). Under DP the noise is part of the test, so
noise alone does not raise flags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from pathlib import Path
from typing import Any

import numpy as np

NOT_TREATED = ("holdout", "suppressed", "no action")


def _split(stats: Any, segment: str) -> Any:
    """The rows of one segment of a combined outcome table, group labels without the segment."""
    from audit.fairness import AttributeStats

    prefix = f"{segment} & "
    rows = [i for i, g in enumerate(stats.groups) if g.startswith(prefix)]
    # noisy (DP) counts below 0 read as 0: post-processing (the chi-square test needs counts >= 0)
    cells = np.maximum(np.asarray(stats.cells, dtype=float)[rows], 0.0) if rows else np.zeros((0, 0))
    return AttributeStats(groups=[stats.groups[i].removeprefix(prefix) for i in rows], categories=stats.categories,
                          cells=cells.tolist())


def _treatment_rates(sub: Any, min_group_size: int, cell_var: float) -> dict[str, Any]:
    """Treatment rate per group (groups of at least ``min_group_size`` users), their parity, and the
    z statistic of the gap between the highest and the lowest (``pairs``: the G (G - 1) / 2 pairs
    the two extremes were picked from, for the report's Bonferroni correction): binomial variance
    ``r (1 - r) / n`` plus, under DP, the noise of the summed cells (``cell_var`` each; delta method:
    ``(R^2 k_T + T^2 k_R) v / n^4`` for ``T`` treated in ``k_T`` cells and ``R`` others in ``k_R``)."""
    cells = np.asarray(sub.cells, dtype=float)
    treated = np.array([c not in NOT_TREATED for c in sub.categories])
    rows = {}
    for i, g in enumerate(sub.groups):
        t, rest = float(cells[i, treated].sum()), float(cells[i, ~treated].sum())
        n = t + rest
        if n >= min_group_size:
            rate = min(max(t / n, 0.0), 1.0)
            noise = (rest ** 2 * treated.sum() + t ** 2 * (~treated).sum()) * cell_var / n ** 4
            rows[g] = (rate, rate * (1 - rate) / n + noise)
    out: dict[str, Any] = {"treatment_rate": {g: r for g, (r, _) in rows.items()},
                           "users": {g: float(cells[i].sum()) for i, g in enumerate(sub.groups)}}
    if len(rows) >= 2:
        (g_high, (high, v_high)), (g_low, (low, v_low)) = max(rows.items(), key=lambda kv: kv[1][0]), \
            min(rows.items(), key=lambda kv: kv[1][0])
        z = (high - low) / math.sqrt(v_high + v_low) if v_high + v_low > 0 else float("inf")
        out.update({"parity_difference": high - low, "parity_ratio": low / high if high > 0 else None,
                    "highest": g_high, "lowest": g_low, "z": z, "pairs": len(rows) * (len(rows) - 1) // 2,
                    "four_fifths_flag": bool(high > 0 and low / high < 0.8)})
    return out


def flag_gaps(report: dict[str, Any]) -> None:
    """Bonferroni over every pair of groups in ``report["segments"]``: set ``z_critical`` and
    ``significant`` on each attribute's figures and append the flags (module doc)."""
    figures = [(segment, attribute, f) for segment, by_attribute in report["segments"].items()
               for attribute, f in by_attribute.items() if "z" in f]
    pairs = sum(f["pairs"] for _, _, f in figures)
    report["pairs_compared"] = pairs
    if not pairs:
        return
    critical = float(NormalDist().inv_cdf(1 - 0.025 / pairs))
    for segment, attribute, f in figures:
        f["z_critical"], f["significant"] = critical, bool(f["z"] > critical)
        if f["four_fifths_flag"] and f["significant"]:
            report["flags"].append(f"{segment}: treatment rate by {attribute} {f['lowest']} "
                                   f"{f['treatment_rate'][f['lowest']]:.2f} vs {f['highest']} "
                                   f"{f['treatment_rate'][f['highest']]:.2f} (ratio {f['parity_ratio']:.2f}, "
                                   f"z {f['z']:.1f} > {critical:.2f})")


def intervention_fairness(tables: Sequence[Path], attributes: list[str], segments: list[str], bootstrap: int = 200,
                          min_group_size: int = 30, dp: Any = None, accounts: Sequence[Any] | None = None
                          ) -> dict[str, Any]:
    """The audit of the module doc over the units' intervention tables (one file per unit, each read
    only by its unit). Under ``dp`` (:class:`audit.federated.DPConfig`) every unit accepts the release
    with its account before any unit sends, then charges it and adds its own noise."""
    import uuid

    from audit.fairness import FairnessSpec, FairnessStats, combine_stats, report_from_stats
    from audit.federated import release_for, unit_fairness, unit_rows

    spec = FairnessSpec(outcome="offer", groups=[f"within_{a}" for a in attributes], bootstrap=bootstrap,
                        min_group_size=min_group_size)
    run_id = "interventions-" + uuid.uuid4().hex[:12]
    if dp is not None and accounts is not None:
        release = release_for(spec, dp)
        for path, account in zip(tables, accounts):  # every unit accepts before any unit releases
            account.accept(run_id, "audit", dp.delta, dp.epsilon, [release], n_users=unit_rows(path))
    combined = combine_stats([unit_fairness(p, spec, dp, a, run_id)
                              for p, a in zip(tables, accounts or [None] * len(tables))])
    cell_var = 0.0
    if dp is not None:
        from audit.federated import sigma_for

        cell_var = len(tables) * sigma_for(spec, dp) ** 2
    report: dict[str, Any] = {"attributes": attributes, "min_group_size": min_group_size, "segments": {},
                              "privacy": {"epsilon": dp.epsilon, "delta": dp.delta,
                                          "noise_sd_per_cell": math.sqrt(cell_var)} if dp is not None else None,
                              "flags": [], "rule": "flag: treatment-rate ratio below four fifths AND the gap "
                                                   "significant at 95% for the whole report (Bonferroni over "
                                                   "every pair of groups compared; binomial plus DP noise)"}
    for segment in segments:
        by_attribute = {}
        for attribute in attributes:
            sub = _split(combined.attributes[f"within_{attribute}"], segment)
            if not sub.groups:
                continue
            one = FairnessSpec(outcome="offer", groups=[attribute], bootstrap=bootstrap, min_group_size=min_group_size,
                               seed=spec.seed)
            audit = report_from_stats(FairnessStats(n_rows=combined.n_rows, attributes={attribute: sub}), one)
            figures = _treatment_rates(sub, min_group_size, cell_var)
            figures["offers"] = audit.attributes[attribute].model_dump(mode="json")
            by_attribute[attribute] = figures
        report["segments"][segment] = by_attribute
    flag_gaps(report)
    return report
