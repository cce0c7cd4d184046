"""Report models shared by the audits (pydantic; ``report.json`` is their ``model_dump``)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field


def now_utc() -> str:
    """Current time, ISO 8601 UTC, seconds."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


class RuleResult(BaseModel):
    """One compliance rule checked on one subject, with PASS/FAIL and why."""

    rule: str = Field(description="four-fifths, threshold-pct, renewal, ...")
    subject: str = Field(description="What was checked, e.g. 'gender' or 'loyalty=loyal vs new [all]'.")
    passed: bool
    detail: str = ""
