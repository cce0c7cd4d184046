"""Synthetic users and events for N users over K business units, with a planted truth.

Deterministic from ``seed`` (same configuration -> identical frames), vectorised numpy
(no Python loop per user or event; the only loops run over units, archetypes and chunks of
users), generated in chunks of ``chunk_users`` users so 1M users x 10 events fit easily in
memory. Times are in days from ``start`` (midnight, naive UTC); money in currency units.

The model, per user ``i`` (all draws from one seeded ``numpy.random.Generator``):

* **Unit.** Unit shares ``s ~ Dirichlet(unit_size_alpha * 1_K)`` (equal shares when
  ``unit_size_alpha`` is None); unit sizes are the largest-remainder rounding of
  ``s * n_users`` with at least one user per unit; users are dealt to units at random.
* **Behaviour skew across units** (strength ``b = behaviour_skew``, 0 = identical units):
  unit ``k`` gets an archetype mix ``mix_k ∝ mix * exp(b * z_k)`` (``z_k ~ N(0, 1)`` per
  archetype), an activity multiplier ``exp(0.5 b g_k)``, a price level ``exp(0.2 b h_k)``
  and a region mix ``∝ regions * exp(b * w_k)``.
* **Archetype** (planted segment) ``a_i ~ Categorical(mix_k)`` among ``high_active``,
  ``growing``, ``at_risk`` (declining), ``silent``, ``new``; each has a sign-up window
  (as fractions of the period; ``new`` signs up in the last ``new_window_days``), a base
  activity rate, a decay rate ``delta`` per day (negative = growing), a churn hazard per day
  and a spend level (table :data:`ARCHETYPES`).
* **Acquisition.** Sign-up day ``u_i`` uniform within the archetype's window, tilted by
  ``exp(acquisition_growth * t / 365)`` (more sign-ups later when positive).
* **Churn.** Lifetime ``L_i ~ Exponential(hazard_i)``, ``hazard_i = hazard_a * LogN(0, .3)``;
  the user is active on ``[u_i, e_i)`` with ``e_i = min(u_i + L_i, days)``.
* **Activity.** Event intensity ``lambda_i(t) = c * r_i * exp(-delta_i (t - u_i))`` on the
  active window, ``r_i = rate_a * unit multiplier * LogN(0, .25)``, ``delta_i = delta_a +
  N(0, .25 |delta_a| + .0005)``. The global scale ``c`` is set so that the expected number
  of events per user (before refunds, including the acquiring purchase) equals
  ``events_per_user``: with
  ``T_i = e_i - u_i`` and ``Lambda_i = r_i (1 - exp(-delta_i T_i)) / delta_i``,
  ``c = (events_per_user - 1) / mean_i(Lambda_i)`` (``- 1`` for the acquiring purchase:
  with ``first_purchase`` every user buys once at the sign-up second, as CDNOW customers do).
  Counts are ``Poisson(c Lambda_i / m)`` and
  times are drawn by inverting the truncated-exponential CDF,
  ``t = u_i - ln(1 - U (1 - exp(-delta_i T_i))) / delta_i``.
* **Seasonality** by thinning: an event on day ``d`` is kept with probability
  ``w(d) = weekly[dow(d)] * (1 + A cos(2 pi (doy(d) - 350) / 365.25))`` normalised to a
  maximum of 1; ``m = mean_d w(d)`` above keeps the expected count. The time of day follows
  a fixed diurnal profile (quiet nights, midday and evening peaks).
* **Event types.** Each event is a purchase with probability
  ``min(purchase_share * purchase_factor_a, 0.9)``, otherwise visit/click/login in the
  proportions of ``event_mix``. A purchase picks an item: items ranked by price, rank
  ``floor(n_items * U ** (1 / spend_i))`` (big spenders buy dearer items); ``price`` = item
  list price (log-normal, median ``median_price``, log-sd ``price_sigma``) x unit price
  level, ``quantity = 1 + Poisson(quantity_extra)``, ``amount = price * quantity``, so amounts
  are close to log-normal. Clicks carry a viewed item (no price); visits and logins none.
  Non-revenue events have ``amount = 0``, ``price`` and ``quantity`` NaN.
* **Refunds.** Each purchase is refunded with probability ``refund_rate`` after
  ``Exponential(refund_delay_days)`` days (dropped when past the end): a ``refund`` event
  with the purchase's item, price and quantity and ``amount`` = the refunded amount (>= 0;
  :mod:`clients.features` subtracts refund amounts from revenue).
* **Channel** by device: mobile users mostly ``app``, desktop users mostly ``web``; some ``store``.
* **Archetype separability.** The table is tuned so the archetypes sit apart in RFM space
  (medians at the end of a 365-day period, 20k users): high_active R 13 d, F 11, M 557;
  growing R 26, F 4, M 125; new R 18, F 1, M 19; at_risk R 226, F 4, M 127; silent R 244,
  F 1, M 15. k-means (k=5) on standardised bounded RFM features recovers them with an
  adjusted Rand index of about 0.62 (tests/simulations/test_generator.py checks > 0.5).
* **Attributes** ``gender``, ``age_band``, ``region``, ``device`` drawn independently from
  the configured shares (region per unit, see above).

Planted truth in ``users``: ``archetype``, ``lifecycle_stage`` at the end of the period
(``churned`` when ``u_i + L_i < days``; else ``introduction`` when tenure < 30 days; else
``growth`` when the rate at the end is above 1.5 times the initial one, ``-delta_i T_i > ln 1.5``;
else ``decline`` when it is below half, ``delta_i T_i > ln 2``; else ``maturity``), ``churn_hazard`` (per day),
``churn_ts`` (NaT when the user outlives the period), ``activity_rate`` (expected events
per day at sign-up) and ``decay_per_day``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator, model_validator

ARCHETYPE_NAMES: tuple[str, ...] = ("high_active", "growing", "at_risk", "silent", "new")

#: Per archetype: sign-up window (fractions of the period; ``new`` uses new_window_days),
#: base activity rate (relative), decay per day, churn hazard per day, spend level,
#: purchase-share factor.
ARCHETYPES: dict[str, dict[str, float]] = {
    "high_active": dict(lo=0.0, hi=0.75, rate=0.4, delta=0.0005, hazard=0.0002, spend=2.2, buy=1.4),
    "growing": dict(lo=0.2, hi=0.75, rate=0.08, delta=-0.006, hazard=0.0003, spend=1.2, buy=1.0),
    "at_risk": dict(lo=0.0, hi=0.45, rate=0.8, delta=0.025, hazard=0.004, spend=1.2, buy=1.2),
    "silent": dict(lo=0.0, hi=0.6, rate=0.05, delta=0.03, hazard=0.002, spend=0.5, buy=1.0),
    "new": dict(lo=-1.0, hi=1.0, rate=0.1, delta=0.0, hazard=0.002, spend=0.6, buy=1.2),
}

#: Columns of ``SyntheticData.users`` that are the planted truth, not data a unit would hold.
TRUTH_COLUMNS: tuple[str, ...] = ("archetype", "lifecycle_stage", "churn_hazard", "churn_ts", "activity_rate",
                                  "decay_per_day")

EVENT_TYPES: tuple[str, ...] = ("purchase", "visit", "click", "login", "refund")
_PURCHASE, _VISIT, _CLICK, _LOGIN, _REFUND = range(5)
CHANNELS: tuple[str, ...] = ("web", "app", "store")
#: P(channel | device) rows in DEVICE order of the config; mobile devices prefer the app.
_CHANNEL_BY_DEVICE = {"ios": (0.2, 0.7, 0.1), "android": (0.2, 0.7, 0.1), "desktop": (0.8, 0.05, 0.15)}
_DIURNAL = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 3.5, 4, 5, 4.5, 4, 4, 4, 4.5, 5.5, 6.5, 7, 6, 4, 2],
                    dtype=float)
_INTRO_DAYS = 30.0


class GeneratorConfig(BaseModel):
    """Parameters of :func:`generate` (units stated per field)."""

    n_users: int = Field(10_000, ge=1, description="Users in total, over all units.")
    n_units: int = Field(5, ge=1, description="Business units K; every unit gets at least one user.")
    start: dt.date = Field(dt.date(2023, 1, 1), description="First day of the period (naive UTC midnight).")
    days: int = Field(365, ge=14, description="Length of the period in days.")
    events_per_user: float = Field(
        10.0, gt=0, description="Expected events per user over the period, before refunds, acquiring purchase included.")
    unit_size_alpha: float | None = Field(
        None, gt=0, description="Dirichlet concentration of unit sizes; None = equal sizes, 0.5 = strong skew.")
    behaviour_skew: float = Field(
        0.0, ge=0, description="How much archetype mix, activity, prices and regions differ across units; 0 = not.")
    seed: int = Field(0, description="Seed of every random draw.")
    archetype_mix: dict[str, float] = Field(
        default_factory=lambda: {"high_active": 0.15, "growing": 0.15, "at_risk": 0.2, "silent": 0.25, "new": 0.25},
        description="Shares of the planted archetypes (normalised).")
    new_window_days: float = Field(45.0, gt=0, description="Archetype 'new' signs up in the last this many days.")
    acquisition_growth: float = Field(0.5, description="Log growth of sign-ups per year (0 = uniform).")
    event_mix: dict[str, float] = Field(
        default_factory=lambda: {"purchase": 0.25, "visit": 0.35, "click": 0.25, "login": 0.15},
        description="Shares of purchase/visit/click/login among events (purchase share is scaled per archetype).")
    refund_rate: float = Field(0.03, ge=0, le=1, description="Probability that a purchase is refunded.")
    refund_delay_days: float = Field(5.0, gt=0, description="Mean delay of a refund after its purchase, days.")
    weekly_profile: tuple[float, float, float, float, float, float, float] = Field(
        (0.9, 0.85, 0.9, 0.95, 1.1, 1.3, 1.2), description="Relative activity Monday..Sunday.")
    yearly_amplitude: float = Field(0.15, ge=0, lt=1, description="Amplitude of the yearly cycle (peak mid-December).")
    n_items: int = Field(1_000, ge=1, description="Items in the catalogue.")
    median_price: float = Field(20.0, gt=0, description="Median item list price, currency units.")
    price_sigma: float = Field(0.8, ge=0, description="Log-sd of item list prices.")
    quantity_extra: float = Field(0.3, ge=0, description="Quantity = 1 + Poisson(quantity_extra).")
    gender_shares: dict[str, float] = Field(default_factory=lambda: {"female": 0.49, "male": 0.48, "other": 0.03})
    age_band_shares: dict[str, float] = Field(
        default_factory=lambda: {"18-24": 0.14, "25-34": 0.24, "35-44": 0.22, "45-54": 0.18, "55-64": 0.13,
                                 "65+": 0.09})
    region_shares: dict[str, float] = Field(
        default_factory=lambda: {"north": 0.25, "south": 0.3, "east": 0.2, "west": 0.25})
    device_shares: dict[str, float] = Field(default_factory=lambda: {"ios": 0.35, "android": 0.4, "desktop": 0.25})
    first_purchase: bool = Field(
        True, description="Every user is acquired through a purchase at sign-up (as in CDNOW); else may never buy.")
    event_ids: bool = Field(True, description="Give every event a unique event_id string.")
    chunk_users: int = Field(200_000, ge=1, description="Users per generation chunk (memory, not results).")

    @field_validator("archetype_mix")
    @classmethod
    def _known_archetypes(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(ARCHETYPE_NAMES)
        if unknown:
            raise ValueError(f"unknown archetype(s) {sorted(unknown)}; known: {ARCHETYPE_NAMES}")
        return v

    @field_validator("event_mix")
    @classmethod
    def _known_events(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - {"purchase", "visit", "click", "login"}
        if unknown:
            raise ValueError(f"event_mix knows purchase, visit, click, login; got {sorted(unknown)}")
        return v

    @field_validator("device_shares")
    @classmethod
    def _known_devices(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(_CHANNEL_BY_DEVICE)
        if unknown:
            raise ValueError(f"device_shares knows {sorted(_CHANNEL_BY_DEVICE)}; got {sorted(unknown)}")
        return v

    @model_validator(mode="after")
    def _enough_users(self) -> GeneratorConfig:
        if self.n_users < self.n_units:
            raise ValueError(f"n_users ({self.n_users}) must be at least n_units ({self.n_units})")
        for name in ("archetype_mix", "event_mix", "gender_shares", "age_band_shares", "region_shares",
                     "device_shares"):
            shares = getattr(self, name)
            if not shares or any(x < 0 for x in shares.values()) or sum(shares.values()) <= 0:
                raise ValueError(f"{name} needs non-negative shares with a positive sum")
        return self


class SyntheticData(BaseModel):
    """What :func:`generate` returns.

    ``events``: canonical events frame (:mod:`fedseg.contract` dtypes) plus ``unit_id``
    (int64, 0..K-1), sorted by user then time. ``users``: ``user_id``, ``unit_id``,
    ``signup_ts``, ``gender``, ``age_band``, ``region``, ``device`` and the planted truth
    ``archetype``, ``lifecycle_stage``, ``churn_hazard`` (per day), ``churn_ts``,
    ``activity_rate`` (expected events/day at sign-up), ``decay_per_day``.
    ``items``: ``item_id``, ``list_price`` (currency units, before the unit price level).
    """

    model_config = {"arbitrary_types_allowed": True}

    config: GeneratorConfig
    events: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame



def _norm(shares: dict[str, float]) -> tuple[list[str], np.ndarray]:
    names = list(shares)
    p = np.array([shares[n] for n in names], dtype=float)
    return names, p / p.sum()


def _categorical(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    """Indices drawn from rows of probabilities ``p`` (1-D shared, or 2-D one row per draw)."""
    cum = np.cumsum(p, axis=-1)
    u = rng.random(size)
    if cum.ndim == 1:
        return np.minimum(np.searchsorted(cum / cum[-1], u, side="right"), len(cum) - 1)
    cum = cum / cum[:, -1:]
    return np.minimum((u[:, None] >= cum).sum(axis=1), cum.shape[1] - 1)


def _unit_sizes(rng: np.random.Generator, cfg: GeneratorConfig) -> np.ndarray:
    k, n = cfg.n_units, cfg.n_users
    shares = np.full(k, 1.0 / k) if cfg.unit_size_alpha is None else rng.dirichlet(np.full(k, cfg.unit_size_alpha))
    # One user per unit first, the rest by largest remainder.
    raw = shares * (n - k)
    sizes = np.floor(raw).astype(np.int64)
    rest = (n - k) - sizes.sum()
    sizes[np.argsort(-(raw - sizes), kind="stable")[:rest]] += 1
    return sizes + 1


def _day_weights(cfg: GeneratorConfig) -> np.ndarray:
    """Seasonal keep-probability per day of the period (max 1)."""
    days = pd.date_range(cfg.start, periods=cfg.days, freq="D")
    weekly = np.asarray(cfg.weekly_profile, dtype=float)[days.day_of_week.to_numpy()]
    yearly = 1 + cfg.yearly_amplitude * np.cos(2 * np.pi * (days.day_of_year.to_numpy() - 350) / 365.25)
    w = weekly * yearly
    return w / w.max()


def _expected_integral(rate: np.ndarray, delta: np.ndarray, span: np.ndarray) -> np.ndarray:
    """``rate * int_0^span exp(-delta t) dt`` (equals ``rate * span`` as delta -> 0)."""
    small = np.abs(delta) < 1e-9
    safe = np.where(small, 1.0, delta)
    return rate * np.where(small, span, -np.expm1(-safe * span) / safe)


def _obj(values: np.ndarray) -> pd.Series:
    """An object-dtype column (pandas 3 would otherwise infer its ``str`` dtype)."""
    return pd.Series(values, dtype=object, copy=False)


def _string_ids(prefix: str, n: int, start: int = 0, width: int = 7) -> np.ndarray:
    numbers = np.arange(start, start + n).astype(str)
    return np.char.add(prefix, np.char.zfill(numbers, width)).astype(object)


def _users(rng: np.random.Generator, cfg: GeneratorConfig) -> dict[str, np.ndarray]:
    """Per-user latent parameters and attributes (arrays of length n_users)."""
    n, k = cfg.n_users, cfg.n_units
    b = cfg.behaviour_skew
    sizes = _unit_sizes(rng, cfg)
    unit = rng.permutation(np.repeat(np.arange(k, dtype=np.int64), sizes))

    arch_names, arch_p = _norm({a: cfg.archetype_mix.get(a, 0.0) for a in ARCHETYPE_NAMES})
    reg_names, reg_p = _norm(cfg.region_shares)
    unit_arch = arch_p * np.exp(b * rng.standard_normal((k, len(arch_p))))
    unit_arch /= unit_arch.sum(axis=1, keepdims=True)
    unit_reg = reg_p * np.exp(b * rng.standard_normal((k, len(reg_p))))
    unit_reg /= unit_reg.sum(axis=1, keepdims=True)
    unit_activity = np.exp(0.5 * b * rng.standard_normal(k))
    unit_price = np.exp(0.2 * b * rng.standard_normal(k))

    archetype = _categorical(rng, unit_arch[unit], n)
    region = _categorical(rng, unit_reg[unit], n)
    table = {name: np.array([ARCHETYPES[a][name] for a in arch_names]) for name in ARCHETYPES["new"]}

    # Sign-up day: uniform in the archetype window, tilted by acquisition growth (inverse CDF).
    lo = table["lo"][archetype] * cfg.days
    hi = table["hi"][archetype] * cfg.days
    is_new = archetype == arch_names.index("new")
    lo = np.where(is_new, max(cfg.days - cfg.new_window_days, 0.0), lo)
    hi = np.where(is_new, cfg.days - 1e-6, hi)
    g = cfg.acquisition_growth / 365.0
    u = rng.random(n)
    if abs(g) < 1e-12:
        signup = lo + u * (hi - lo)
    else:
        signup = lo + np.log1p(u * np.expm1(g * (hi - lo))) / g

    hazard = table["hazard"][archetype] * np.exp(0.3 * rng.standard_normal(n))
    lifetime = rng.exponential(1.0, n) / hazard
    churn_day = signup + lifetime
    end = np.minimum(churn_day, cfg.days)
    span = end - signup
    rate = table["rate"][archetype] * unit_activity[unit] * np.exp(0.25 * rng.standard_normal(n))
    base_delta = table["delta"][archetype]
    delta = base_delta + (0.25 * np.abs(base_delta) + 0.0005) * rng.standard_normal(n)
    spend = table["spend"][archetype] * np.exp(0.2 * rng.standard_normal(n))
    buy = table["buy"][archetype]

    stage = np.full(n, "maturity", dtype=object)
    stage[delta * span > np.log(2)] = "decline"
    stage[-delta * span > np.log(1.5)] = "growth"
    stage[cfg.days - signup < _INTRO_DAYS] = "introduction"
    stage[churn_day < cfg.days] = "churned"

    def attr(shares: dict[str, float]) -> tuple[list[str], np.ndarray]:
        names, p = _norm(shares)
        return names, _categorical(rng, p, n)

    gender = attr(cfg.gender_shares)
    age = attr(cfg.age_band_shares)
    device = attr(cfg.device_shares)
    return dict(unit=unit, archetype=archetype, arch_names=np.array(arch_names, dtype=object), signup=signup,
                churn_day=churn_day, span=span, rate=rate, delta=delta, hazard=hazard, spend=spend, buy=buy,
                stage=stage, region=region, reg_names=np.array(reg_names, dtype=object), gender=gender, age=age,
                device=device, unit_price=unit_price)


def _chunk_events(rng: np.random.Generator, cfg: GeneratorConfig, u: dict, lo: int, hi: int, scale: float,
                  day_w: np.ndarray, item_price_sorted: np.ndarray, purchase_share: float,
                  other_p: np.ndarray, channel_p: np.ndarray) -> dict[str, np.ndarray]:
    """Events of users ``lo..hi-1`` as compact arrays (user index, seconds, type, item, ...)."""
    idx = np.arange(lo, hi)
    signup, span, delta = u["signup"][lo:hi], u["span"][lo:hi], u["delta"][lo:hi]
    lam = scale * _expected_integral(u["rate"][lo:hi], delta, span) / day_w.mean()
    counts = rng.poisson(lam)
    user = np.repeat(idx, counts)
    local = user - lo
    d, s0, T = delta[local], signup[local], span[local]
    v = rng.random(len(user))
    small = np.abs(d) < 1e-9
    safe = np.where(small, 1.0, d)
    offset = np.where(small, v * T, -np.log1p(-v * -np.expm1(-safe * T)) / safe)
    t = np.minimum(s0 + offset, cfg.days - 1e-9)
    day = t.astype(np.int64)
    keep = rng.random(len(user)) < day_w[day]
    user, day = user[keep], day[keep]
    n = len(user)
    # Time of day from the diurnal profile; keep events after sign-up on the sign-up day.
    hour = _categorical(rng, _DIURNAL / _DIURNAL.sum(), n)
    secs = day * 86_400 + hour * 3_600 + rng.integers(0, 3_600, n)
    secs = np.maximum(secs, np.ceil(u["signup"][user] * 86_400).astype(np.int64))

    p_buy = np.minimum(purchase_share * u["buy"][u["archetype"][user]], 0.9)
    etype = np.where(rng.random(n) < p_buy, _PURCHASE, 1 + _categorical(rng, other_p, n)).astype(np.int8)
    if cfg.first_purchase:  # the acquiring purchase, at the sign-up second
        user = np.concatenate([user, idx])
        secs = np.concatenate([secs, np.ceil(signup * 86_400).astype(np.int64)])
        etype = np.concatenate([etype, np.full(len(idx), _PURCHASE, dtype=np.int8)])
        n = len(user)
    # Items ranked by price; big spenders pick dearer ones. Clicks view an item too.
    n_items = len(item_price_sorted)
    rank = np.minimum((n_items * rng.random(n) ** (1.0 / u["spend"][user])).astype(np.int64), n_items - 1)
    item = np.where((etype == _PURCHASE) | (etype == _CLICK), rank, -1)
    is_buy = etype == _PURCHASE
    qty = np.where(is_buy, 1.0 + rng.poisson(cfg.quantity_extra, n), np.nan)
    price = np.where(is_buy, np.round(item_price_sorted[rank] * u["unit_price"][u["unit"][user]], 2), np.nan)
    channel = _categorical(rng, channel_p[u["device"][1][user]], n).astype(np.int8)

    # Refunds of some purchases, later, same item/price/quantity; dropped past the end.
    buys = np.flatnonzero(is_buy)
    refunded = buys[rng.random(len(buys)) < cfg.refund_rate]
    r_secs = secs[refunded] + (rng.exponential(cfg.refund_delay_days, len(refunded)) * 86_400).astype(np.int64)
    ok = r_secs < cfg.days * 86_400
    refunded, r_secs = refunded[ok], r_secs[ok]

    out = dict(
        user=np.concatenate([user, user[refunded]]),
        secs=np.concatenate([secs, r_secs]),
        etype=np.concatenate([etype, np.full(len(refunded), _REFUND, dtype=np.int8)]),
        item=np.concatenate([item, item[refunded]]),
        price=np.concatenate([price, price[refunded]]),
        qty=np.concatenate([qty, qty[refunded]]),
        channel=np.concatenate([channel, channel[refunded]]),
    )
    order = np.lexsort((out["etype"], out["secs"], out["user"]))
    return {key: val[order] for key, val in out.items()}


def generate(config: GeneratorConfig | None = None, **kwargs: object) -> SyntheticData:
    """Generate users and events (pass a :class:`GeneratorConfig` or its fields as keywords)."""
    cfg = config or GeneratorConfig(**kwargs)  # type: ignore[arg-type]
    rng = np.random.default_rng(cfg.seed)
    u = _users(rng, cfg)
    n = cfg.n_users
    day_w = _day_weights(cfg)
    target = max(cfg.events_per_user - (1.0 if cfg.first_purchase else 0.0), 0.0)
    scale = target / max(float(_expected_integral(u["rate"], u["delta"], u["span"]).mean()), 1e-12)

    item_price = np.round(cfg.median_price * np.exp(cfg.price_sigma * rng.standard_normal(cfg.n_items)), 2)
    item_price = np.maximum(item_price, 0.01)
    item_order = np.argsort(item_price, kind="stable")  # rank -> item index
    item_ids = _string_ids("i", cfg.n_items, width=5)
    mix = {e: cfg.event_mix.get(e, 0.0) for e in ("purchase", "visit", "click", "login")}
    total = sum(mix.values())
    purchase_share = mix["purchase"] / total
    other = np.array([mix["visit"], mix["click"], mix["login"]], dtype=float)
    other_p = other / other.sum() if other.sum() > 0 else np.array([1.0, 0.0, 0.0])
    device_names = u["device"][0]
    channel_p = np.array([_CHANNEL_BY_DEVICE[d] for d in device_names])

    parts: list[dict[str, np.ndarray]] = []
    for lo in range(0, n, cfg.chunk_users):
        parts.append(_chunk_events(rng, cfg, u, lo, min(lo + cfg.chunk_users, n), scale, day_w,
                                   item_price[item_order], purchase_share, other_p, channel_p))
    ev = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}
    del parts

    start_ns = np.datetime64(pd.Timestamp(cfg.start).to_datetime64(), "ns")
    user_ids = _string_ids("u", n)
    items_obj = np.append(item_ids[item_order], None).astype(object)  # rank -> id; -1 -> None
    n_ev = len(ev["user"])
    events = pd.DataFrame({
        "user_id": _obj(user_ids[ev["user"]]),
        "ts": (start_ns + ev["secs"].astype("timedelta64[s]")).astype("datetime64[ns]"),
        "event_type": _obj(np.array(EVENT_TYPES, dtype=object)[ev["etype"]]),
        "amount": np.where(np.isnan(ev["price"]), 0.0,
                           np.round(np.nan_to_num(ev["price"]) * np.nan_to_num(ev["qty"]), 2)),
        "item_id": _obj(items_obj[ev["item"]]),
        "price": ev["price"],
        "quantity": ev["qty"],
        "channel": _obj(np.array(CHANNELS, dtype=object)[ev["channel"]]),
        "event_id": _obj(_string_ids("e", n_ev, width=8) if cfg.event_ids else np.full(n_ev, None, dtype=object)),
        "unit_id": u["unit"][ev["user"]],
    })
    del ev

    day_ns = np.int64(86_400 * 10**9)
    churned = u["churn_day"] < cfg.days
    churn_ns = np.where(churned, np.round(u["churn_day"] * day_ns / 1e3) * 1e3, 0).astype(np.int64)
    users = pd.DataFrame({
        "user_id": _obj(user_ids),
        "unit_id": u["unit"],
        "signup_ts": start_ns + (u["signup"] * 86_400).astype(np.int64).astype("timedelta64[s]"),
        "gender": _obj(np.array(u["gender"][0], dtype=object)[u["gender"][1]]),
        "age_band": _obj(np.array(u["age"][0], dtype=object)[u["age"][1]]),
        "region": _obj(u["reg_names"][u["region"]]),
        "device": _obj(np.array(device_names, dtype=object)[u["device"][1]]),
        "archetype": _obj(u["arch_names"][u["archetype"]]),
        "lifecycle_stage": _obj(u["stage"]),
        "churn_hazard": u["hazard"],
        "churn_ts": pd.Series(start_ns + churn_ns.astype("timedelta64[ns]")).where(churned),
        "activity_rate": scale * u["rate"],
        "decay_per_day": u["delta"],
    })
    users["signup_ts"] = users["signup_ts"].astype("datetime64[ns]")
    users["churn_ts"] = users["churn_ts"].astype("datetime64[ns]")
    items = pd.DataFrame({"item_id": item_ids, "list_price": item_price})
    return SyntheticData(config=cfg, events=events, users=users, items=items)


def write_units(data: SyntheticData, out_dir: str | Path, fmt: Literal["parquet", "csv"] = "parquet",
                include_truth: bool = False, write_truth: bool = True) -> list[Path]:
    """Write ``events_unit_<k>.<fmt>`` and ``users_unit_<k>.<fmt>`` for every unit k = 0..K-1.

    Returns those paths (events then users, unit by unit). Every event and every user lands
    in exactly one file. The users files hold what a unit would hold (``user_id``,
    ``unit_id``, ``signup_ts`` and attributes); the planted truth columns are left out unless
    ``include_truth``. With ``write_truth`` the truth goes to ``truth.<fmt>`` (``user_id``,
    ``unit_id`` and the truth columns) beside them, for evaluation; do not ship that file to
    units. CSV timestamps are ISO 8601.
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def write(frame: pd.DataFrame, path: Path) -> None:
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)

    truth = list(TRUTH_COLUMNS)
    users = data.users if include_truth else data.users.drop(columns=truth)
    k_units = data.config.n_units
    ev_unit = data.events["unit_id"].to_numpy()
    ev_order = np.argsort(ev_unit, kind="stable")
    ev_bounds = np.searchsorted(ev_unit[ev_order], np.arange(k_units + 1))
    us_unit = users["unit_id"].to_numpy()
    us_order = np.argsort(us_unit, kind="stable")
    us_bounds = np.searchsorted(us_unit[us_order], np.arange(k_units + 1))
    paths: list[Path] = []
    for k in range(k_units):
        for name, frame, order, bounds in (("events", data.events, ev_order, ev_bounds),
                                           ("users", users, us_order, us_bounds)):
            path = out / f"{name}_unit_{k}.{fmt}"
            write(frame.iloc[order[bounds[k]:bounds[k + 1]]].reset_index(drop=True), path)
            paths.append(path)
    if write_truth:
        write(data.users[["user_id", "unit_id", *truth]], out / f"truth.{fmt}")
    return paths
