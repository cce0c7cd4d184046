"""Report models shared by the audits (pydantic; ``report.json`` is their ``model_dump``)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field, computed_field

Verdict = Literal["PASS", "FAIL", "INCONCLUSIVE", "NOT TESTED"]
VERDICT_ORDER: tuple[Verdict, ...] = ("FAIL", "INCONCLUSIVE", "NOT TESTED", "PASS")


def now_utc() -> str:
    """Current time, ISO 8601 UTC, seconds."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


class RuleResult(BaseModel):
    """One compliance rule checked on one subject, decided on the figure's interval.

    FAIL: the interval lies entirely beyond the threshold; PASS: entirely within;
    INCONCLUSIVE: it straddles the threshold (or there is no interval); NOT TESTED: the figure
    could not be computed (suppressed, nothing to compare) -- ``detail`` says why.
    """

    rule: str = Field(description="Policy rule name: four-fifths, fpr-ratio, loyalty-premium, ...")
    subject: str = Field(description="What was checked, e.g. 'gender=f vs m' or 'loyalty=loyal vs new [all]'.")
    verdict: Verdict
    metric: str = ""
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    allowed: str = Field("", description="The rule's range, e.g. '>= 0.8' or 'within [0.8, 1.25]'.")
    source: str = Field("", description="Where the threshold comes from (law, guidance or convention).")
    noisy: bool = Field(False, description="Decided on DP-noisy figures (the interval does not include the noise).")
    detail: str = ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        """True only for PASS (NOT TESTED and INCONCLUSIVE are not passes)."""
        return self.verdict == "PASS"


class Overall(BaseModel):
    """The report's verdict: FAIL if any rule fails, else INCONCLUSIVE if any is, else NOT TESTED
    if nothing could be tested, else PASS; with the count of each verdict."""

    verdict: Verdict
    counts: dict[str, int]
    reason: str = ""


def overall(rules: list[RuleResult], reason_if_empty: str = "no rule applied to these data") -> Overall:
    counts = {v: sum(r.verdict == v for r in rules) for v in VERDICT_ORDER}
    if counts["FAIL"]:
        return Overall(verdict="FAIL", counts=counts)
    if counts["INCONCLUSIVE"]:
        return Overall(verdict="INCONCLUSIVE", counts=counts)
    if not counts["PASS"]:
        why = reason_if_empty if not rules else "every rule's figure was suppressed or could not be computed"
        return Overall(verdict="NOT TESTED", counts=counts, reason=why)
    reason = f"{counts['NOT TESTED']} rule check(s) not tested" if counts["NOT TESTED"] else ""
    return Overall(verdict="PASS", counts=counts, reason=reason)
