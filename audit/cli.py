"""``fedseg audit ...``: fairness, pricing and federated audits, keys and the trail.

Exit codes: 0 the audit ran and no rule FAILed (PASS, INCONCLUSIVE or NOT TESTED); 1 a rule
FAILed (or ``verify`` found the trail tampered); 2 a usage or input error, printed as one line
``error: ...`` without a traceback. No flag is silently ignored: a flag that does not apply to
the chosen mode is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedseg.console import console, fail
from fedseg.errors import FedsegError

app = typer.Typer(help="Fairness and pricing audits (pooled or federated) with a signed, hash-chained trail.",
                  no_args_is_help=True)

Trail = Annotated[Path | None, typer.Option("--trail", help="Audit log (JSON lines) to append a signed entry to.")]
Key = Annotated[Path | None, typer.Option("--signing-key", help="Ed25519 private key (from `fedseg audit keygen`).")]
Groups = Annotated[list[str], typer.Option("--group", help="Protected attribute column (repeatable).")]
Out = Annotated[Path, typer.Option("--out", help="Directory for report.json and report.html.")]
PolicyOpt = Annotated[Path | None, typer.Option("--policy", help="Policy file (TOML) of rules; default: the shipped "
                                                                  "policy (docs/audit.md).")]
RefOpt = Annotated[list[str], typer.Option("--reference", help="ATTR=VALUE reference group (repeatable; default: "
                                                               "the largest group).")]


def _check_trail(trail: Path | None, key: Path | None) -> None:
    from audit.stats import avoid_hugepage_stalls

    avoid_hugepage_stalls()  # every audit command checks its trail options first: a cheap, common entry
    if trail is not None and key is None:
        fail("--trail needs --signing-key KEY (create one with `fedseg audit keygen DIR`).")
    if key is not None and trail is None:
        fail("--signing-key is used only with --trail LOG (the signed entry goes there).")
    if key is not None and not key.exists():
        fail(f"{key}: no such signing key; create one with `fedseg audit keygen DIR`.")


def _not_with(flags: dict[str, object], why: str) -> None:
    """Refuse flags that were given but do not apply (``why`` says to what they apply)."""
    given = [name for name, value in flags.items() if value not in (None, [], False)]
    if given:
        fail(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {why}")


def _policy(path: Path | None):  # noqa: ANN202
    from audit.policy import load_policy

    try:
        return load_policy(path)
    except ValueError as exc:
        fail(str(exc))


def _references(reference: list[str]) -> dict[str, str]:
    refs: dict[str, str] = {}
    for r in reference:
        if "=" not in r:
            fail(f"--reference {r!r}: use ATTR=VALUE, e.g. --reference gender=f (GROUP=LEVEL)")
        k, v = r.split("=", 1)
        if k in refs:
            fail(f"--reference {k}=...: given twice")
        refs[k] = v
    return refs


def _finish(rep, out: Path, trail: Path | None, key: Path | None) -> None:  # noqa: ANN001
    from audit.report_html import print_rules, write_report
    from audit.trail import TrailError, append

    try:
        j, h = write_report(rep, out)
    except OSError as exc:
        fail(f"--out {out}: cannot write the report ({exc.strerror or exc})")
    print_rules(rep, console)
    console.print(f"wrote {j} and {h}")
    if trail is not None and key is not None:
        try:
            e = append(trail, j, key, kind=rep.kind, extra_files=[h])
        except (TrailError, OSError) as exc:
            fail(str(exc))
        console.print(f"trail: entry {e['seq']} appended to {trail} (sha256 {e['report_sha256'][:16]}...)")
    if rep.overall is not None and rep.overall.verdict == "FAIL":
        raise typer.Exit(1)


def _fairness_spec(label, score, outcome, threshold, groups, intersect, bootstrap, seed, min_group_size,
                   reference, policy, auc_bins=None):  # noqa: ANN001, ANN202
    from pydantic import ValidationError

    from audit.fairness import FairnessSpec

    if not groups:
        fail("give at least one --group COLUMN.")
    if outcome is not None and (label is not None or score is not None):
        fail("give --label with --score, or --outcome alone (--outcome audits decisions without a true label; "
             "it cannot be combined with --label or --score)")
    if outcome is not None:
        _not_with({"--threshold": threshold, "--bootstrap": bootstrap, "--seed": seed},
                  "to scores (--label with --score), not to --outcome")
    if bootstrap == 0 and seed is not None:
        fail("--seed applies to the bootstrap; it is unused with --bootstrap 0")
    kw = {k: v for k, v in dict(threshold=threshold, bootstrap=bootstrap, seed=seed,
                                min_group_size=min_group_size).items() if v is not None}
    try:
        return FairnessSpec(label=label, score=score, outcome=outcome, groups=groups, intersect=intersect,
                            auc_bins=auc_bins, references=_references(reference), policy=_policy(policy), **kw)
    except ValidationError as exc:
        fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))


def _continuous(specs: list[str], federated: bool) -> dict[str, int | list[float]]:
    out: dict[str, int | list[float]] = {}
    for s in specs:
        name, _, rest = s.partition("=")
        if not name:
            fail(f"--continuous {s!r}: use COLUMN, COLUMN=BINS or COLUMN=EDGE,EDGE,...")
        try:
            if not rest:
                out[name] = 4
            elif "," in rest:
                out[name] = [float(x) for x in rest.split(",")]
            else:
                out[name] = int(rest)
        except ValueError:
            fail(f"--continuous {s!r}: BINS must be an integer, EDGES numbers separated by commas")
        if federated and isinstance(out[name], int):
            fail(f"--continuous {name}: quantile bins need the pooled data; in a federated audit give the edges, "
                 f"e.g. --continuous {name}=0,100,1000")
    return out


def _pricing_spec(price, item, time, groups, by, reference, threshold_pct, alpha, customer, returning, window,
                  min_count, min_clusters=None, flag_rule=None, continuous=(), slope=(), policy=None,
                  federated=False):  # noqa: ANN001, ANN202
    from pydantic import ValidationError

    from audit.pricing import PricingSpec

    refs = _references(reference)
    for k in refs:
        if k not in groups:
            fail(f"--reference {k}=...: {k!r} is not one of the --group columns {groups}")
    if not groups and not returning and not slope:
        fail("give at least one --group COLUMN (or --returning COLUMN for the renewal check, or --slope COLUMN).")
    cont = _continuous(list(continuous), federated)
    for k in cont:
        if k not in groups:
            fail(f"--continuous {k}: also give --group {k} (continuous attributes are binned groups)")
    kw = {k: v for k, v in dict(alpha=alpha, window=window, min_count=min_count, min_clusters=min_clusters,
                                flag_rule=flag_rule).items() if v is not None}
    try:
        return PricingSpec(price=price, item=item, time=time, groups=groups, by=by, references=refs,
                           threshold_pct=threshold_pct, customer=customer, returning=returning, continuous=cont,
                           slopes=list(slope), policy=_policy(policy), **kw)
    except ValidationError as exc:
        fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))


@app.command("fairness")
def fairness(
    input: Annotated[Path, typer.Option("--input", help="Scores or decisions (.parquet or .csv), one row per user.")],
    groups: Groups,
    out: Out,
    label: Annotated[str | None, typer.Option(help="True outcome column (0/1), with --score.")] = None,
    score: Annotated[str | None, typer.Option(help="Score column in [0, 1], with --label.")] = None,
    outcome: Annotated[str | None, typer.Option(help="Decision column (segment, offer), alone: no label.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Decision threshold on the score [default: 0.5].")] = None,
    intersect: Annotated[bool, typer.Option(help="Also audit intersections of the groups.")] = False,
    reference: RefOpt = [],  # noqa: B006
    policy: PolicyOpt = None,
    bootstrap: Annotated[int | None, typer.Option(help="Bootstrap replicates for AUC and calibration "
                                                       "[default: 1000; 0 = no intervals for them].")] = None,
    seed: Annotated[int | None, typer.Option(help="Bootstrap seed [default: 0].")] = None,
    min_group_size: Annotated[int | None, typer.Option(help="Suppress a figure resting on fewer counts (rows, "
                                                            "positives, negatives, ...) [default: 30].")] = None,
    trail: Trail = None,
    signing_key: Key = None,
) -> None:
    """Group fairness of scores (selection rate, TPR, FPR, FNR, precision, false omission rate, AUC,
    calibration) against a reference group, or of decisions; verdicts from the policy."""
    _check_trail(trail, signing_key)
    spec = _fairness_spec(label, score, outcome, threshold, groups, intersect, bootstrap, seed, min_group_size,
                          reference, policy)
    from audit.fairness import fairness_audit
    from audit.stats import read_table

    cols = [c for c in (label, score, outcome) if c] + list(groups)
    try:
        with console.status("fairness audit..."):
            rep = fairness_audit(read_table(input, list(dict.fromkeys(cols))), spec)
    except (ValueError, OSError) as exc:
        fail(f"{input}: {exc}")
    _finish(rep, out, trail, signing_key)


_PRICING_HELP = dict(
    price="Unit price column (currency units, > 0).", item="Item column.",
    time="Time column: dates (binned by --window week|day) or window ids (--window raw).",
    by="Slice column (e.g. category): audit each value too (repeatable).",
    threshold_pct="Flag threshold, % [default: the policy's premium rule, 1%].",
    flag_rule="significant (premium above the threshold and Holm p of beta != 0 below alpha) or above-threshold "
              "(one-sided test at the threshold) [default: significant].",
    min_clusters="Suppress comparisons with fewer customers of the level or reference in shared strata [default: 1].",
    continuous="COLUMN[=BINS|=EDGE,EDGE,...]: bin a numeric --group column (quantiles, default 4) (repeatable).",
    slope="Numeric column audited as a premium per unit (repeatable).",
    window="week, day (for dates) or raw (the column holds window ids) [default: week].",
)


@app.command("pricing")
def pricing(
    input: Annotated[Path, typer.Option("--input", help="Transactions (.parquet or .csv).")],
    price: Annotated[str, typer.Option(help=_PRICING_HELP["price"])],
    item: Annotated[str, typer.Option(help=_PRICING_HELP["item"])],
    time: Annotated[str, typer.Option(help=_PRICING_HELP["time"])],
    out: Out,
    groups: Groups = [],  # noqa: B006
    by: Annotated[list[str], typer.Option(help=_PRICING_HELP["by"])] = [],  # noqa: B006
    reference: RefOpt = [],  # noqa: B006
    policy: PolicyOpt = None,
    threshold_pct: Annotated[float | None, typer.Option(help=_PRICING_HELP["threshold_pct"])] = None,
    flag_rule: Annotated[str | None, typer.Option(help=_PRICING_HELP["flag_rule"])] = None,
    alpha: Annotated[float | None, typer.Option(help="Significance level after Holm correction [default: 0.05].")] = None,
    customer: Annotated[str | None, typer.Option(help="Customer column (cluster-robust intervals).")] = None,
    returning: Annotated[str | None, typer.Option(help="Boolean returning-customer column (renewal check).")] = None,
    window: Annotated[str | None, typer.Option(help=_PRICING_HELP["window"])] = None,
    min_count: Annotated[int | None, typer.Option(help="Suppress comparisons with fewer rows in shared strata "
                                                       "[default: 30].")] = None,
    min_clusters: Annotated[int | None, typer.Option(help=_PRICING_HELP["min_clusters"])] = None,
    continuous: Annotated[list[str], typer.Option(help=_PRICING_HELP["continuous"])] = [],  # noqa: B006
    slope: Annotated[list[str], typer.Option(help=_PRICING_HELP["slope"])] = [],  # noqa: B006
    trail: Trail = None,
    signing_key: Key = None,
) -> None:
    """Premiums groups pay over a reference for the SAME item in the SAME window (loyalty penalty)."""
    _check_trail(trail, signing_key)
    if min_clusters is not None and customer is None:
        fail("--min-clusters counts customers: give --customer COLUMN (without it every row is its own cluster "
             "and --min-count applies)")
    spec = _pricing_spec(price, item, time, groups, by, reference, threshold_pct, alpha, customer, returning,
                         window, min_count, min_clusters, flag_rule, continuous, slope, policy)
    from audit.pricing import pricing_audit
    from audit.stats import read_table

    cols = [price, item, time, *groups, *by, *slope] + [c for c in (customer, returning) if c]
    try:
        with console.status("reading transactions..."):
            frame = read_table(input, list(dict.fromkeys(cols)))
        with console.status(f"pricing audit of {len(frame):,} transactions..."):
            rep = pricing_audit(frame, spec)
    except (ValueError, OSError) as exc:
        fail(f"{input}: {exc}")
    _finish(rep, out, trail, signing_key)


@app.command("federated")
def federated(
    units: Annotated[list[Path], typer.Option("--unit", help="A unit's file (repeatable); each is read on its own.")],
    out: Out,
    audit: Annotated[str, typer.Option("--audit", help="fairness or pricing.")] = "fairness",
    groups: Groups = [],  # noqa: B006
    engine: Annotated[str, typer.Option(help="flower (Flower's simulation engine) or inprocess.")] = "flower",
    reference: RefOpt = [],  # noqa: B006
    policy: PolicyOpt = None,
    label: Annotated[str | None, typer.Option(help="fairness: true outcome column.")] = None,
    score: Annotated[str | None, typer.Option(help="fairness: score column.")] = None,
    outcome: Annotated[str | None, typer.Option(help="fairness: decision column.")] = None,
    threshold: Annotated[float | None, typer.Option(help="fairness: threshold [default: 0.5].")] = None,
    intersect: Annotated[bool, typer.Option(help="fairness: intersections.")] = False,
    bootstrap: Annotated[int | None, typer.Option(help="fairness: bootstrap replicates [default: 1000].")] = None,
    seed: Annotated[int | None, typer.Option(help="fairness: bootstrap seed [default: 0].")] = None,
    min_group_size: Annotated[int | None, typer.Option(help="fairness: count floor [default: 30].")] = None,
    auc_bins: Annotated[int | None, typer.Option(help="fairness: score histogram bins for the federated AUC "
                                                      "[default: 10000].")] = None,
    epsilon: Annotated[float | None, typer.Option(help="fairness: add Gaussian DP noise for this epsilon.")] = None,
    delta: Annotated[float | None, typer.Option(help="fairness: DP delta (default: the largest power of ten at most "
                                                     "1/(10 x rows over all units)); needs --epsilon.")] = None,
    ledger: Annotated[Path | None, typer.Option(help="The units' privacy ledger: each unit (named by its file name) "
                                                     "accepts the noisy release against its budget and records it.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset id the units record the spend under (default: a "
                                                     "fingerprint of each unit's file).")] = None,
    price: Annotated[str | None, typer.Option(help="pricing: price column.")] = None,
    item: Annotated[str | None, typer.Option(help="pricing: item column.")] = None,
    time: Annotated[str | None, typer.Option(help="pricing: time column.")] = None,
    by: Annotated[list[str], typer.Option(help="pricing: slice column (repeatable).")] = [],  # noqa: B006
    threshold_pct: Annotated[float | None, typer.Option(help="pricing: flag threshold, %.")] = None,
    flag_rule: Annotated[str | None, typer.Option(help="pricing: significant or above-threshold.")] = None,
    alpha: Annotated[float | None, typer.Option(help="pricing: significance after Holm [default: 0.05].")] = None,
    customer: Annotated[str | None, typer.Option(help="pricing: customer column.")] = None,
    returning: Annotated[str | None, typer.Option(help="pricing: returning-customer column.")] = None,
    window: Annotated[str | None, typer.Option(help="pricing: week, day or raw [default: week].")] = None,
    min_count: Annotated[int | None, typer.Option(help="pricing: suppress smaller comparisons [default: 30].")] = None,
    min_clusters: Annotated[int | None, typer.Option(help="pricing: suppress comparisons with fewer customers.")] = None,
    continuous: Annotated[list[str], typer.Option(help="pricing: COLUMN=EDGE,EDGE,... bins (repeatable).")] = [],  # noqa: B006
    slope: Annotated[list[str], typer.Option(help="pricing: premium per unit of this column (repeatable).")] = [],  # noqa: B006
    trail: Trail = None,
    signing_key: Key = None,
) -> None:
    """One audit across units: each unit computes statistics, the server combines; no row moves."""
    _check_trail(trail, signing_key)
    for u in units:
        if not u.exists():
            fail(f"--unit {u}: no such file")
    if engine not in ("flower", "inprocess"):
        fail(f"--engine {engine!r}: use flower or inprocess")
    fair_flags = {"--label": label, "--score": score, "--outcome": outcome, "--threshold": threshold,
                  "--intersect": intersect, "--bootstrap": bootstrap, "--seed": seed,
                  "--min-group-size": min_group_size, "--auc-bins": auc_bins, "--epsilon": epsilon, "--delta": delta,
                  "--ledger": ledger, "--dataset": dataset}
    price_flags = {"--price": price, "--item": item, "--time": time, "--by": by, "--threshold-pct": threshold_pct,
                   "--flag-rule": flag_rule, "--alpha": alpha, "--customer": customer, "--returning": returning,
                   "--window": window, "--min-count": min_count, "--min-clusters": min_clusters,
                   "--continuous": continuous, "--slope": slope}
    if audit == "fairness":
        _not_with(price_flags, "to --audit pricing only")
        if epsilon is None:
            _not_with({"--delta": delta, "--ledger": ledger}, "only with --epsilon (DP noise)")
        if ledger is None:
            _not_with({"--dataset": dataset}, "only with --ledger")
        if outcome is not None:
            _not_with({"--auc-bins": auc_bins}, "to scores, not to --outcome")
        spec = _fairness_spec(label, score, outcome, threshold, groups, intersect, bootstrap, seed, min_group_size,
                              reference, policy,
                              auc_bins=(auc_bins if auc_bins is not None else 10_000) if outcome is None else None)
    elif audit == "pricing":
        if epsilon is not None:
            fail("--epsilon applies to --audit fairness only (pricing statistics are not noised; see docs/audit.md)")
        _not_with({k: v for k, v in fair_flags.items() if k != "--epsilon"}, "to --audit fairness only")
        if not (price and item and time):
            fail("--audit pricing needs --price, --item and --time")
        if min_clusters is not None and customer is None:
            fail("--min-clusters counts customers: give --customer COLUMN")
        spec = _pricing_spec(price, item, time, groups, by, reference, threshold_pct, alpha, customer, returning,
                             window, min_count, min_clusters, flag_rule, continuous, slope, policy, federated=True)
    else:
        fail(f"--audit {audit!r}: use fairness or pricing")
    from audit.federated import DPConfig, federated_fairness, federated_pricing

    dp = None
    if epsilon is not None:
        from audit.federated import unit_rows
        from privacy.accounting import default_delta

        dp = DPConfig(epsilon=epsilon, delta=delta if delta is not None else
                      default_delta(sum(unit_rows(u) for u in units)))

    accounts = None
    if dp is not None:
        from clients.unit_privacy import events_fingerprint
        from privacy.budget import ContextStore, LedgerStore, UnitPrivacy
        from privacy.ledger import BudgetLedger

        def account(path: Path) -> UnitPrivacy:
            from flwr.app import RecordDict

            from audit.stats import read_table

            name = dataset or events_fingerprint(read_table(path))
            if ledger is None:
                return UnitPrivacy(path.stem, name, ContextStore(RecordDict(), path.stem, name))
            book = BudgetLedger(ledger)
            return UnitPrivacy(path.stem, name, LedgerStore(book, path.stem, name), book.budget(path.stem, name))

        accounts = [account(u) for u in units]

    try:
        with console.status(f"federated {audit} audit over {len(units)} units ({engine})..."):
            if engine == "flower":
                from audit.flower_app import run_federated_audit

                rep = run_federated_audit(units, spec, dp=dp, ledger_path=ledger, dataset_id=dataset)
            elif audit == "fairness":
                rep = federated_fairness(units, spec, dp=dp, accounts=accounts)
            else:
                rep = federated_pricing(units, spec)
    except FedsegError as exc:
        fail(str(exc), exc.exit_code)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if dp is not None:
        where = f"recorded by each unit in {ledger}" if ledger else "pass --ledger to keep it in the units' ledger"
        console.print(f"privacy: each unit spent epsilon {dp.epsilon:g} (delta {dp.delta:g}) per end user on its noisy "
                      f"statistics; {where}", highlight=False)
    _finish(rep, out, trail, signing_key)


@app.command("keygen")
def keygen_cmd(
    directory: Annotated[Path, typer.Argument(help="Directory for audit_signing.key (0600) and audit_signing.pub.")],
    force: Annotated[bool, typer.Option(help="Replace an existing key pair.")] = False,
) -> None:
    """Create the Ed25519 key pair that signs audit-trail entries."""
    from audit.trail import TrailError, fingerprint, keygen, load_public

    try:
        priv, pub = keygen(directory, force=force)
    except (TrailError, OSError) as exc:
        fail(str(exc))
    console.print(f"private key {priv} (mode 0600), public key {pub}, fingerprint {fingerprint(load_public(pub))}")


@app.command("verify")
def verify_cmd(
    log: Annotated[Path, typer.Argument(help="Audit log to check.")],
    public_key: Annotated[Path | None, typer.Option(help="Require every entry to be signed by this key.")] = None,
    check_files: Annotated[bool, typer.Option(
        "--check-files/--log-only",
        help="Check every file whose hash the trail holds (report.json, report.html); --log-only checks the "
             "log and head alone.")] = True,
) -> None:
    """Check the trail and the files it hashes: exits 1 naming the first edited, removed or reordered
    entry, or a missing or changed file."""
    from audit.trail import TrailError, verify

    try:
        res = verify(log, public_key=public_key, check_files=check_files)
    except TrailError as exc:
        fail(str(exc))
    if res.ok:
        files = f", {res.files_checked} files match their hashes" if check_files else " (log only: files not checked)"
        console.print(f"[green]OK[/]: {res.entries} entries, chain intact{files}; head {res.head_hash}")
        return
    console.print(f"[bold red]TAMPERED[/]: {res.reason}")
    raise typer.Exit(1)
