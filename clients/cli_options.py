"""Command-line options every command that reads a unit's events file shares (one definition)."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from clients.ingest import FileFormat, IngestError

Sep = Annotated[str, typer.Option(help="Field delimiter of a CSV events/users file: ',', ';', '\\t' (tab) or '|'.")]
Encoding = Annotated[str, typer.Option(help="Text encoding of a CSV file (utf-8, latin-1, cp1252, ...).")]
DateFormat = Annotated[str | None, typer.Option(help="strftime pattern of the timestamps, e.g. '%d/%m/%Y %H:%M' "
                                                     "(default: ISO-8601, or integer epoch seconds/milliseconds).")]


def file_format(sep: str = ",", encoding: str = "utf-8", date_format: str | None = None) -> FileFormat:
    """A validated :class:`clients.ingest.FileFormat`; a bad value is one line (exit 2)."""
    try:
        return FileFormat(sep=sep, encoding=encoding, date_format=date_format)
    except ValidationError as exc:
        raise IngestError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
