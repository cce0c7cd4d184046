"""Bundled real data: the CDNOW transaction log, read from the installed ``lifetimes`` distribution.

CDNOW (Fader and Hardie): every purchase from 1997-01-01 to 1998-06-30 by the 23,570
customers who first bought in 1997-Q1, 69,659 rows, with the number of CDs and the dollar
value. The file ships inside the PyPI package ``lifetimes``; it is located through
``importlib.metadata`` so ``lifetimes`` itself is never imported (its ``datasets`` module
needs ``pkg_resources``, absent from new setuptools).

The standard split (BTYD literature): calibration up to 1997-09-30 (the cutoff), holdout the
39 weeks (273 days) after it, 1997-10-01 to 1998-06-30.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from fedseg.contract import PURCHASE, to_canonical_events

#: Last day of the calibration period of the standard split.
CALIBRATION_END: Final = dt.date(1997, 9, 30)
#: Length of the standard holdout, in days (39 weeks).
HOLDOUT_DAYS: Final = 273
#: Counts of the file, for checks.
N_ROWS: Final = 69_659
N_CUSTOMERS: Final = 23_570


class DatasetNotInstalled(RuntimeError):
    """The package that carries a dataset is missing."""


def cdnow_path() -> Path:
    """Path of ``CDNOW_master.txt`` inside the installed ``lifetimes`` distribution."""
    try:
        dist = importlib.metadata.distribution("lifetimes")
    except importlib.metadata.PackageNotFoundError:
        raise DatasetNotInstalled(
            "CDNOW ships in the PyPI package 'lifetimes', which is not installed: "
            "pip install lifetimes==0.11.3"
        ) from None
    path = Path(str(dist.locate_file("lifetimes/datasets/CDNOW_master.txt")))
    if not path.is_file():
        raise DatasetNotInstalled(f"lifetimes is installed but {path} is missing")
    return path


def load_cdnow_raw() -> pd.DataFrame:
    """The file as it is: customer_id, date, number_of_cds, dollar_value (one row a line)."""
    return pd.read_csv(
        cdnow_path(),
        sep=r"\s+",
        dtype={"customer_id": str, "date": str, "number_of_cds": np.int64, "dollar_value": np.float64},
    )


def load_cdnow() -> pd.DataFrame:
    """CDNOW mapped to the events contract.

    One ``purchase`` event per row of the file: ``user_id`` = customer id, ``ts`` = the
    purchase date at midnight (the file has no time of day), ``amount`` = dollar value,
    ``quantity`` = number of CDs, ``event_id`` = ``cdnow-<row>`` (rows of the same
    customer, day and value are distinct purchases, not duplicates). No row is dropped.
    """
    raw = load_cdnow_raw()
    frame = pd.DataFrame(
        {
            "user_id": raw["customer_id"].to_numpy(),
            "ts": pd.to_datetime(raw["date"], format="%Y%m%d"),
            "event_type": PURCHASE,
            "amount": raw["dollar_value"].to_numpy(),
            "quantity": raw["number_of_cds"].astype("float64").to_numpy(),
            "event_id": [f"cdnow-{i}" for i in range(len(raw))],
        }
    )
    return to_canonical_events(frame)
