"""Reading a unit's event and user files into the canonical frames, row by row accountable.

Every row read is either accepted or rejected with a reason; nothing is dropped silently:
``rows_read == rows_accepted + rows_rejected`` always holds and is checked before returning.

- ``on_error=fail`` (default): any rejected row raises :class:`IngestError` whose message
  lists the first errors (file, line, column, reason) and the total count.
- ``on_error=quarantine``: rejected rows are written, with their original values untouched,
  to a quarantine file (same columns, plus ``_line`` and ``_reason``) and ingestion goes on.

Whole-file problems (empty file, missing columns, undecodable bytes, a column of a type
that cannot hold the field) always raise :class:`IngestError`, whatever ``on_error`` says.

Line numbers are 1-based physical lines of a CSV file with the header on line 1 (a quoted
field that spans lines shifts later numbers); for Parquet they are 1-based row numbers.

Validation is vectorised over whole columns: checks cost O(rows) numpy work, not a
Python loop per row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator

from fedseg.errors import FedsegError

from fedseg.contract import (
    EVENT_COLUMNS,
    REQUIRED_EVENT_COLUMNS,
    REQUIRED_USER_COLUMNS,
    OnError,
)

#: How many row errors an :class:`IngestError` message lists before summarising.
MAX_LISTED_ERRORS = 10


class IngestError(FedsegError):
    """A file cannot be ingested; the message says what is wrong, where, and what to do."""


class FileFormat(BaseModel):
    """How a unit's text file is written (Parquet files carry their own types).

    ``date_format``: None reads ISO-8601 (``2024-03-01T12:00:00Z``) and integer epoch times
    (seconds, or milliseconds when above 1e11); otherwise a ``strftime`` pattern such as
    ``%d/%m/%Y %H:%M`` for every timestamp (times in the pattern are UTC unless it has ``%z``).
    """

    sep: str = Field(",", min_length=1, description="Field delimiter of a CSV file (',', ';', '\\t', '|').")
    encoding: str = Field("utf-8", description="Text encoding of a CSV file (utf-8, latin-1, cp1252, ...).")
    date_format: str | None = Field(None, description="strftime pattern of the timestamps; None: ISO-8601 or "
                                    "integer epoch seconds/milliseconds.")

    @field_validator("sep")
    @classmethod
    def _sep(cls, value: str) -> str:
        value = {"\\t": "\t", "tab": "\t"}.get(value, value)
        if len(value) != 1:
            raise ValueError(f"--sep {value!r}: a delimiter is one character (',', ';', '\\t', '|')")
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"--encoding {value!r} is not a known text encoding (utf-8, latin-1, cp1252, ...)") from None
        return value


#: Epoch integers at least this large are milliseconds; below it, seconds.
EPOCH_MS_FROM = 10**11
#: Plausible epoch seconds start here (1973-03-03): smaller integers are not timestamps.
EPOCH_S_FROM = 10**8
#: Formats tried to suggest --date-format when most timestamps do not parse.
COMMON_DATE_FORMATS = ("%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y", "%Y/%m/%d", "%Y%m%d", "%d/%m/%Y %H:%M",
                       "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S", "%d.%m.%Y %H:%M",
                       "%Y/%m/%d %H:%M:%S", "%d-%b-%Y")


class RowError(BaseModel):
    """One rejected row."""

    file: str
    line: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.column + ': ' if self.column else ''}{self.reason}"


class IngestReport(BaseModel):
    """What happened to every row of one file."""

    file: str
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    quarantine_file: str | None = None
    errors: list[RowError]
    warnings: list[str] = []
    hint: str | None = Field(None, description="One line when most rows fail for the same reason, with what to try.")

    def summary(self) -> str:
        text = (
            f"{self.file}: {self.rows_read} rows read, {self.rows_accepted} accepted, "
            f"{self.rows_rejected} rejected"
        )
        if self.quarantine_file:
            text += f" (quarantined to {self.quarantine_file})"
        return text


@dataclass
class IngestResult:
    """The canonical frame and the report of how it was obtained."""

    frame: pd.DataFrame
    report: IngestReport
    rejected: pd.DataFrame = field(default_factory=pd.DataFrame)


# --------------------------------------------------------------------------------------
# Reading raw files into string columns
# --------------------------------------------------------------------------------------


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise IngestError(f"{path}: the file is empty; expected a header line and rows.")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{path}: cannot decode byte 0x{data[exc.start]:02x} at offset {exc.start} as "
            f"{encoding}; save the file as UTF-8, or pass --encoding with the file's real "
            "encoding (for example latin-1 or cp1252)."
        ) from None


def _read_csv_strings(path: Path, file_format: FileFormat) -> tuple[pd.DataFrame, np.ndarray, list[RowError]]:
    """All cells as strings; returns the frame, each row's line number and malformed lines."""
    text = _decode(path, file_format.encoding).removeprefix("\ufeff")
    try:
        frame = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False,
            skipinitialspace=True, sep=file_format.sep,
        )
        lines = np.arange(2, len(frame) + 2, dtype=np.int64)
        return frame, lines, []
    except pd.errors.EmptyDataError:
        raise IngestError(f"{path}: the file is empty; expected a header line and rows.") from None
    except pd.errors.ParserError:
        pass  # some lines have the wrong number of fields: sort them out line by line
    reader = csv.reader(io.StringIO(text), skipinitialspace=True, delimiter=file_format.sep)
    header = next(reader)
    rows: list[list[str]] = []
    row_lines: list[int] = []
    bad: list[RowError] = []
    for row in reader:
        line = reader.line_num
        if len(row) != len(header):
            bad.append(RowError(
                file=str(path), line=line, column=None,
                reason=f"expected {len(header)} fields, found {len(row)}",
            ))
        else:
            rows.append(row)
            row_lines.append(line)
    frame = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(
        {h: pd.Series([], dtype=str) for h in header}
    )
    return frame, np.asarray(row_lines, dtype=np.int64), bad


def _read_table(path: Path, file_format: FileFormat) -> tuple[pd.DataFrame, np.ndarray, list[RowError], str]:
    if not path.exists():
        raise IngestError(f"{path}: no such file; check the path.")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory; give the path of a .csv or .parquet file.")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        if path.stat().st_size == 0:
            raise IngestError(f"{path}: the file is empty; expected a Parquet file with rows.")
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise IngestError(f"{path}: not a readable Parquet file ({exc}).") from None
        return frame.reset_index(drop=True), np.arange(1, len(frame) + 1), [], "parquet"
    if suffix in (".csv", ".txt", ".tsv"):
        frame, lines, bad = _read_csv_strings(path, file_format)
        frame.columns = [str(c).strip() for c in frame.columns]
        return frame, lines, bad, "csv"
    raise IngestError(f"{path}: unknown file type {suffix!r}; use .csv or .parquet.")


# --------------------------------------------------------------------------------------
# Column parsers: each returns parsed values and a boolean mask of bad rows with reasons
# --------------------------------------------------------------------------------------


def _is_blank(col: pd.Series) -> np.ndarray:
    if col.dtype == object or pd.api.types.is_string_dtype(col):
        return (col.isna() | (col.astype(str).str.strip() == "")).to_numpy()
    return col.isna().to_numpy()


def _epoch(values: pd.Series) -> pd.Series:
    """Integer epoch times (seconds; milliseconds from 1e11) as UTC datetimes; others NaT."""
    numbers = pd.to_numeric(values, errors="coerce")
    plausible = numbers.abs() >= EPOCH_S_FROM
    millis = numbers.where(numbers.abs() >= EPOCH_MS_FROM, numbers * 1000)
    return pd.to_datetime(millis.where(plausible), unit="ms", utc=True, errors="coerce")


def _parse_timestamps(col: pd.Series, name: str, path: Path, date_format: str | None = None
                      ) -> tuple[pd.Series, np.ndarray]:
    """Naive-UTC datetime64[ns]; timezone-aware values are converted to UTC. Text is read with
    ``date_format`` when given, else as ISO-8601, or as integer epoch seconds/milliseconds."""
    if pd.api.types.is_datetime64_any_dtype(col):
        ts = col
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        ts = ts.astype("datetime64[ns]")
        return ts, ts.isna().to_numpy()
    if pd.api.types.is_integer_dtype(col) or pd.api.types.is_float_dtype(col):
        ts = _epoch(col).dt.tz_localize(None).astype("datetime64[ns]")
        return ts, ts.isna().to_numpy()
    if col.dtype != object and not pd.api.types.is_string_dtype(col):
        raise IngestError(
            f"{path}: column {name!r} has type {col.dtype}; expected timestamps, integer epoch times or "
            "ISO-8601 strings such as 2024-03-01T12:00:00Z."
        )
    text = col.astype(str).str.strip()
    if date_format is not None:
        ts = pd.to_datetime(text, errors="coerce", utc=True, format=date_format)
    else:
        ts = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
        digits = text.str.fullmatch(r"-?\d+").fillna(False).to_numpy(dtype=bool)
        if digits.any():
            ts = ts.where(~digits, _epoch(text.where(digits)))
    ts = ts.dt.tz_localize(None).astype("datetime64[ns]")
    return ts, ts.isna().to_numpy()


def guess_date_format(values: pd.Series) -> str | None:
    """The common strftime pattern that parses most of ``values`` (at least half), if any."""
    sample = values.astype(str).str.strip().head(200)
    best, best_share = None, 0.5
    for pattern in COMMON_DATE_FORMATS:
        share = pd.to_datetime(sample, format=pattern, errors="coerce").notna().mean()
        if share > best_share:
            best, best_share = pattern, share
    return best


def _parse_numbers(col: pd.Series, name: str, path: Path) -> tuple[pd.Series, np.ndarray]:
    """float64; bad = present but not a finite number."""
    if pd.api.types.is_bool_dtype(col):
        raise IngestError(f"{path}: column {name!r} holds booleans; expected numbers.")
    if pd.api.types.is_numeric_dtype(col):
        values = col.astype("float64")
        bad = ~np.isfinite(values.fillna(0.0).to_numpy())
        return values, bad
    if col.dtype != object and not pd.api.types.is_string_dtype(col):
        raise IngestError(f"{path}: column {name!r} has type {col.dtype}; expected numbers.")
    text = col.astype(str).str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = (values.isna() & (text != "")).to_numpy() | ~np.isfinite(values.fillna(0.0).to_numpy())
    return values.astype("float64"), bad


def _strings(col: pd.Series) -> pd.Series:
    """Stripped strings as an object column; blank or missing values become None."""
    text = col.astype("string").str.strip()
    blank = (text.isna() | (text == "")).to_numpy(dtype=bool)
    values = text.to_numpy(dtype=object, na_value=None)
    values[blank] = None
    return pd.Series(values, index=col.index, dtype=object)


class _Rejections:
    """Collects the first reason for each rejected row."""

    def __init__(self, n: int) -> None:
        self.mask = np.zeros(n, dtype=bool)
        self.reason = np.empty(n, dtype=object)
        self.column = np.empty(n, dtype=object)

    def add(self, bad: np.ndarray, column: str | None,
            reasons: np.ndarray | str | Callable[[np.ndarray], np.ndarray]) -> None:
        """``reasons``: one for all, one per row, or a function of the new rows' positions that
        gives theirs (reasons quoting values are formatted for the rejected rows only)."""
        new = bad & ~self.mask
        if not new.any():
            return
        if isinstance(reasons, str):
            self.reason[new] = reasons
        elif callable(reasons):
            self.reason[new] = reasons(np.flatnonzero(new))
        else:
            self.reason[new] = reasons[new]
        self.column[new] = column
        self.mask |= new


def _values_reason(template: str, raw: pd.Series) -> Callable[[np.ndarray], np.ndarray]:
    """The reason of each rejected row quoting its value, ``template.format(str(value))``, formatted
    only for those rows (a well-formed file formats nothing). Values are turned to text as the
    whole column would be (pandas formats datetimes per column, so those columns are formatted whole)."""
    def reasons(rows: np.ndarray) -> np.ndarray:
        if pd.api.types.is_datetime64_any_dtype(raw):
            text = raw.astype(str).to_numpy(dtype=object)[rows]
        else:
            text = raw.iloc[rows].astype(str).to_numpy(dtype=object)
        return np.asarray([template.format(v) for v in text], dtype=object)
    return reasons


def _finish(
    path: Path,
    raw: pd.DataFrame,
    lines: np.ndarray,
    malformed: list[RowError],
    canonical: pd.DataFrame,
    rej: _Rejections,
    on_error: OnError,
    quarantine_path: Path | None,
    fmt: str,
    warnings: list[str],
    file_format: FileFormat,
) -> IngestResult:
    n_bad = int(rej.mask.sum())
    errors = malformed + [
        RowError(file=str(path), line=int(lines[i]), column=rej.column[i], reason=rej.reason[i])
        for i in np.flatnonzero(rej.mask)
    ]
    errors.sort(key=lambda e: e.line)
    rows_read = len(raw) + len(malformed)
    accepted = canonical.loc[~rej.mask].reset_index(drop=True)
    rejected = raw.loc[rej.mask].copy()
    rejected["_line"] = lines[rej.mask]
    rejected["_reason"] = [f"{c}: {r}" if c else r for c, r in zip(rej.column[rej.mask], rej.reason[rej.mask])]
    report = IngestReport(
        file=str(path),
        rows_read=rows_read,
        rows_accepted=len(accepted),
        rows_rejected=n_bad + len(malformed),
        errors=errors,
        warnings=warnings,
    )
    if report.rows_read != report.rows_accepted + report.rows_rejected:  # pragma: no cover
        raise AssertionError("ingestion lost rows: read != accepted + rejected")
    report.hint = _common_problem(errors, rows_read, raw, file_format)
    if errors and on_error == OnError.fail:
        listed = "\n  ".join(str(e) for e in errors[:MAX_LISTED_ERRORS])
        more = len(errors) - MAX_LISTED_ERRORS
        hint = f"\n  {report.hint}" if report.hint else ""
        raise IngestError(
            f"{path}: {len(errors)} of {rows_read} rows are invalid:{hint}\n  {listed}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nFix the rows, or pass --on-error quarantine to set them aside and go on."
        )
    if errors:
        target = quarantine_path or default_quarantine_path(path)
        _write_quarantine(rejected, malformed, path, target, fmt)
        report.quarantine_file = str(target)
    return IngestResult(frame=accepted, report=report, rejected=rejected)


def _common_problem(errors: list[RowError], rows_read: int, raw: pd.DataFrame, file_format: FileFormat) -> str | None:
    """One line when most rows fail for the same reason, with what to try (delimiter, date format)."""
    if not errors or len(errors) * 2 <= rows_read:
        return None
    kinds: dict[tuple[str | None, str], int] = {}
    for e in errors:
        kind = (e.column, e.reason.split(" '")[0].split(" {")[0] if e.column else e.reason.split(",")[0][:9])
        kinds[kind] = kinds.get(kind, 0) + 1
    (column, reason), count = max(kinds.items(), key=lambda item: item[1])
    if count * 2 <= rows_read:
        return None
    share = f"{count} of {rows_read} rows"
    if reason.startswith("unparsable timestamp") and column in raw.columns:
        bad_values = raw[column][raw[column].astype(str).str.strip() != ""]
        guess = guess_date_format(bad_values)
        example = str(bad_values.iloc[0]) if len(bad_values) else ""
        if guess:
            return (f"most rows ({share}) have timestamps like {example!r} that are not ISO-8601: pass "
                    f"--date-format '{guess}' (strftime codes)")
        return (f"most rows ({share}) have timestamps like {example!r} that are not ISO-8601 or epoch seconds: "
                "pass --date-format with their strftime pattern, e.g. '%d/%m/%Y %H:%M'")
    if column is None and reason.startswith("expected"):
        return (f"most rows ({share}) do not split into the header's fields with --sep {file_format.sep!r}: check "
                "the delimiter (--sep ';', --sep '\\t') and quoting")
    return f"most rows ({share}) fail for the same reason: {column + ': ' if column else ''}{reason}"


def default_quarantine_path(path: Path, output: Path | None = None) -> Path:
    """``<output stem>.quarantine.csv`` beside the output, or beside the input if none."""
    base = output if output is not None else path
    return base.with_name(base.stem + ".quarantine.csv")


def _write_quarantine(
    rejected: pd.DataFrame, malformed: list[RowError], source: Path, target: Path, fmt: str
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    frame = rejected.astype(object)
    if malformed:
        # Lines with the wrong number of fields cannot be split into the columns: keep the
        # raw line text in the first column so nothing is lost.
        raw_lines = source.read_text(errors="replace").splitlines()
        extra = pd.DataFrame(
            {
                frame.columns[0] if len(frame.columns) > 2 else "raw": [raw_lines[e.line - 1] for e in malformed],
                "_line": [e.line for e in malformed],
                "_reason": [e.reason for e in malformed],
            }
        )
        frame = pd.concat([frame, extra], ignore_index=True)
    frame = frame.sort_values("_line", kind="stable")
    frame.to_csv(target, index=False)


def _read_checked(path: Path, file_format: FileFormat, required: tuple[str, ...], contract: str
                  ) -> tuple[pd.DataFrame, np.ndarray, list[RowError], str]:
    """The raw table, after the whole-file checks: rows present, required columns present."""
    raw, lines, malformed, fmt = _read_table(path, file_format)
    if len(raw) == 0 and not malformed:
        raise IngestError(f"{path}: the file has a header but no rows.")
    missing = [c for c in required if c not in raw.columns]
    if missing:
        hint = ""
        header = ",".join(map(str, raw.columns))
        for sep, name in ((";", "';'"), ("\t", "'\\t'"), ("|", "'|'"), (",", "','")):
            if sep != file_format.sep and sep in header:
                hint = f" The header seems to be delimited by {name}: pass --sep {name}."
                break
        raise IngestError(
            f"{path}: missing required column(s) {', '.join(missing)}; found "
            f"{', '.join(map(str, raw.columns)) or 'none'}. The {contract} contract needs "
            f"{', '.join(required)} (see README, 'Data contract').{hint}"
        )
    return raw, lines, malformed, fmt


# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------


def read_events(
    path: str | Path,
    on_error: OnError | str = OnError.fail,
    quarantine_path: str | Path | None = None,
    file_format: FileFormat | None = None,
) -> IngestResult:
    """Read and validate one unit's events file (CSV or Parquet) into the canonical frame.

    Row checks, in order (a row is rejected for the first that fails): fields count,
    missing ``user_id``, missing or unparsable ``ts``, missing ``event_type``, ``amount`` /
    ``price`` / ``quantity`` present but not a finite number or negative, duplicate event
    (same ``event_id``, or, without ids, every contract field equal to an earlier row's).
    """
    path = Path(path)
    on_error = OnError(on_error)
    file_format = file_format or FileFormat()
    raw, lines, malformed, fmt = _read_checked(path, file_format, REQUIRED_EVENT_COLUMNS, "events")
    warnings = []
    unknown = [c for c in raw.columns if c not in EVENT_COLUMNS and c != "unit_id"]
    if unknown:
        warnings.append(
            f"{path}: column(s) {', '.join(map(str, unknown))} are not part of the events "
            "contract and are not used"
        )

    n = len(raw)
    rej = _Rejections(n)
    out = pd.DataFrame(index=raw.index)

    rej.add(_is_blank(raw["user_id"]), "user_id", "missing user_id")
    out["user_id"] = raw["user_id"].astype(str).str.strip().astype(object)

    blank_ts = _is_blank(raw["ts"])
    rej.add(blank_ts, "ts", "missing timestamp")
    ts, bad_ts = _parse_timestamps(raw["ts"], "ts", path, file_format.date_format)
    rej.add(bad_ts & ~blank_ts, "ts", _values_reason("unparsable timestamp {!r}", raw["ts"]))
    out["ts"] = ts

    rej.add(_is_blank(raw["event_type"]), "event_type", "missing event_type")
    out["event_type"] = raw["event_type"].astype(str).str.strip().str.lower().astype(object)

    for name in ("amount", "price", "quantity"):
        if name not in raw.columns:
            out[name] = 0.0 if name == "amount" else np.nan
            continue
        values, bad = _parse_numbers(raw[name], name, path)
        rej.add(bad, name, _values_reason(name + " {!r} is not a finite number", raw[name]))
        negative = (values < 0).fillna(False).to_numpy()
        rej.add(negative, name, _values_reason("negative " + name + " {}", raw[name]))
        out[name] = values.fillna(0.0) if name == "amount" else values

    for name in ("item_id", "channel", "event_id"):
        out[name] = _strings(raw[name]) if name in raw.columns else None
    if "unit_id" in raw.columns:  # not part of a unit's contract; simulations split by it
        out["unit_id"] = _strings(raw["unit_id"])

    _reject_duplicates(raw, lines, out, rej)
    return _finish(path, raw, lines, malformed, out, rej, on_error,
                   Path(quarantine_path) if quarantine_path else None, fmt, warnings, file_format)


def _reject_duplicates(raw: pd.DataFrame, lines: np.ndarray, out: pd.DataFrame, rej: _Rejections) -> None:
    """Second and later copies of an event are rejected, naming the first copy's line."""
    if "event_id" in raw.columns and out["event_id"].notna().any():
        key = out["event_id"]
        candidates = key.notna().to_numpy() & ~rej.mask
        what = "duplicate event_id {!r}, first seen on line {}"
        label = "event_id"
    else:
        cols = [c for c in EVENT_COLUMNS if c in raw.columns]
        key = pd.util.hash_pandas_object(raw[cols].astype(str), index=False)
        candidates = ~rej.mask
        what = "duplicate event (every field equal to line {1})"
        label = None
    sub = key[candidates]
    dup = sub.duplicated(keep="first")
    if not dup.any():
        return
    first_pos = pd.Series(np.arange(len(sub)), index=sub.index).groupby(sub.to_numpy()).transform("first")
    idx_all = np.flatnonzero(candidates)
    reasons = np.empty(len(raw), dtype=object)
    dup_positions = np.flatnonzero(dup.to_numpy())
    for p in dup_positions:
        row = idx_all[p]
        first_row = idx_all[int(first_pos.iloc[p])]
        reasons[row] = what.format(str(key.iloc[row]), int(lines[first_row]))
    bad = np.zeros(len(raw), dtype=bool)
    bad[idx_all[dup_positions]] = True
    rej.add(bad, label, reasons)


# --------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------


def read_users(
    path: str | Path,
    on_error: OnError | str = OnError.fail,
    quarantine_path: str | Path | None = None,
    file_format: FileFormat | None = None,
) -> IngestResult:
    """Read and validate a unit's users file: ``user_id`` (unique), optional ``signup_ts``,
    any attribute columns (kept as strings, for audits)."""
    path = Path(path)
    on_error = OnError(on_error)
    file_format = file_format or FileFormat()
    raw, lines, malformed, fmt = _read_checked(path, file_format, REQUIRED_USER_COLUMNS, "users")
    rej = _Rejections(len(raw))
    out = pd.DataFrame(index=raw.index)
    rej.add(_is_blank(raw["user_id"]), "user_id", "missing user_id")
    out["user_id"] = raw["user_id"].astype(str).str.strip().astype(object)
    if "signup_ts" in raw.columns:
        blank = _is_blank(raw["signup_ts"])
        ts, bad = _parse_timestamps(raw["signup_ts"], "signup_ts", path, file_format.date_format)
        rej.add(bad & ~blank, "signup_ts", _values_reason("unparsable timestamp {!r}", raw["signup_ts"]))
        out["signup_ts"] = ts
    for col in raw.columns:
        if col not in ("user_id", "signup_ts"):
            out[col] = _strings(raw[col])
    ids = out["user_id"].where(~rej.mask)
    dup = ids.duplicated(keep="first").to_numpy() & ~rej.mask
    rej.add(dup, "user_id", _values_reason("duplicate user_id {!r}", raw["user_id"]))
    return _finish(path, raw, lines, malformed, out, rej, on_error,
                   Path(quarantine_path) if quarantine_path else None, fmt, [], file_format)
