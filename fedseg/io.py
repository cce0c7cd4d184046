"""Writing result files atomically: a temporary file in the same folder, flushed, then renamed over
the target (``os.replace`` is atomic on POSIX), so a crash or a refused run never leaves a torn
or half-overwritten output. CSV or Parquet is chosen by the file's extension."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from fedseg.errors import FedsegError

TABLE_SUFFIXES = (".parquet", ".pq", ".csv")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed over ``path`` when the block succeeds, removed if not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as synced:
            os.fsync(synced.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_table_path(path: str | Path, option: str = "--out") -> Path:
    """``path`` if its extension names a table format, else a one-line error naming the option."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise FedsegError(f"{option} {path}: unknown file type {path.suffix or '(none)'!r}; use .csv or .parquet")
    return path


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path`` atomically, as CSV or Parquet by its extension."""
    path = check_table_path(path)
    writer: Callable[[Path], Any]
    if path.suffix.lower() == ".csv":
        writer = lambda target: frame.to_csv(target, index=False)  # noqa: E731
    else:
        writer = lambda target: frame.to_parquet(target, index=False)  # noqa: E731
    with atomic_path(path) as tmp:
        writer(tmp)
    return path


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write ``data`` (a file's whole content, e.g. an encoded Parquet table) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON atomically (``default=str`` for dates and paths)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
    return path


def read_table(path: str | Path, option: str = "--in") -> pd.DataFrame:
    """Read a CSV or Parquet table by its extension (a CSV's ``user_id`` as text, so "007" stays "007");
    a missing or unreadable file is one line."""
    path = check_table_path(path, option)
    if not path.exists():
        raise FedsegError(f"{option} {path}: no such file")
    try:
        return pd.read_csv(path, dtype={"user_id": str}) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise FedsegError(f"{option} {path}: cannot be read as {path.suffix.lstrip('.')} ({exc})") from None
