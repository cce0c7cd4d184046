"""The intervention playbook: actions with their channel and cost, the rules that assign them, the
holdout share and the contact policy. One definition for both sides: units apply it to their own
users (:mod:`clients.playbook`), the coordinator reads the action costs to turn measured uplift into
ROI (:mod:`server.effects`). A federation agrees one playbook file (TOML or JSON, :func:`load_playbook`);
without one, :data:`DEFAULT_ACTIONS` and :data:`DEFAULT_RULES` apply.

Money is in currency units, periods in days.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, model_validator

from fedseg.errors import FedsegError


class ActionSpec(BaseModel):
    """One action a unit can take, where it reaches the user and what one contact costs."""

    name: str
    channel: str = Field(description="email, sms, push, app, call, mail, ...: where the action reaches the user.")
    cost: float = Field(ge=0, description="Cost of treating one user (contact plus incentive), currency units.")
    description: str = ""


class PlaybookRule(BaseModel):
    """One action and when it applies (all given conditions must hold; None means any)."""

    action: str
    priority: int = Field(description="Lower wins when several rules match.")
    segments: list[str] | None = Field(None, description="Activity segment names.")
    rfm_segments: list[str] | None = None
    value_tiers: list[str] | None = None
    stages: list[str] | None = Field(None, description="Lifecycle stages.")
    warning: bool | None = Field(None, description="True: only users with a churn warning.")


DEFAULT_ACTIONS = [
    ActionSpec(name="win-back offer", channel="email", cost=5.0, description="a discount on the next order"),
    ActionSpec(name="VIP privilege", channel="app", cost=8.0, description="early access and a gift"),
    ActionSpec(name="welcome guide", channel="email", cost=0.5, description="how to get the most out of the shop"),
    ActionSpec(name="streak reward", channel="push", cost=2.0, description="points for the next purchase"),
    ActionSpec(name="re-engagement reminder", channel="sms", cost=0.2, description="what is new since the last visit"),
]

DEFAULT_RULES = [
    PlaybookRule(action="win-back offer", priority=1, warning=True, value_tiers=["high-value", "VIP"]),
    PlaybookRule(action="win-back offer", priority=2, rfm_segments=["At Risk", "Cannot Lose Them"]),
    PlaybookRule(action="VIP privilege", priority=3, value_tiers=["VIP"]),
    PlaybookRule(action="welcome guide", priority=4, stages=["introduction"]),
    PlaybookRule(action="streak reward", priority=5, stages=["growth"]),
    PlaybookRule(action="re-engagement reminder", priority=6, rfm_segments=["Need Attention", "About To Sleep"]),
]


class PlaybookConfig(BaseModel):
    """The playbook and contact policy (see :mod:`clients.playbook` for how a unit applies it).

    Contact policy, per user, over the ``window_days`` before and including the campaign day,
    counting the unit's contact log and this campaign's contact: at most ``max_contacts`` contacts
    over all actions and channels, at most ``channel_caps[c]`` on channel ``c``, none within
    ``quiet_days`` of the last one. Per unit: at most ``channel_capacity[c]`` users treated on
    channel ``c`` in this campaign, highest value at risk first.
    """

    actions: list[ActionSpec] = Field(default_factory=lambda: list(DEFAULT_ACTIONS))
    rules: list[PlaybookRule] = Field(default_factory=lambda: list(DEFAULT_RULES))
    holdout_share: float = Field(0.1, ge=0, lt=1, description="Share of each segment x action held out (not "
                                 "contacted) to measure the action's effect.")
    max_contacts: int = Field(2, ge=0, description="Contacts allowed per user per window, all channels.")
    window_days: int = Field(30, ge=1, description="The contact-cap period, days.")
    quiet_days: int = Field(7, ge=0, description="No contact within this many days of the last one.")
    channel_caps: dict[str, int] = Field(default_factory=dict, description="Contacts allowed per user per window "
                                         "on a channel, e.g. {sms = 1}.")
    channel_capacity: dict[str, int] = Field(default_factory=dict, description="Users a unit can treat per "
                                             "campaign on a channel (call-centre hours, SMS budget).")

    @model_validator(mode="after")
    def _known_actions(self) -> "PlaybookConfig":
        names = [a.name for a in self.actions]
        if len(set(names)) != len(names):
            raise ValueError(f"actions are named more than once: {sorted({n for n in names if names.count(n) > 1})}")
        unknown = sorted({r.action for r in self.rules} - set(names))
        if unknown:
            raise ValueError(f"rules name actions the playbook does not define: {unknown}; add them under [[actions]] "
                             "with a channel and a cost")
        return self

    def action(self, name: str) -> ActionSpec:
        """The action called ``name``."""
        return next(a for a in self.actions if a.name == name)

    @property
    def costs(self) -> dict[str, float]:
        """Cost of treating one user, per action (currency units)."""
        return {a.name: a.cost for a in self.actions}

    @property
    def channels(self) -> dict[str, str]:
        """The channel each action is sent through."""
        return {a.name: a.channel for a in self.actions}


def load_playbook(path: str | Path | None) -> PlaybookConfig:
    """The playbook in a TOML or JSON file (the defaults with None); a bad file is one line (exit 2)."""
    if path is None:
        return PlaybookConfig()
    path = Path(path)
    if not path.exists():
        raise FedsegError(f"--playbook {path}: no such file")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        return PlaybookConfig.model_validate(data)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise FedsegError(f"--playbook {path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise FedsegError(f"--playbook {path}: {problems}") from None
