"""Self-contained HTML reports (plots embedded as base64 PNG, matplotlib Agg) and terminal tables."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from audit.fairness import FairnessReport
from audit.pricing import PricingReport

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}.pass{color:#0a0;font-weight:bold}.fail{color:#c00;font-weight:bold}
.note{color:#666;font-size:.85em}"""


def _png(fig) -> str:  # noqa: ANN001
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _est(e, digits: int = 3) -> str:  # noqa: ANN001
    if e is None or e.value is None:
        return "–"
    ci = f" [{_fmt(e.ci_low, digits)}, {_fmt(e.ci_high, digits)}]" if e.ci_low is not None else ""
    return f"{e.value:.{digits}f}{ci}"


def _rules_html(rules) -> str:  # noqa: ANN001
    rows = "".join(
        f'<tr><td class="l">{html.escape(r.rule)}</td><td class="l">{html.escape(r.subject)}</td>'
        f'<td class="{"pass" if r.passed else "fail"}">{"PASS" if r.passed else "FAIL"}</td>'
        f'<td class="l">{html.escape(r.detail)}</td></tr>' for r in rules)
    return f'<table><tr><th class="l">rule</th><th class="l">subject</th><th>result</th><th class="l">detail</th></tr>{rows}</table>'


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def fairness_html(rep: FairnessReport) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = rep.spec
    body = [f"<p>{rep.n_rows} rows, {rep.units} unit(s), created {rep.created_at}. "
            f"{'Score ' + html.escape(str(s.score)) + ' >= ' + str(s.threshold) if s.mode == 'score' else 'Outcome ' + html.escape(str(s.outcome))}; "
            f"{s.bootstrap} bootstrap replicates (seed {s.seed}), {s.ci_level:.0%} intervals; groups under "
            f"{s.min_group_size} rows suppressed.</p>"]
    if rep.dp_noise_sigma:
        body.append(f"<p class='note'>Gaussian DP noise, sigma {rep.dp_noise_sigma:.3g} per count.</p>")
    body.append("<h2>Rules</h2>" + _rules_html(rep.rules))
    for name, a in rep.attributes.items():
        body.append(f"<h2>{html.escape(name)}</h2>")
        if s.mode == "score":
            keys = ["selection_rate", "tpr", "fpr", "precision", "auc", "calibration_error"]
            head = "".join(f"<th>{k}</th>" for k in keys)
            rows = "".join(f'<tr><td class="l">{html.escape(g)}</td><td>{gf.n}</td>'
                           + "".join(f"<td>{_est(getattr(gf, k))}</td>" for k in keys) + "</tr>"
                           for g, gf in a.groups.items())
            body.append(f'<table><tr><th class="l">group</th><th>n</th>{head}</tr>{rows}</table>')
            summ = ["demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
                    "equal_opportunity_difference"]
            body.append("<table>" + "".join(f'<tr><th class="l">{k}</th><td>{_est(getattr(a, k))}</td></tr>'
                                             for k in summ) + "</table>")
            if a.groups:
                fig, axes = plt.subplots(1, 3, figsize=(12, 0.5 + 0.45 * len(a.groups)))
                labels = list(a.groups)
                for ax, k in zip(axes, ("selection_rate", "tpr", "fpr")):
                    vals = [getattr(a.groups[g], k) for g in labels]
                    v = [x.value if x and x.value is not None else float("nan") for x in vals]
                    # with DP noise a point estimate can sit outside its bootstrap interval: no negative bars
                    lo = [max(x.value - x.ci_low, 0) if x and x.ci_low is not None and x.value is not None else 0
                          for x in vals]
                    hi = [max(x.ci_high - x.value, 0) if x and x.ci_high is not None and x.value is not None else 0
                          for x in vals]
                    ax.barh(labels, v, xerr=[lo, hi], color="#4a7ab7")
                    ax.set_title(k)
                    ax.set_xlim(0, 1)
                axes[0].axvline(0.8 * max([x for x in [a.groups[g].selection_rate.value for g in labels] if x] or [0]),
                                color="r", ls="--", lw=1, label="4/5 of highest")
                axes[0].legend(fontsize=7)
                body.append(_png(fig))
        else:
            cats = sorted({c for gf in a.groups.values() for c in (gf.shares or {})})
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cats)
            rows = "".join(f'<tr><td class="l">{html.escape(g)}</td><td>{gf.n}</td>'
                           + "".join(f"<td>{_est((gf.shares or {}).get(c))}</td>" for c in cats) + "</tr>"
                           for g, gf in a.groups.items())
            body.append(f'<table><tr><th class="l">group</th><th>n</th>{head}</tr>{rows}</table>')
            if a.independence:
                t = a.independence
                body.append(f"<p>Chi-square {t.chi2:.2f}, dof {t.dof}, p = {t.p_value:.3g}, Cramér's V {t.cramers_v:.3f}. "
                            f"<span class='note'>{html.escape(t.note)}</span></p>")
            if a.groups and cats:
                fig, ax = plt.subplots(figsize=(8, 0.6 + 0.4 * len(a.groups)))
                left = [0.0] * len(a.groups)
                for c in cats:
                    v = [((gf.shares or {}).get(c).value or 0.0) if (gf.shares or {}).get(c) else 0.0
                         for gf in a.groups.values()]
                    ax.barh(list(a.groups), v, left=left, label=c)
                    left = [x + y for x, y in zip(left, v)]
                ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
                ax.set_title("share of each outcome by group")
                body.append(_png(fig))
        if a.suppressed:
            body.append("<p class='note'>Suppressed (too small): "
                        + ", ".join(f"{html.escape(x.group)} (n={x.n})" for x in a.suppressed) + "</p>")
    return _page("Fairness audit", "".join(body))


def pricing_html(rep: PricingReport) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = rep.spec
    body = [f"<p>{rep.n_rows} transactions ({rep.n_dropped} dropped), {rep.units} unit(s), created {rep.created_at}. "
            f"Same item ({html.escape(s.item)}) in the same {s.window} window; cluster-robust by "
            f"{html.escape(s.customer or 'row')}; Holm correction across {len(rep.findings)} comparisons; "
            f"flag when premium &gt; {s.threshold_pct}% and adjusted p &lt; {s.alpha}.</p>",
            "<h2>Rules</h2>", _rules_html(rep.rules), "<h2>Findings</h2>"]
    cols = ["attribute", "group", "reference", "slice", "premium_pct", "ci_low", "ci_high", "p_value", "p_adjusted",
            "naive_premium_pct", "n_rows", "n_strata", "flagged"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = []
    for f in rep.findings:
        d = f.model_dump()
        cells = []
        for c in cols:
            v = d[c]
            if isinstance(v, float):
                v = f"{v:.3g}" if c.startswith("p_") else f"{v:+.2f}"
            elif v is None:
                v = "suppressed" if f.suppressed and c == "premium_pct" else "–"
            cls = ' class="fail"' if c == "flagged" and f.flagged else ""
            cells.append(f"<td{cls}>{html.escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body.append(f"<table><tr>{head}</tr>{''.join(rows)}</table>")
    shown = [f for f in rep.findings if not f.suppressed]
    if shown:
        fig, ax = plt.subplots(figsize=(8, 0.6 + 0.3 * len(shown)))
        labels = [f"{f.attribute}={f.group} vs {f.reference} [{f.slice}]" for f in shown]
        v = [f.premium_pct for f in shown]
        ax.errorbar(v, range(len(shown)), xerr=[[max(f.premium_pct - f.ci_low, 0) for f in shown],
                                                [max(f.ci_high - f.premium_pct, 0) for f in shown]], fmt="o",
                    color="#4a7ab7")
        for i, f in enumerate(shown):
            if f.flagged:
                ax.plot(f.premium_pct, i, "o", color="#c00")
        ax.set_yticks(range(len(shown)), labels, fontsize=7)
        ax.axvline(0, color="k", lw=0.8)
        ax.axvline(s.threshold_pct, color="r", ls="--", lw=1, label=f"threshold {s.threshold_pct}%")
        ax.invert_yaxis()
        ax.set_xlabel("premium for the same item in the same window, % (CI)")
        ax.legend(fontsize=7)
        body.append(_png(fig))
    return _page("Pricing audit", "".join(body))


def write_report(rep: FairnessReport | PricingReport, out: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    j, h = out / "report.json", out / "report.html"
    j.write_text(rep.model_dump_json(indent=2))
    h.write_text(fairness_html(rep) if isinstance(rep, FairnessReport) else pricing_html(rep))
    return j, h


def print_rules(rep: FairnessReport | PricingReport, console) -> None:  # noqa: ANN001
    """A readable PASS/FAIL table on the terminal."""
    from rich.table import Table

    t = Table(title=f"{rep.kind} audit: rules")
    for c in ("rule", "subject", "result", "detail"):
        t.add_column(c)
    for r in rep.rules:
        t.add_row(r.rule, r.subject, "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]", r.detail)
    console.print(t)
    if isinstance(rep, FairnessReport):
        for name, a in rep.attributes.items():
            if a.suppressed:
                console.print(f"[yellow]{name}: suppressed (n < {rep.spec.min_group_size}):[/] "
                              + ", ".join(f"{x.group} (n={x.n})" for x in a.suppressed))
    else:
        sup = [f for f in rep.findings if f.suppressed]
        if sup:
            console.print(f"[yellow]{len(sup)} comparison(s) suppressed (fewer than {rep.spec.min_count} rows in "
                          "shared strata):[/] " + ", ".join(f"{f.attribute}={f.group} [{f.slice}]" for f in sup))
