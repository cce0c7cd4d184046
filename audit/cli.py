"""``fedseg audit ...``: fairness, pricing and federated audits, keys and the trail."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedseg.errors import FedsegError
from fedseg.console import console, fail

app = typer.Typer(help="Fairness and pricing audits (pooled or federated) with a signed, hash-chained trail.",
                  no_args_is_help=True)

Trail = Annotated[Path | None, typer.Option("--trail", help="Audit log (JSON lines) to append a signed entry to.")]
Key = Annotated[Path | None, typer.Option("--signing-key", help="Ed25519 private key (from `fedseg audit keygen`).")]
Groups = Annotated[list[str], typer.Option("--group", help="Protected attribute column (repeatable).")]
Out = Annotated[Path, typer.Option("--out", help="Directory for report.json and report.html.")]


def _check_trail(trail: Path | None, key: Path | None) -> None:
    if trail is not None and key is None:
        fail("--trail needs --signing-key KEY (create one with `fedseg audit keygen DIR`).")
    if key is not None and not key.exists():
        fail(f"{key}: no such signing key; create one with `fedseg audit keygen DIR`.")


def _finish(rep, out: Path, trail: Path | None, key: Path | None) -> None:  # noqa: ANN001
    from audit.report_html import print_rules, write_report
    from audit.trail import TrailError, append

    j, h = write_report(rep, out)
    print_rules(rep, console)
    console.print(f"wrote {j} and {h}")
    if trail is not None and key is not None:
        try:
            e = append(trail, j, key, kind=rep.kind, extra_files=[h])
        except TrailError as exc:
            fail(str(exc))
        console.print(f"trail: entry {e['seq']} appended to {trail} (sha256 {e['report_sha256'][:16]}...)")
    if any(not r.passed for r in rep.rules):
        console.print("[bold red]result: FAIL[/] (see the rules above)")
    else:
        console.print("[green]result: PASS[/]")


def _fairness_spec(label, score, outcome, threshold, groups, intersect, bootstrap, seed, min_group_size,
                   auc_bins=None):  # noqa: ANN001, ANN202
    from pydantic import ValidationError

    from audit.fairness import FairnessSpec

    if not groups:
        fail("give at least one --group COLUMN.")
    try:
        return FairnessSpec(label=label, score=score, outcome=outcome, threshold=threshold, groups=groups,
                            intersect=intersect, bootstrap=bootstrap, seed=seed, min_group_size=min_group_size,
                            auc_bins=auc_bins)
    except ValidationError as exc:
        fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))


def _pricing_spec(price, item, time, groups, by, reference, threshold_pct, alpha, customer, returning, window,
                  min_count):  # noqa: ANN001, ANN202
    from pydantic import ValidationError

    from audit.pricing import PricingSpec

    refs = {}
    for r in reference:
        if "=" not in r:
            fail(f"--reference {r!r}: use GROUP=LEVEL, e.g. --reference loyalty=new")
        k, v = r.split("=", 1)
        if k not in groups:
            fail(f"--reference {r!r}: {k!r} is not one of the --group columns {groups}")
        refs[k] = v
    if not groups and not returning:
        fail("give at least one --group COLUMN (or --returning COLUMN for the renewal check).")
    try:
        return PricingSpec(price=price, item=item, time=time, groups=groups, by=by, references=refs,
                           threshold_pct=threshold_pct, alpha=alpha, customer=customer, returning=returning,
                           window=window, min_count=min_count)
    except ValidationError as exc:
        fail("; ".join(e["msg"] for e in exc.errors()))


@app.command("fairness")
def fairness(
    input: Annotated[Path, typer.Option("--input", help="Scores or decisions (.parquet or .csv), one row per user.")],
    groups: Groups,
    out: Out,
    label: Annotated[str | None, typer.Option(help="True outcome column (0/1).")] = None,
    score: Annotated[str | None, typer.Option(help="Score column in [0, 1].")] = None,
    outcome: Annotated[str | None, typer.Option(help="Decision column (segment, offer) instead of a score.")] = None,
    threshold: Annotated[float, typer.Option(help="Decision threshold on the score.")] = 0.5,
    intersect: Annotated[bool, typer.Option(help="Also audit intersections of the groups.")] = False,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates B (0 = no intervals).")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    min_group_size: Annotated[int, typer.Option(help="Suppress groups with fewer rows.")] = 30,
    trail: Trail = None,
    signing_key: Key = None,
) -> None:
    """Group fairness of scores (selection rate, TPR, FPR, precision, AUC, calibration) or decisions."""
    _check_trail(trail, signing_key)
    spec = _fairness_spec(label, score, outcome, threshold, groups, intersect, bootstrap, seed, min_group_size)
    from audit.fairness import fairness_audit
    from audit.stats import read_table

    cols = [c for c in (label, score, outcome) if c] + list(groups)
    try:
        with console.status("fairness audit..."):
            rep = fairness_audit(read_table(input, list(dict.fromkeys(cols))), spec)
    except ValueError as exc:
        fail(f"{input}: {exc}")
    _finish(rep, out, trail, signing_key)


_PRICING_HELP = dict(
    price="Unit price column (currency units, > 0).", item="Item column.",
    time="Time column: datetime (binned by --window) or a window id (--window raw).",
)


@app.command("pricing")
def pricing(
    input: Annotated[Path, typer.Option("--input", help="Transactions (.parquet or .csv).")],
    price: Annotated[str, typer.Option(help=_PRICING_HELP["price"])],
    item: Annotated[str, typer.Option(help=_PRICING_HELP["item"])],
    time: Annotated[str, typer.Option(help=_PRICING_HELP["time"])],
    out: Out,
    groups: Groups = [],  # noqa: B006
    by: Annotated[str | None, typer.Option(help="Slice column (e.g. category): audit each value too.")] = None,
    reference: Annotated[list[str], typer.Option(help="GROUP=LEVEL reference (default: the largest level).")] = [],  # noqa: B006
    threshold_pct: Annotated[float, typer.Option(help="Flag premiums above this percentage.")] = 1.0,
    alpha: Annotated[float, typer.Option(help="Significance level after Holm correction.")] = 0.05,
    customer: Annotated[str | None, typer.Option(help="Customer column (cluster-robust intervals).")] = None,
    returning: Annotated[str | None, typer.Option(help="Boolean returning-customer column (renewal check).")] = None,
    window: Annotated[str, typer.Option(help="week, day or raw (time column is already a window id).")] = "week",
    min_count: Annotated[int, typer.Option(help="Suppress comparisons with fewer rows in shared strata.")] = 30,
    trail: Trail = None,
    signing_key: Key = None,
) -> None:
    """Premiums groups pay over a reference for the SAME item in the SAME window (loyalty penalty)."""
    _check_trail(trail, signing_key)
    spec = _pricing_spec(price, item, time, groups, by, reference, threshold_pct, alpha, customer, returning,
                         window, min_count)
    from audit.pricing import pricing_audit
    from audit.stats import read_table

    cols = [price, item, time, *groups] + [c for c in (by, customer, returning) if c]
    try:
        with console.status("reading transactions..."):
            frame = read_table(input, list(dict.fromkeys(cols)))
        with console.status(f"pricing audit of {len(frame):,} transactions..."):
            rep = pricing_audit(frame, spec)
    except ValueError as exc:
        fail(f"{input}: {exc}")
    _finish(rep, out, trail, signing_key)


@app.command("federated")
def federated(
    units: Annotated[list[Path], typer.Option("--unit", help="A unit's file (repeatable); each is read on its own.")],
    out: Out,
    audit: Annotated[str, typer.Option("--audit", help="fairness or pricing.")] = "fairness",
    groups: Groups = [],  # noqa: B006
    engine: Annotated[str, typer.Option(help="flower (Flower's simulation engine) or inprocess.")] = "flower",
    label: Annotated[str | None, typer.Option(help="fairness: true outcome column.")] = None,
    score: Annotated[str | None, typer.Option(help="fairness: score column.")] = None,
    outcome: Annotated[str | None, typer.Option(help="fairness: decision column.")] = None,
    threshold: Annotated[float, typer.Option(help="fairness: threshold.")] = 0.5,
    intersect: Annotated[bool, typer.Option(help="fairness: intersections.")] = False,
    bootstrap: Annotated[int, typer.Option(help="fairness: bootstrap replicates.")] = 1000,
    seed: Annotated[int, typer.Option(help="fairness: bootstrap seed.")] = 0,
    min_group_size: Annotated[int, typer.Option(help="fairness: suppress smaller groups.")] = 30,
    auc_bins: Annotated[int, typer.Option(help="fairness: score histogram bins for the federated AUC.")] = 10_000,
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
    by: Annotated[str | None, typer.Option(help="pricing: slice column.")] = None,
    reference: Annotated[list[str], typer.Option(help="pricing: GROUP=LEVEL.")] = [],  # noqa: B006
    threshold_pct: Annotated[float, typer.Option(help="pricing: flag threshold, %.")] = 1.0,
    alpha: Annotated[float, typer.Option(help="pricing: significance after Holm.")] = 0.05,
    customer: Annotated[str | None, typer.Option(help="pricing: customer column.")] = None,
    returning: Annotated[str | None, typer.Option(help="pricing: returning-customer column.")] = None,
    window: Annotated[str, typer.Option(help="pricing: week, day or raw.")] = "week",
    min_count: Annotated[int, typer.Option(help="pricing: suppress smaller comparisons.")] = 30,
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
    if audit == "fairness":
        spec = _fairness_spec(label, score, outcome, threshold, groups, intersect, bootstrap, seed, min_group_size,
                              auc_bins=auc_bins if outcome is None else None)
    elif audit == "pricing":
        if not (price and item and time):
            fail("--audit pricing needs --price, --item and --time")
        spec = _pricing_spec(price, item, time, groups, by, reference, threshold_pct, alpha, customer, returning,
                             window, min_count)
    else:
        fail(f"--audit {audit!r}: use fairness or pricing")
    from audit.federated import DPConfig, federated_fairness, federated_pricing

    if delta is not None and epsilon is None:
        fail("--delta without --epsilon: the audit adds no noise; give --epsilon for differential privacy")
    dp = None
    if epsilon is not None:
        from audit.federated import unit_rows
        from privacy.accounting import default_delta

        dp = DPConfig(epsilon=epsilon, delta=delta if delta is not None else
                      default_delta(sum(unit_rows(u) for u in units)))
    if dp is not None and audit != "fairness":
        fail("--epsilon applies to --audit fairness only (pricing statistics are not noised; see docs/audit.md)")

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
    except ValueError as exc:
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
    except TrailError as exc:
        fail(str(exc))
    console.print(f"private key {priv} (mode 0600), public key {pub}, fingerprint {fingerprint(load_public(pub))}")


@app.command("verify")
def verify_cmd(
    log: Annotated[Path, typer.Argument(help="Audit log to check.")],
    public_key: Annotated[Path | None, typer.Option(help="Require every entry to be signed by this key.")] = None,
    check_files: Annotated[bool, typer.Option(help="Also check that report files still match their hashes.")] = False,
) -> None:
    """Check the trail: exits 1 naming the first edited, removed or reordered entry."""
    from audit.trail import TrailError, verify

    try:
        res = verify(log, public_key=public_key, check_files=check_files)
    except TrailError as exc:
        fail(str(exc))
    if res.ok:
        console.print(f"[green]OK[/]: {res.entries} entries, chain intact; head {res.head_hash}")
        return
    console.print(f"[bold red]TAMPERED[/]: {res.reason}")
    raise typer.Exit(1)
