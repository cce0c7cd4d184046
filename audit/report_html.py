"""Reports people read: a self-contained HTML page and the terminal tables.

The HTML embeds its plots as inline SVG whose text stays text (``svg.fonttype = none``), so a
browser (and the browser test) can measure every label; figure heights grow with the number
of groups so that the labels of intersection plots never overlap. No script, no external file.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

from audit.fairness import TOO_SMALL_TO_RELEASE, FairnessReport
from audit.models import RuleResult
from audit.pricing import PricingReport, format_p

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.88em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}.PASS{color:#0a0;font-weight:bold}.FAIL{color:#c00;font-weight:bold}
.INCONCLUSIVE{color:#b60;font-weight:bold}.NOT-TESTED{color:#666;font-weight:bold}
.note{color:#555;font-size:.88em}.verdict{font-size:1.3em;padding:.4em .8em;border:2px solid;display:inline-block}
figure{margin:1em 0}svg{max-width:100%;height:auto}"""

VERDICT_CLASS = {"PASS": "PASS", "FAIL": "FAIL", "INCONCLUSIVE": "INCONCLUSIVE", "NOT TESTED": "NOT-TESTED"}
RATE_KEYS = ("selection_rate", "tpr", "fpr", "fnr", "precision", "false_omission_rate")


def _svg(fig) -> str:  # noqa: ANN001
    """The figure as inline SVG (text kept as <text>, ids made unique per figure)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fedseg"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    _svg.count = getattr(_svg, "count", 0) + 1
    prefix = f"f{_svg.count}-"
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(r'(url\(#|xlink:href="#|href="#)([^)"]+)', lambda m: f"{m.group(1)}{prefix}{m.group(2)}", text)
    return f'<figure class="plot">{text}</figure>'


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _est(e, digits: int = 3) -> str:  # noqa: ANN001
    if e is None or e.value is None:
        return "–"
    if e.ci_low is None:
        return f"{e.value:.{digits}f}"
    hi = _fmt(e.ci_high, digits) if e.ci_high is not None else "inf"
    return f"{e.value:.{digits}f} [{_fmt(e.ci_low, digits)}, {hi}]"


def _verdict_cell(v: str) -> str:
    return f'<td class="{VERDICT_CLASS[v]}">{html.escape(v)}</td>'


def _rules_html(rules: list[RuleResult]) -> str:
    """A summary per rule, the checks that need attention (FAIL, INCONCLUSIVE), all checks folded."""
    if not rules:
        return "<p>No rule applied.</p>"
    summary = {}
    for r in rules:
        key = (r.rule, r.metric, r.allowed)
        summary.setdefault(key, {"PASS": 0, "FAIL": 0, "INCONCLUSIVE": 0, "NOT TESTED": 0})[r.verdict] += 1
    rows = "".join(f'<tr><td class="l">{html.escape(n)}</td><td class="l">{html.escape(m)}</td>'
                   f'<td class="l">{html.escape(a)}</td>'
                   + "".join(f'<td class="{VERDICT_CLASS[v] if c else ""}">{c}</td>' for v, c in cnt.items())
                   + "</tr>" for (n, m, a), cnt in summary.items())
    out = ('<table><tr><th class="l">rule</th><th class="l">metric</th><th class="l">allowed</th><th>PASS</th>'
           f"<th>FAIL</th><th>INCONCLUSIVE</th><th>NOT TESTED</th></tr>{rows}</table>")
    attention = [r for r in rules if r.verdict in ("FAIL", "INCONCLUSIVE")]
    if attention:
        out += f"<h3>Checks that need attention ({len(attention)})</h3>" + _checks_table(attention)
    out += (f"<details><summary>All {len(rules)} rule checks</summary>{_checks_table(rules)}</details>")
    return out


def _checks_table(rules: list[RuleResult]) -> str:
    noisy = any(r.noisy for r in rules)
    rows = "".join(
        f'<tr><td class="l">{html.escape(r.rule)}</td><td class="l">{html.escape(r.subject)}</td>'
        f"{_verdict_cell(r.verdict)}<td class=\"l\">{html.escape(r.allowed)}</td>"
        f'<td class="l">{html.escape(r.detail)}</td>'
        + (f'<td class="l">{"noisy (DP)" if r.noisy else ""}</td>' if noisy else "") + "</tr>"
        for r in rules)
    return ('<table><tr><th class="l">rule</th><th class="l">subject</th><th>verdict</th><th class="l">allowed</th>'
            '<th class="l">detail</th>' + ('<th class="l">figures</th>' if noisy else "") + f"</tr>{rows}</table>")


def _sources_html(rules: list[RuleResult]) -> str:
    seen = dict.fromkeys((r.rule, r.allowed, r.source) for r in rules)
    if not seen:
        return ""
    items = "".join(f"<li><b>{html.escape(n)}</b> ({html.escape(a)}): {html.escape(s or 'no source given')}</li>"
                    for n, a, s in seen)
    return f"<p class='note'>Thresholds and their sources:</p><ul class='note'>{items}</ul>"


def _overall_html(rep: FairnessReport | PricingReport) -> str:
    ov = rep.overall
    if ov is None:
        return ""
    counts = ", ".join(f"{v} {k}" for k, v in ov.counts.items() if v)
    reason = f" — {html.escape(ov.reason)}" if ov.reason else ""
    return (f'<p class="verdict {VERDICT_CLASS[ov.verdict]}">Verdict: {ov.verdict}</p>'
            f"<p class='note'>{html.escape(counts)}{reason}</p>")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _n_cell(gf) -> str:  # noqa: ANN001
    if gf.n_noise_sd is not None:
        return f"{gf.n} (noisy, SD {gf.n_noise_sd:.2g})"
    return str(gf.n)


def _ratio_plot(name: str, a, keys: tuple[str, ...]) -> str:  # noqa: ANN001
    """Ratio to the reference per group, one panel per rate, with the 0.8-1.25 band."""
    plt = _plt()
    labels = [g for g in a.groups if not a.groups[g].reference]
    if not labels:
        return ""
    longest = max(len(g) for g in labels)
    height = 0.9 + 0.32 * len(labels)  # inches: each label gets a row at 8 pt
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys) + 0.08 * longest, height), sharey=True,
                             squeeze=False)
    for ax, k in zip(axes[0], keys):
        vals, lo, hi = [], [], []
        for g in labels:
            e = getattr(a.groups[g], k)
            r = e.ratio_to_reference if e is not None else None
            ok = r is not None and r.value is not None and r.ci_low is not None
            v = r.value if ok else float("nan")
            vals.append(v)
            lo.append(max(v - r.ci_low, 0) if ok else 0)
            hi.append(max((r.ci_high if r.ci_high is not None else 3.0) - v, 0) if ok else 0)
        y = list(range(len(labels)))
        ax.axvspan(0.8, 1.25, color="#e6f2e6", zorder=0)
        ax.axvline(1.0, color="k", lw=0.6)
        ax.errorbar(vals, y, xerr=[lo, hi], fmt="o", color="#4a7ab7", ms=4, capsize=2)
        ax.set_title(k.replace("_", " "), fontsize=9)
        ax.set_xlim(0, 2.5)
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(range(len(labels)), labels)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"{name}: ratio to the reference {a.reference} (95% CI; band 0.8-1.25)", fontsize=9)
    fig.tight_layout()
    return _svg(fig)


def _suppressed_html(a, noisy: bool) -> str:  # noqa: ANN001
    if not a.suppressed:
        return ""
    items = []
    for s in a.suppressed:
        what = "whole group" if s.metric == "all" else s.metric
        if s.count is None:
            items.append(f"{html.escape(s.group)} ({what}): {TOO_SMALL_TO_RELEASE}")
        else:
            items.append(f"{html.escape(s.group)} ({what}): {html.escape(s.reason)}")
    return "<p class='note'>Suppressed cells: " + "; ".join(items) + "</p>"


def fairness_html(rep: FairnessReport) -> str:
    s = rep.spec
    mode = (f"score {html.escape(str(s.score))} &gt;= {s.threshold}, label {html.escape(str(s.label))}"
            if s.mode == "score" else f"outcome {html.escape(str(s.outcome))}")
    body = [f"<p>{rep.n_rows} rows, {rep.units} unit(s), created {rep.created_at}. {mode}; "
            f"{s.ci_level:.0%} intervals; a figure resting on fewer than {s.min_group_size} counts "
            f"(rows, positives, negatives, predicted positives or negatives) is suppressed. Policy: "
            f"{html.escape(s.policy.name)}.</p>", _overall_html(rep)]
    if rep.dp_noise_sigma:
        body.append(f"<p class='note'><b>Noisy figures (differential privacy).</b> Gaussian noise with SD "
                    f"{rep.dp_noise_sigma:.3g} was added to every count; group sizes are noisy and shown with "
                    "their noise SD; every verdict was decided on noisy figures and the intervals do not include "
                    "the noise. Cells whose noisy count is below the floor are "
                    f"'{TOO_SMALL_TO_RELEASE}'.</p>")
    body.append("<h2>Rules</h2>" + _rules_html(rep.rules) + _sources_html(rep.rules))
    body.append("<p class='note'>Interval methods: " + "; ".join(f"{html.escape(k)}: {html.escape(v)}"
                                                                 for k, v in rep.interval_methods.items()) + "</p>")
    for name, a in rep.attributes.items():
        body.append(f"<h2>{html.escape(name)}</h2><p>Reference group: <b>{html.escape(str(a.reference))}</b> "
                    f"({html.escape(a.reference_source)}).</p>")
        if s.mode == "score":
            keys = [*RATE_KEYS, "auc", "calibration_error"]
            head = "".join(f"<th>{k}</th>" for k in keys)
            rows = "".join(f'<tr><td class="l">{html.escape(g)}{" (reference)" if gf.reference else ""}</td>'
                           f"<td>{_n_cell(gf)}</td>" + "".join(f"<td>{_est(getattr(gf, k))}</td>" for k in keys)
                           + "</tr>" for g, gf in a.groups.items())
            body.append(f'<table><tr><th class="l">group</th><th>n</th>{head}</tr>{rows}</table>')
            head = "".join(f"<th>{k}</th>" for k in RATE_KEYS)
            for comp in ("ratio_to_reference", "difference_to_reference"):
                rows = "".join(
                    f'<tr><td class="l">{html.escape(g)}</td>'
                    + "".join(f"<td>{_est(getattr(getattr(gf, k), comp) if getattr(gf, k) else None)}</td>"
                              for k in RATE_KEYS) + "</tr>"
                    for g, gf in a.groups.items() if not gf.reference)
                if rows:
                    body.append(f"<p>{comp.replace('_', ' ')} ({html.escape(str(a.reference))}):</p>"
                                f'<table><tr><th class="l">group</th>{head}</tr>{rows}</table>')
            summ = ["demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
                    "equal_opportunity_difference"]
            body.append("<table>" + "".join(f'<tr><th class="l">{k}</th><td>{_est(getattr(a, k))}</td></tr>'
                                             for k in summ) + "</table>")
            body.append(_ratio_plot(name, a, ("selection_rate", "fpr", "fnr")))
        else:
            cats = sorted({c for gf in a.groups.values() for c in (gf.shares or {})})
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cats)
            rows = "".join(f'<tr><td class="l">{html.escape(g)}{" (reference)" if gf.reference else ""}</td>'
                           f"<td>{_n_cell(gf)}</td>"
                           + "".join(f"<td>{_est((gf.shares or {}).get(c))}<br><span class='note'>ratio "
                                     f"{_est(((gf.shares or {}).get(c) or None) and gf.shares[c].ratio_to_reference)}"
                                     "</span></td>" for c in cats) + "</tr>"
                           for g, gf in a.groups.items())
            body.append(f'<table><tr><th class="l">group</th><th>n</th>{head}</tr>{rows}</table>')
            if a.independence:
                t = a.independence
                body.append(f"<p>Chi-square {t.chi2:.2f}, dof {t.dof}, p = {t.p_value:.3g}, Cramér's V {t.cramers_v:.3f}. "
                            f"<span class='note'>{html.escape(t.note)}</span></p>")
        body.append(_suppressed_html(a, rep.dp_noise_sigma is not None))
    return _page("Fairness audit", "".join(body))


def pricing_html(rep: PricingReport) -> str:
    plt = _plt()
    s = rep.spec
    body = [f"<p>{rep.n_rows} transactions ({rep.n_dropped} dropped), {rep.units} unit(s), created {rep.created_at}. "
            f"Same item ({html.escape(s.item)}) in the same {s.window} window; cluster-robust by "
            f"{html.escape(s.customer or 'row')} with the absorbed strata counted in the small-sample factor; "
            f"Holm correction across {len(rep.findings)} comparisons; flag rule {s.flag_rule} at alpha {s.alpha}; "
            f"suppressed below {s.min_count} rows or {s.min_clusters} customers. Policy: "
            f"{html.escape(s.policy.name)}.</p>", _overall_html(rep)]
    if rep.missing:
        body.append("<p class='note'>Missing attribute values, audited as the level (missing): "
                    + ", ".join(f"{html.escape(k)} {v} rows" for k, v in rep.missing.items()) + "</p>")
    for k, v in rep.binning.items():
        body.append(f"<p class='note'>{html.escape(k)} binned: {html.escape(v)}</p>")
    body += ["<h2>Rules</h2>", _rules_html(rep.rules), _sources_html(rep.rules), "<h2>Findings</h2>"]
    cols = ["attribute", "group", "reference", "slice", "n", "clusters", "premium % [CI]", "raw p", "Holm p",
            "naive %", "strata", "flagged"]
    rows = []
    for f in rep.findings:
        prem = ("suppressed: " + f.suppressed_reason if f.suppressed
                else f"{f.premium_pct:+.3f} [{f.ci_low:+.3f}, {f.ci_high:+.3f}]")
        cells = [f.attribute, f.group, f.reference or "–", f"{f.slice_column or ''}={f.slice}" if f.slice_column
                 else f.slice, f.n_rows, f"{f.n_level_clusters} / {f.n_clusters}", prem, format_p(f.p_value),
                 format_p(f.p_adjusted), _fmt(f.naive_premium_pct, 2), f.n_strata, "yes" if f.flagged else ""]
        rows.append("<tr>" + "".join(f'<td class="l">{html.escape(str(c))}</td>' if i < 4 or i == 6
                                     else f"<td>{html.escape(str(c))}</td>" for i, c in enumerate(cells)) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body.append(f"<table><tr>{head}</tr>{''.join(rows)}</table>")
    shown = [f for f in rep.findings if not f.suppressed]
    if shown:
        labels = [f"{f.attribute} {f.group} [{f.slice}]" if f.kind == "slope"
                  else f"{f.attribute}={f.group} vs {f.reference} [{f.slice}]" for f in shown]
        fig, ax = plt.subplots(figsize=(7 + 0.06 * max(len(x) for x in labels), 0.9 + 0.3 * len(shown)))
        v = [f.premium_pct for f in shown]
        ax.errorbar(v, range(len(shown)), xerr=[[max(f.premium_pct - f.ci_low, 0) for f in shown],
                                                [max(f.ci_high - f.premium_pct, 0) for f in shown]], fmt="o",
                    color="#4a7ab7", ms=4)
        flagged = [(i, f.premium_pct) for i, f in enumerate(shown) if f.flagged]
        if flagged:
            ax.plot([v for _, v in flagged], [i for i, _ in flagged], "o", color="#c00", ms=5, zorder=4,
                    label="flagged")
        ax.set_yticks(range(len(shown)), labels, fontsize=8)
        ax.axvline(0, color="k", lw=0.8)
        thr = sorted({f.threshold_pct for f in shown if f.threshold_pct is not None})
        for t in thr:
            ax.axvline(t, color="r", ls="--", lw=1, label=f"threshold {t:g}%")
        ax.invert_yaxis()
        ax.set_xlabel("premium for the same item in the same window, % (95% CI)", fontsize=8)
        if thr or flagged:
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        body.append(_svg(fig))
    return _page("Pricing audit", "".join(body))


def write_report(rep: FairnessReport | PricingReport, out: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    j, h = out / "report.json", out / "report.html"
    j.write_text(rep.model_dump_json(indent=2))
    h.write_text(fairness_html(rep) if isinstance(rep, FairnessReport) else pricing_html(rep))
    return j, h


_RICH = {"PASS": "[green]PASS[/]", "FAIL": "[bold red]FAIL[/]", "INCONCLUSIVE": "[yellow]INCONCLUSIVE[/]",
         "NOT TESTED": "[dim]NOT TESTED[/]"}


def _rules_table(rep: FairnessReport | PricingReport):  # noqa: ANN202
    from rich.table import Table

    noisy = any(r.noisy for r in rep.rules)
    t = Table(title=f"{rep.kind} audit: rules ({rep.spec.policy.name})")
    for c in ("rule", "subject", "verdict", "allowed", "detail"):
        t.add_column(c, overflow="fold")
    if noisy:
        t.add_column("figures")
    for r in rep.rules:
        t.add_row(r.rule, r.subject, _RICH[r.verdict], r.allowed, r.detail, *(["noisy (DP)"] if noisy else []))
    return t


def _wide(console):  # noqa: ANN001, ANN202
    """The console itself on a terminal; 150 columns when writing to a file or pipe (a log does not
    wrap, and 80 columns would fold every figure of the tables)."""
    from rich.console import Console

    if console.is_terminal:
        return console
    return Console(file=console.file, width=max(console.width, 150), color_system=None, highlight=False)


def print_rules(rep: FairnessReport | PricingReport, console) -> None:  # noqa: ANN001
    """Readable tables on the terminal: the figures, every rule's verdict, the overall verdict."""
    from rich.table import Table

    console = _wide(console)

    if isinstance(rep, FairnessReport):
        if rep.dp_noise_sigma is not None:
            console.print(f"[yellow]DP: every count is noisy (Gaussian, SD {rep.dp_noise_sigma:.3g} per cell); group "
                          "sizes below are noisy; verdicts are decided on noisy figures.[/]")
        for name, a in rep.attributes.items():
            sizes = ", ".join(f"{g} n={gf.n}" + (f" (noisy, SD {gf.n_noise_sd:.2g})" if gf.n_noise_sd is not None
                                                 else "") for g, gf in a.groups.items())
            console.print(f"{name}: reference [bold]{a.reference}[/] ({a.reference_source}); {sizes}", highlight=False)
            for s in a.suppressed:
                what = "whole group" if s.metric == "all" else s.metric
                why = TOO_SMALL_TO_RELEASE if s.count is None else s.reason
                console.print(f"  [yellow]suppressed[/] {s.group} ({what}): {why}", highlight=False)
        console.print(_rules_table(rep))
    else:
        from rich import box

        t = Table(title="pricing audit: premium for the same item in the same window", box=box.SIMPLE_HEAD,
                  pad_edge=False)
        t.add_column("comparison", overflow="fold")
        t.add_column("slice", overflow="fold")
        for c in ("n", "clusters", "premium %", "95% CI", "raw p", "Holm p", "verdict"):
            t.add_column(c, justify="right" if c != "verdict" else "left")
        for f, r in zip(rep.findings, rep.rules):
            sl = f"{f.slice_column}={f.slice}" if f.slice_column else f.slice
            comp = f"{f.attribute} {f.group}" if f.kind == "slope" else f"{f.attribute}={f.group} vs {f.reference}"
            prem = "suppressed" if f.suppressed else f"{f.premium_pct:+.2f}"
            ci = "" if f.suppressed else f"[{f.ci_low:+.2f}, {f.ci_high:+.2f}]"
            t.add_row(comp, sl, str(f.n_rows), str(f.n_level_clusters), prem, ci, format_p(f.p_value),
                      format_p(f.p_adjusted), _RICH[r.verdict])
        console.print(t)
        for name, allowed, source in dict.fromkeys((r.rule, r.allowed, r.source) for r in rep.rules):
            console.print(f"rule {name}: premium {allowed} ({source}); flag rule {rep.spec.flag_rule}, "
                          f"Holm-corrected at alpha {rep.spec.alpha}", highlight=False)
        for k, v in rep.missing.items():
            console.print(f"{k}: {v} rows with no value, audited as the level (missing)", highlight=False)
        for k, v in rep.binning.items():
            console.print(f"{k} binned: {v}", highlight=False)
        for f in rep.findings:
            if f.suppressed:
                console.print(f"[yellow]suppressed[/] {f.attribute}={f.group} [{f.slice}]: {f.suppressed_reason}",
                              highlight=False)
    ov = rep.overall
    if ov is not None:
        extra = f" ({ov.reason})" if ov.reason else ""
        console.print(f"result: {_RICH[ov.verdict]}{extra}", highlight=False)
