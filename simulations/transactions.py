"""Generated transactions for pricing audits: product-mix confounding, promotions, planted premiums.

One row per purchased line. Deterministic from ``seed``; 10M rows take a few seconds (numpy only).

The model (prices in currency units):

* Customers have a loyalty tenure level (``new`` = first-time buyers, ``regular``, ``loyal``)
  and a data-richness level (``low``/``high``, correlated with tenure: loyal customers have
  richer profiles). ``returning`` is ``loyalty != "new"``.
* Items have a list price ``base_i`` (log-normal, median ``median_price``) and a category.
  Items are ranked by price; a customer of tenure level ``t`` picks item rank
  ``floor(n_items * u ** a_t)`` with ``u ~ U(0,1)`` and ``a_new = 1.0 > a_regular = 0.7 >
  a_loyal = 0.4``: **loyal customers buy dearer items** (product-mix confounding). A naive
  comparison of average paid prices therefore shows loyal customers paying much more even
  when nobody is charged more for the same item.
* Weeks ``0 .. n_weeks-1`` have a price level (slow inflation, +0.05% a week). Each
  (item, week) is on promotion with probability ``promo_rate`` at a discount of 10-30%,
  and loyal customers shop promotions more often (they concentrate purchases in promotion weeks
  with probability 0.3), so promotions also confound naive averages.
* Paid price = ``base_i * level_w * (1 - discount_iw) * exp(c_k + e_r)`` with a customer
  effect ``c_k ~ N(0, customer_sd)`` (personal coupons: this is why the audit clusters by
  customer) and a line effect ``e_r ~ N(0, noise_sd)``, rounded to cents.
* A planted premium multiplies the price of every row of customers in ``premium_group``
  (``(column, level)``) by ``1 + premium_pct / 100``: the truth the audit must recover.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

LOYALTY_LEVELS = ("new", "regular", "loyal")
RICHNESS_LEVELS = ("low", "high")
_LOYALTY_SHARES = (0.3, 0.4, 0.3)
_MIX_EXPONENT = (1.0, 0.7, 0.4)  # item-rank skew per loyalty level (smaller = dearer items)
_P_RICH = (0.2, 0.5, 0.8)  # P(data_richness = high | loyalty level)


class TransactionSpec(BaseModel):
    """Parameters of :func:`generate_transactions`."""

    n_rows: int = Field(100_000, ge=1)
    n_customers: int = Field(10_000, ge=1)
    n_items: int = Field(500, ge=2)
    n_categories: int = Field(8, ge=1)
    n_weeks: int = Field(26, ge=1)
    median_price: float = Field(30.0, gt=0, description="Median list price, currency units.")
    promo_rate: float = Field(0.1, ge=0, le=1)
    customer_sd: float = Field(0.01, ge=0, description="SD of the customer log-price effect.")
    noise_sd: float = Field(0.03, ge=0, description="SD of the line log-price effect.")
    premium_pct: float = Field(0.0, description="Planted premium in percent for premium_group.")
    premium_group: tuple[str, str] = ("loyalty", "loyal")
    seed: int = 0


def generate_transactions(spec: TransactionSpec | None = None, **kwargs: object) -> pd.DataFrame:
    """Transactions as a frame: customer_id, item_id, category, week, loyalty, data_richness,
    returning, promo, price. Pass a :class:`TransactionSpec` or its fields as keywords."""
    spec = spec or TransactionSpec(**kwargs)  # type: ignore[arg-type]
    rng = np.random.default_rng(spec.seed)
    n, nc, ni, nw = spec.n_rows, spec.n_customers, spec.n_items, spec.n_weeks

    # customers
    loyalty = rng.choice(len(LOYALTY_LEVELS), size=nc, p=_LOYALTY_SHARES).astype(np.int8)
    rich = (rng.random(nc) < np.asarray(_P_RICH)[loyalty]).astype(np.int8)
    cust_effect = rng.normal(0.0, spec.customer_sd, size=nc)

    # items, ranked by list price
    base = np.sort(spec.median_price * np.exp(rng.normal(0.0, 0.8, size=ni)))
    category = rng.integers(0, spec.n_categories, size=ni).astype(np.int16)

    # weeks and promotions
    level = 1.0005 ** np.arange(nw)
    on_promo = rng.random((ni, nw)) < spec.promo_rate
    discount = np.where(on_promo, rng.uniform(0.10, 0.30, size=(ni, nw)), 0.0)

    # rows
    cust = rng.integers(0, nc, size=n)
    lo = loyalty[cust]
    u = rng.random(n)
    item = np.minimum((ni * u ** np.asarray(_MIX_EXPONENT)[lo]).astype(np.int64), ni - 1)
    week = rng.integers(0, nw, size=n)
    # loyal customers move some purchases into a promotion week of that item, if it has one
    promo_weeks = [np.flatnonzero(on_promo[i]) for i in range(ni)] if spec.promo_rate > 0 else None
    if promo_weeks is not None:
        hunt = (lo == 2) & (rng.random(n) < 0.3)
        counts = np.array([len(w) for w in promo_weeks])
        hunt &= counts[item] > 0
        idx = np.flatnonzero(hunt)
        if idx.size:
            flat = np.concatenate([w for w in promo_weeks if len(w)])
            offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
            pick = (rng.random(idx.size) * counts[item[idx]]).astype(np.int64)
            week[idx] = flat[offsets[item[idx]] + pick]

    log_price = (np.log(base[item]) + np.log(level[week]) + np.log1p(-discount[item, week])
                 + cust_effect[cust] + rng.normal(0.0, spec.noise_sd, size=n))
    frame = pd.DataFrame({
        "customer_id": cust,
        "item_id": item.astype(np.int32),
        "category": pd.Categorical.from_codes(category[item], [f"cat{c}" for c in range(spec.n_categories)]),
        "week": week.astype(np.int16),
        "loyalty": pd.Categorical.from_codes(lo, list(LOYALTY_LEVELS)),
        "data_richness": pd.Categorical.from_codes(rich[cust], list(RICHNESS_LEVELS)),
        "returning": lo > 0,
        "promo": on_promo[item, week],
    })
    price = np.exp(log_price)
    if spec.premium_pct:
        col, lev = spec.premium_group
        if col not in frame:
            raise ValueError(f"premium_group column {col!r} is not generated; use loyalty or data_richness")
        price = np.where((frame[col] == lev).to_numpy(), price * (1 + spec.premium_pct / 100), price)
    frame["price"] = np.round(price, 2)
    return frame
