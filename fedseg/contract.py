"""The data contract: what a business unit's event and user files must hold.

This module is the single place that defines the columns every other package reads.
It describes the contract (pydantic models with documented fields and units) and the
canonical in-memory form that ingestion produces and the feature pipeline consumes.

Canonical events frame (``pandas.DataFrame``, one row per event):

=============  ==========================  ===============================================
column         dtype                       meaning
=============  ==========================  ===============================================
user_id        ``object`` (str)            the end user, unique within a unit
ts             ``datetime64[ns]``          when the event happened, naive UTC
event_type     ``object`` (str)            open set; ``purchase`` carries revenue
amount         ``float64``                 revenue of the event in currency units (e.g.
                                           dollars), >= 0; 0.0 where absent
item_id        ``object`` (str or None)    the item bought or viewed (optional)
price          ``float64``                 unit price in currency units (optional, NaN)
quantity       ``float64``                 units bought (optional, NaN)
channel        ``object`` (str or None)    web, app, store ... (optional)
event_id       ``object`` (str or None)    unique id of the event if the unit has one
=============  ==========================  ===============================================

Canonical users frame: ``user_id`` (str), ``signup_ts`` (naive UTC, optional) and any
attribute columns (``gender``, ``age_band``, ``region``, ``device`` ...). Attributes are
for audits; they are never model features unless a configuration names them.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

import pandas as pd
from pydantic import BaseModel, Field

#: Event type that carries revenue.
PURCHASE: Final = "purchase"
#: Event types fedseg knows by name; the set is open, other strings are accepted.
KNOWN_EVENT_TYPES: Final = ("purchase", "visit", "login", "click", "refund")

REQUIRED_EVENT_COLUMNS: Final = ("user_id", "ts", "event_type")
OPTIONAL_EVENT_COLUMNS: Final = ("amount", "item_id", "price", "quantity", "channel", "event_id")
EVENT_COLUMNS: Final = REQUIRED_EVENT_COLUMNS + OPTIONAL_EVENT_COLUMNS

REQUIRED_USER_COLUMNS: Final = ("user_id",)
#: Attributes fedseg's audits know by name; any other column is kept as an attribute too.
KNOWN_USER_ATTRIBUTES: Final = ("gender", "age_band", "region", "device", "loyalty_tenure")


class OnError(str, Enum):
    """What ingestion does with a malformed row."""

    fail = "fail"  #: stop with a summary of the first errors
    quarantine = "quarantine"  #: write the row untouched to a quarantine file and go on


class EventRecord(BaseModel):
    """One event, as the contract defines it (documentation and single-row validation).

    Bulk ingestion validates whole columns at once with the same rules
    (see :mod:`clients.ingest`); this model is the reference for what a row means.
    """

    user_id: str = Field(min_length=1, description="End user id, unique within the unit.")
    ts: pd.Timestamp = Field(description="Event time; timezone-aware, or naive meaning UTC.")
    event_type: str = Field(min_length=1, description="purchase, visit, login, click, refund, ...")
    amount: float | None = Field(
        default=None, ge=0, description="Revenue of the event in currency units (>= 0)."
    )
    item_id: str | None = Field(default=None, description="Item bought or viewed.")
    price: float | None = Field(default=None, ge=0, description="Unit price, currency units.")
    quantity: float | None = Field(default=None, ge=0, description="Units bought.")
    channel: str | None = Field(default=None, description="web, app, store, ...")
    event_id: str | None = Field(default=None, description="Unique event id, if the unit has one.")

    model_config = {"arbitrary_types_allowed": True}


class UserRecord(BaseModel):
    """One user of a unit. Extra attribute columns are allowed and kept for audits."""

    user_id: str = Field(min_length=1)
    signup_ts: pd.Timestamp | None = Field(default=None, description="Sign-up time, naive UTC.")

    model_config = {"arbitrary_types_allowed": True, "extra": "allow"}


def empty_events() -> pd.DataFrame:
    """An events frame with the canonical columns and dtypes and no rows."""
    return pd.DataFrame(
        {
            "user_id": pd.Series([], dtype=object),
            "ts": pd.Series([], dtype="datetime64[ns]"),
            "event_type": pd.Series([], dtype=object),
            "amount": pd.Series([], dtype="float64"),
            "item_id": pd.Series([], dtype=object),
            "price": pd.Series([], dtype="float64"),
            "quantity": pd.Series([], dtype="float64"),
            "channel": pd.Series([], dtype=object),
            "event_id": pd.Series([], dtype=object),
        }
    )


def to_canonical_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with every canonical column present and of the canonical dtype.

    For frames built in code (generators, dataset loaders) whose values are already
    valid. Files from units go through :func:`clients.ingest.read_events`, which checks
    every row and reports the bad ones.
    """
    out = pd.DataFrame(index=frame.index)
    out["user_id"] = frame["user_id"].astype(str).astype(object)
    ts = pd.to_datetime(frame["ts"])
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    out["ts"] = ts.astype("datetime64[ns]")
    out["event_type"] = frame["event_type"].astype(str).astype(object)
    out["amount"] = (
        frame["amount"].astype("float64").fillna(0.0) if "amount" in frame else 0.0
    )
    for col in ("price", "quantity"):
        out[col] = frame[col].astype("float64") if col in frame else float("nan")
    for col in ("item_id", "channel", "event_id"):
        out[col] = frame[col].astype(object) if col in frame else None
    return out.reset_index(drop=True)
