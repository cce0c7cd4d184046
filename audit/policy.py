"""Compliance policies: which figure, compared how, must lie in which range (TOML, ``--policy``).

A policy is a list of rules. Each rule names a ``metric`` and how it is compared:

* per group against the attribute's reference group (``compare = "ratio_to_reference"`` or
  ``"difference_to_reference"``) for the rates ``selection_rate``, ``tpr``, ``fpr``, ``fnr``,
  ``precision``, ``false_omission_rate``;
* per group as it is (``compare = "value"``) for those rates and ``auc``, ``calibration_error``;
* per attribute (``compare = "value"``) for the summaries ``demographic_parity_difference``,
  ``demographic_parity_ratio``, ``equalized_odds_difference``, ``equal_opportunity_difference``;
* per pricing comparison (``compare = "value"``) for ``premium_pct`` (percent).

``min`` and ``max`` bound the allowed range (either may be left out); ``attributes`` limits the
rule to some attributes (default all; pricing's renewal check is the attribute ``renewal``).
The decision is made on the figure's confidence interval ``[lo, hi]`` (:func:`decide`):
FAIL when it lies entirely outside the allowed range, PASS when entirely inside, INCONCLUSIVE
when it straddles a bound. A figure that could not be computed is NOT TESTED.

The default policy ships as ``audit/default_policy.toml``; the source of each threshold is in
docs/audit.md.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from audit.models import Verdict

RATES = ("selection_rate", "tpr", "fpr", "fnr", "precision", "false_omission_rate")
GROUP_VALUES = (*RATES, "auc", "calibration_error")
SUMMARIES = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
             "equal_opportunity_difference")
PRICING = ("premium_pct",)
Compare = Literal["value", "ratio_to_reference", "difference_to_reference"]


class Rule(BaseModel):
    name: str = Field(min_length=1)
    metric: str
    compare: Compare = "value"
    min: float | None = None
    max: float | None = None
    attributes: list[str] = Field(default_factory=lambda: ["*"])
    source: str = ""
    note: str = ""

    model_config = {"extra": "forbid"}

    @model_validator(mode="after")
    def _check(self) -> Rule:
        known = (*GROUP_VALUES, *SUMMARIES, *PRICING)
        if self.metric not in known:
            raise ValueError(f"rule {self.name!r}: unknown metric {self.metric!r}; use one of {', '.join(known)}")
        if self.compare != "value" and self.metric not in RATES:
            raise ValueError(f"rule {self.name!r}: {self.compare} applies to the rates {', '.join(RATES)}")
        if self.min is None and self.max is None:
            raise ValueError(f"rule {self.name!r}: give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"rule {self.name!r}: min {self.min} is above max {self.max}")
        return self

    @property
    def audit(self) -> Literal["fairness", "pricing"]:
        return "pricing" if self.metric in PRICING else "fairness"

    @property
    def level(self) -> Literal["group", "attribute", "comparison"]:
        if self.metric in PRICING:
            return "comparison"
        return "attribute" if self.metric in SUMMARIES else "group"

    def applies_to(self, attribute: str) -> bool:
        return "*" in self.attributes or attribute in self.attributes

    def allowed(self) -> str:
        if self.min is not None and self.max is not None:
            return f"within [{self.min:g}, {self.max:g}]"
        return f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"


class Policy(BaseModel):
    name: str = "unnamed policy"
    description: str = ""
    rules: list[Rule] = Field(default_factory=list, alias="rule")

    model_config = {"extra": "forbid", "populate_by_name": True}

    def for_audit(self, audit: str) -> list[Rule]:
        return [r for r in self.rules if r.audit == audit]


def decide(value: float | None, lo: float | None, hi: float | None, rule: Rule) -> tuple[Verdict, str]:
    """Verdict of ``rule`` on an estimate and its interval (module doc), with a short reason."""
    if value is None:
        return "NOT TESTED", "figure not available"
    if lo is None or hi is None:
        return "INCONCLUSIVE", "no interval"
    below = rule.min is not None and hi < rule.min
    above = rule.max is not None and lo > rule.max
    if below or above:
        return "FAIL", "interval lies " + ("below the minimum" if below else "above the maximum")
    inside = (rule.min is None or lo >= rule.min) and (rule.max is None or hi <= rule.max)
    if inside:
        return "PASS", "interval lies within the allowed range"
    return "INCONCLUSIVE", "interval straddles a threshold"


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy in ``path`` (TOML), or the shipped default; ValueError with the reason."""
    if path is None:
        text = resources.files("audit").joinpath("default_policy.toml").read_text()
        where = "default policy"
    else:
        p = Path(path)
        if not p.exists():
            raise ValueError(f"{p}: no such policy file")
        text, where = p.read_text(), str(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: not valid TOML ({exc})") from None
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        msgs = "; ".join(e["msg"].removeprefix("Value error, ") + (f" at {'.'.join(map(str, e['loc']))}"
                                                                     if e["type"] != "value_error" else "")
                         for e in exc.errors())
        raise ValueError(f"{where}: {msgs}") from None
