"""``fedseg unit update / status / actions / tags``: a unit's incremental monitoring (docs/monitoring.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from clients.cli_options import DateFormat, Encoding, Sep, file_format
from fedseg.console import console
from fedseg.contract import OnError
from fedseg.errors import FedsegError

app = typer.Typer(help="A unit's incremental monitoring state: updates with new events, warnings and actions, "
                       "tags.", no_args_is_help=True)

StateOption = Annotated[Path, typer.Option(help="The unit's monitoring state (SQLite file; created by the first update).")]
DEFAULT_STATE = Path("fedseg-output/monitor.sqlite")


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes: a batch file's identity (applied twice, it is skipped)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:32]


def _date(value: str | None, flag: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise FedsegError(f"{flag} {value!r} is not a date; use YYYY-MM-DD") from None


def _thresholds(path: Path | None) -> dict[str, list[int]] | None:
    """``rfm_threshold_bins`` of a ``fedseg segment`` report (segments.json)."""
    if path is None:
        return None
    try:
        bins = json.loads(path.read_text())["rfm_threshold_bins"]
        return {name: [int(b) for b in bins[name]] for name in ("recency", "frequency", "monetary")}
    except FileNotFoundError:
        raise FedsegError(f"--thresholds {path}: no such file") from None
    except (ValueError, KeyError, TypeError):
        raise FedsegError(f"--thresholds {path}: not a fedseg segment report (segments.json with "
                          "rfm_threshold_bins)") from None


@app.command("update")
def update(
    events: Annotated[Path | None, typer.Option(help="New events since the last update (.csv/.parquet, the data contract).")] = None,
    state: StateOption = DEFAULT_STATE,
    as_of: Annotated[str | None, typer.Option(help="The state's new day, YYYY-MM-DD (default: the later of the state's day and the last event's). Without --events: move the clock (inactivity warnings still fire).")] = None,
    scores: Annotated[Path | None, typer.Option(help="Churn scores (fedseg score's output: user_id, churn_probability): warn when a user's crosses --churn-threshold.")] = None,
    inactivity_days: Annotated[float | None, typer.Option(help="Warn after this many days without any event (kept in the state; default 30).")] = None,
    churn_threshold: Annotated[float | None, typer.Option(help="Warn at this churn probability (kept in the state; default 0.7).")] = None,
    thresholds: Annotated[Path | None, typer.Option(help="segments.json of a federated fedseg segment run: value tiers on the federation's RFM scale (default: the unit's own, fixed at the first update).")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Where this update's alerts_<day>.parquet and actions_<day>.parquet go (default: beside the state).")] = None,
    on_error: Annotated[OnError, typer.Option(help="fail: stop at invalid rows; quarantine: set them aside.")] = OnError.fail,
    sep: Sep = ",",
    encoding: Encoding = "utf-8",
    date_format: DateFormat = None,
) -> None:
    """Fold new events into the unit's monitoring state; emit transitions, tier changes and warnings
    as they occur, and the actions they call for (under the contact caps). Idempotent: a batch
    applied twice changes nothing; a crash mid-update leaves the previous state."""
    import pandas as pd

    from clients.ingest import default_quarantine_path, read_events
    from clients.monitor import MonitorConfig, apply_update, load_config
    from clients.state_store import StateStore
    from fedseg.contract import empty_events
    from fedseg.io import write_bytes, write_table

    day = _date(as_of, "--as-of")
    if events is None and day is None:
        raise FedsegError("give --events FILE (new events), --as-of DAY (move the clock), or both")
    started = time.perf_counter()
    fmt = file_format(sep, encoding, date_format)
    if events is not None:
        with console.status(f"reading {events}"):
            result = read_events(events, on_error=on_error, file_format=fmt,
                                 quarantine_path=default_quarantine_path(events, state))
        console.print(result.report.summary(), highlight=False)
        frame, batch_id, source = result.frame, file_digest(events), str(events)
    else:
        frame, batch_id, source = empty_events(), "clock", "(no events)"
    score_frame = None
    if scores is not None:
        if not scores.exists():
            raise FedsegError(f"--scores {scores}: no such file; fedseg score writes one")
        score_frame = pd.read_parquet(scores) if scores.suffix in (".parquet", ".pq") else pd.read_csv(scores)
        if not {"user_id", "churn_probability"} <= set(score_frame.columns):
            raise FedsegError(f"--scores {scores}: needs the columns user_id and churn_probability")
        score_frame["user_id"] = score_frame["user_id"].astype(str)
    store = StateStore(state)
    try:
        config = None
        if inactivity_days is not None or churn_threshold is not None or thresholds is not None:
            current = load_config(store, None)
            changes = {k: v for k, v in (("inactivity_days", inactivity_days), ("churn_threshold", churn_threshold),
                                         ("rfm_thresholds", _thresholds(thresholds))) if v is not None}
            try:
                config = MonitorConfig.model_validate({**current.model_dump(), **changes})
            except ValueError as exc:
                raise FedsegError(f"monitoring settings: {exc.errors()[0]['msg']}") from None  # type: ignore[attr-defined]
        with console.status("updating the state") as status:
            outcome = apply_update(store, frame, source=source, as_of=day, config=config, scores=score_frame,
                                   batch_id=batch_id, on_progress=lambda stage: status.update(stage))
    finally:
        store.close()
    if outcome.status == "already applied":
        console.print(f"{source}: already applied (state at {outcome.as_of}); nothing changed", highlight=False)
        return
    folder = out_dir or state.parent
    written = []
    if outcome.status != "baseline":
        for name, table, segment in (("alerts", outcome.alerts, outcome.segments[0]),
                                     ("actions", outcome.actions, outcome.segments[1])):
            path = folder / f"{name}_{outcome.as_of}.parquet"
            # the log's Parquet segment is this table already encoded: written as it is
            written.append(write_bytes(segment, path) if segment else write_table(table, path))
    kinds = outcome.alerts["kind"].value_counts().to_dict() if len(outcome.alerts) else {}
    console.print(
        f"{outcome.status}: {outcome.events:,} events ({outcome.duplicates:,} already applied, dropped) for "
        f"{outcome.users_in_batch:,} users ({outcome.new_users:,} new), {outcome.timers_fired:,} users re-checked by "
        f"time; state at {outcome.as_of} in {time.perf_counter() - started:.1f} s -> {state}", highlight=False)
    if outcome.status == "baseline":
        console.print("baseline: the first update builds the state and emits no alerts; later updates do",
                      highlight=False)
        return
    acted = int((~outcome.actions["suppressed"].astype(bool)).sum()) if len(outcome.actions) else 0
    console.print(f"alerts: {len(outcome.alerts):,} (" + ", ".join(f"{k} {v:,}" for k, v in kinds.items()) +
                  f"); actions: {acted:,} to send, {len(outcome.actions) - acted:,} suppressed by the contact caps"
                  + (f" -> {', '.join(str(p) for p in written)}" if written else ""), highlight=False)


@app.command("status")
def status(state: StateOption = DEFAULT_STATE) -> None:
    """The state's day, users by lifecycle stage and value tier, batches, alerts and actions."""
    import numpy as np

    from clients.monitor import date_of
    from clients.state_store import StateStore
    from fedseg.config import LIFECYCLE_STAGES
    from fedseg.segments import VALUE_TIERS

    if not state.exists():
        raise FedsegError(f"{state}: no monitoring state; fedseg unit update --events FILE --state {state} makes one")
    store = StateStore(state)
    try:
        day = store.meta("as_of")
        stages = np.zeros(len(LIFECYCLE_STAGES), dtype=np.int64)
        tiers = np.zeros(len(VALUE_TIERS), dtype=np.int64)
        for _, recs in store.scan():
            stages += np.bincount(recs["stage"][recs["stage"] >= 0], minlength=len(stages))
            tiers += np.bincount(recs["tier"][recs["tier"] >= 0], minlength=len(tiers))
        batches = store.frame("SELECT COUNT(*) AS n, SUM(events) AS events, SUM(alerts) AS alerts, "
                              "SUM(actions) AS actions FROM batches").iloc[0]
    finally:
        store.close()
    console.print(f"{state}: {int(stages.sum()):,} users as of {date_of(int(day)) if day else '-'}; "
                  f"{int(batches['n'] or 0)} updates, {int(batches['events'] or 0):,} events, "
                  f"{int(batches['alerts'] or 0):,} alerts, {int(batches['actions'] or 0):,} actions", highlight=False)
    console.print("lifecycle: " + ", ".join(f"{s} {n:,}" for s, n in zip(LIFECYCLE_STAGES, stages.tolist())) +
                  " | tiers: " + ", ".join(f"{t} {n:,}" for t, n in zip(VALUE_TIERS, tiers.tolist())), highlight=False)


@app.command("actions")
def actions(
    state: StateOption = DEFAULT_STATE,
    since: Annotated[str | None, typer.Option(help="Only updates on or after this day, YYYY-MM-DD.")] = None,
    out: Annotated[Path, typer.Option(help="Output file (.parquet or .csv).")] = Path("fedseg-output/actions.parquet"),
    alerts: Annotated[bool, typer.Option("--alerts", help="Export the alerts instead of the actions.")] = False,
) -> None:
    """Export the unit's action list (or its alerts) from the state; it never leaves the unit."""
    from clients.monitor import day_of
    from clients.state_store import StateStore
    from fedseg.io import check_table_path, write_table

    check_table_path(out)
    if not state.exists():
        raise FedsegError(f"{state}: no monitoring state; fedseg unit update --events FILE --state {state} makes one")
    store = StateStore(state)
    try:
        since_day = _date(since, "--since")
        table = store.log("alerts" if alerts else "actions", None if since_day is None else day_of(since_day))
    finally:
        store.close()
    write_table(table, out)
    console.print(f"{len(table):,} {'alerts' if alerts else 'actions'} -> {out}", highlight=False)


@app.command("tags")
def unit_tags(
    state: StateOption = DEFAULT_STATE,
    tags_file: Annotated[Path | None, typer.Option("--tags", help="TOML file of tag rules (default: the documented default set).")] = None,
    report: Annotated[Path | None, typer.Option(help="tags.json of a federated fedseg tags run: its quantiles (the federation's scale). Default: this unit's own quantiles.")] = None,
    out: Annotated[Path, typer.Option(help="Per-user tags (.parquet or .csv); they never leave the unit.")] = Path("fedseg-output/tags.parquet"),
) -> None:
    """Tag every user of the monitoring state as of its day (rules in docs/monitoring.md)."""
    import numpy as np
    import pandas as pd

    from clients.monitor import state_features
    from clients.state_store import StateStore
    from clients.tags import quantile_histograms, tag_columns, tag_users
    from fedseg.io import check_table_path, write_table
    from fedseg.tags import load_rules, needed_quantiles, quantiles_from_histograms

    check_table_path(out)
    rules = load_rules(tags_file)
    if not state.exists():
        raise FedsegError(f"{state}: no monitoring state; fedseg unit update --events FILE --state {state} makes one")
    store = StateStore(state)
    try:
        features = state_features(store)
    finally:
        store.close()
    columns = tag_columns(features)
    quantiles: dict[tuple[str, int], float] = {}
    if report is not None:
        try:
            given = json.loads(report.read_text())["quantiles"]
        except (FileNotFoundError, ValueError, KeyError):
            raise FedsegError(f"--report {report}: not a tags.json written by fedseg tags") from None
        for rule in rules:
            for feature, q in rule.quantiles:
                key = f"q{q}({feature})"
                if key not in given:
                    raise FedsegError(f"--report {report} has no {key}, which tag {rule.name!r} needs; run fedseg tags "
                                      "with these rules")
                quantiles[(feature, q)] = float(given[key])
    else:
        quantiles = quantiles_from_histograms(rules, quantile_histograms(columns, needed_quantiles(rules)))
    tags = tag_users(rules, columns, quantiles)
    table = pd.concat([features[["user_id", "lifecycle_stage"]].reset_index(drop=True), tags], axis=1)
    table["tags"] = [",".join(t for t, on in zip(tags.columns, row) if on) for row in tags.to_numpy()]
    write_table(table, out)
    shares = ", ".join(f"{c} {100 * float(np.mean(tags[c])):.1f}%" for c in tags.columns)
    console.print(f"{len(table):,} users tagged ({shares}) with "
                  f"{'the federation' if report else 'this unit'}'s quantiles -> {out}", highlight=False)
    if any(r.features & {"discount_share", "relative_price", "priced_purchases", "churn_probability"} for r in rules):
        console.print("note: the state keeps no prices or scores: price and churn-probability conditions are false "
                      "here (fedseg tags computes them from the events)", highlight=False)
