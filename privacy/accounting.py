"""Privacy accounting: every epsilon fedseg states comes from here.

One interface for every task (training, evaluation, segmentation, audits, KPIs, effects):

- a :class:`Release` describes one kind of differentially private release about a group of end
  users: a Gaussian mechanism with noise multiplier ``z`` (noise standard deviation divided by
  the release's L2 sensitivity to adding or removing one end user), optionally Poisson-sampled
  at rate ``q`` (DP-SGD steps, client-level rounds), repeated ``count`` times;
- :func:`epsilon` composes any list of releases with Google's ``dp-accounting`` (RDP by
  default, the figure fedseg states; PLD, tighter, on request) at a given delta;
- :func:`calibrate` is the one bisection: the smallest noise multiplier whose releases meet a
  target epsilon;
- :func:`default_delta` is the one default-delta rule.

User groups. A release touches ``all`` users, or only the ``train`` users, or only the
``test`` users of a unit (training and evaluation touch disjoint users). A user's epsilon
composes the releases that touch them; the guarantee fedseg prints is the largest over the
groups (parallel composition over disjoint users): ``max(eps(train + all), eps(test + all))``.

Composition. Within one run, releases compose exactly by the accountant (RDP or PLD over
heterogeneous events). Across runs and tasks the budget ledger adds epsilons and deltas
(basic composition, valid for any mix of mechanisms; see :mod:`privacy.ledger`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import dp_accounting as dpa


def _dpa() -> Any:
    """dp-accounting, imported on first use: it pulls in scipy.signal and scipy.stats (about a
    second), which a unit's fresh ClientApp process should not pay for a message without DP."""
    import dp_accounting
    from absl import logging as absl_logging

    # dp-accounting logs a warning for every RDP order it drops as non-convergent; the orders it
    # keeps still give a valid (conservative) bound, so keep the log readable.
    absl_logging.set_verbosity(absl_logging.ERROR)
    return dp_accounting

AccountantName = Literal["rdp", "pld"]
Group = Literal["all", "train", "test"]
Mechanism = Literal["gaussian", "laplace"]


class Release(BaseModel):
    """``count`` Gaussian (or Laplace) releases about one group of end users, optionally Poisson-sampled.

    Gaussian: ``noise_multiplier`` z is the noise standard deviation divided by the release's L2
    sensitivity (add/remove one end user, or one unit in client-level DP). Laplace: it is the
    noise scale ``b`` divided by the L1 sensitivity (one Laplace release alone is
    ``(1 / z, 0)``-DP). ``sample_rate`` q < 1 means each user (unit) is included independently
    with probability q in each release.
    """

    model_config = ConfigDict(frozen=True)

    noise_multiplier: float = Field(ge=0, description="z = noise std / L2 sensitivity (Gaussian), noise scale / "
                                                      "L1 sensitivity (Laplace); 0: no noise (epsilon inf).")
    sample_rate: float = Field(1.0, gt=0, le=1, description="Poisson sampling rate q (1: no sampling).")
    count: int = Field(1, ge=0, description="How many times this release is made.")
    group: Group = Field("all", description="Users it touches: all, train (training users), test (test users).")
    task: str = Field("", description="What the release is for (training, evaluation, segmentation, audit, ...).")
    mechanism: Mechanism = Field("gaussian", description="gaussian or laplace noise.")

    def event(self) -> "dpa.DpEvent":
        """The dp-accounting event of this release."""
        dpa = _dpa()
        single = dpa.LaplaceDpEvent(self.noise_multiplier) if self.mechanism == "laplace" \
            else dpa.GaussianDpEvent(self.noise_multiplier)
        if self.sample_rate < 1:
            single = dpa.PoissonSampledDpEvent(self.sample_rate, single)
        return single if self.count == 1 else dpa.SelfComposedDpEvent(single, self.count)


def _accountant(name: AccountantName) -> "dpa.PrivacyAccountant":
    dpa = _dpa()
    if name == "pld":
        return dpa.pld.PLDAccountant()
    if name == "rdp":
        return dpa.rdp.RdpAccountant()
    raise ValueError(f"unknown accountant {name!r}; choose rdp or pld")


def merged(releases: Sequence[Release]) -> list[Release]:
    """The same releases with identical mechanisms (z, q, group) merged into one release whose
    ``count`` is the sum: composition is commutative and a repeated release composes as its
    count, so the accountant gives the same epsilon, in one event per mechanism."""
    counts: dict[tuple[float, float, str, str], int] = {}
    for r in releases:
        if r.count > 0:
            key = (float(r.noise_multiplier), float(r.sample_rate), r.group, r.mechanism)
            counts[key] = counts.get(key, 0) + r.count
    return [Release(noise_multiplier=z, sample_rate=q, group=g, count=n, mechanism=m)
            for (z, q, g, m), n in sorted(counts.items())]


def _group_epsilon(releases: Sequence[Release], delta: float, accountant: AccountantName) -> float:
    live = merged(releases)
    if not live:
        return 0.0
    if any(r.noise_multiplier <= 0 for r in live):
        return math.inf
    event = live[0].event() if len(live) == 1 else _dpa().ComposedDpEvent([r.event() for r in live])
    return float(_accountant(accountant).compose(event).get_epsilon(delta))


def group_epsilons(releases: Sequence[Release], delta: float, accountant: AccountantName = "rdp"
                   ) -> dict[str, float]:
    """epsilon of each user group present: ``train`` and ``test`` include the ``all`` releases."""
    groups = {r.group for r in releases}
    if not 0 < delta < 1:
        raise ValueError(f"delta {delta} must be in (0, 1)")
    if groups <= {"all"}:
        return {"all": _group_epsilon(releases, delta, accountant)}
    return {g: _group_epsilon([r for r in releases if r.group in (g, "all")], delta, accountant)
            for g in ("train", "test") if g in groups or "all" in groups}


def epsilon(releases: Sequence[Release], delta: float, accountant: AccountantName = "rdp") -> float:
    """The per-user epsilon of ``releases`` at ``delta``: the largest over user groups."""
    return max(group_epsilons(releases, delta, accountant).values(), default=0.0)


def composition_key(releases: Sequence[Release], delta: float, accountant: AccountantName = "rdp") -> str:
    """A canonical name of ``epsilon(releases, delta, accountant)``: the same for every order and
    split of the same releases (composition is commutative and ``count`` repeats a release), so a
    computed epsilon can be kept and reused (:meth:`privacy.budget.UnitPrivacy.accept`)."""
    import json

    # a Gaussian release keeps the key it had before Laplace releases existed (memos stay valid)
    return json.dumps([accountant, float(delta), [[r.noise_multiplier, r.sample_rate, r.group, r.count]
                                                  + ([r.mechanism] if r.mechanism != "gaussian" else [])
                                                  for r in merged(releases)]])


def sampled_gaussian_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                             accountant: AccountantName = "rdp") -> float:
    """epsilon after ``steps`` Poisson-sampled (rate ``sample_rate``) Gaussian releases."""
    return epsilon([Release(noise_multiplier=noise_multiplier, sample_rate=sample_rate, count=steps)], delta,
                   accountant)


def calibrate(releases_for: Callable[[float], Sequence[Release]], target_epsilon: float, delta: float,
              accountant: AccountantName = "rdp", lo: float = 0.05, hi: float = 1e4, rel_tol: float = 1e-7) -> float:
    """Smallest noise multiplier z in [lo, hi] with ``epsilon(releases_for(z)) <= target_epsilon``.

    ``releases_for`` must give releases whose epsilon decreases as z grows. Bisection on log z.
    """
    if not target_epsilon > 0:
        raise ValueError(f"target epsilon {target_epsilon} must be positive")

    def eps(z: float) -> float:
        return epsilon(releases_for(z), delta, accountant)

    if eps(hi) > target_epsilon:
        raise ValueError(f"epsilon {target_epsilon} is out of reach even with noise multiplier {hi:g}; "
                         "plan fewer rounds, steps or releases, or a larger epsilon")
    if eps(lo) <= target_epsilon:
        return lo
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def gaussian_noise_multiplier(target_epsilon: float, delta: float, count: int = 1) -> float:
    """z of ``count`` Gaussian releases that together cost ``target_epsilon`` at ``delta``."""
    return calibrate(lambda z: [Release(noise_multiplier=z, count=count)], target_epsilon, delta)


def laplace_noise_multiplier(target_epsilon: float, delta: float, count: int = 1) -> float:
    """Scale / L1 sensitivity of ``count`` Laplace releases that together cost ``target_epsilon``
    at ``delta`` by the accountant (slightly above ``count / target_epsilon``, the pure-DP scale,
    for one release: the RDP conversion is not tight for pure DP)."""
    return calibrate(lambda b: [Release(noise_multiplier=b, count=count, mechanism="laplace")], target_epsilon, delta,
                     lo=0.01)


def split_gaussian_budget(target_epsilon: float, delta: float, parts: dict[str, tuple[float, float]]
                          ) -> dict[str, float]:
    """Noise standard deviation of each of several Gaussian releases that share one budget.

    ``parts`` maps a release's name to ``(share, squared L2 sensitivity)``. A Gaussian release of
    noise multiplier z has Renyi DP ``alpha / (2 z^2)`` at every order alpha, so releases compose
    exactly like one Gaussian whose ``rho = 1 / (2 z^2)`` is the sum of theirs: the ``rho`` of the
    single Gaussian that meets ``(target_epsilon, delta)`` is split by share, and a part with
    ``rho_i`` gets ``sigma_i = sqrt(Delta_i^2 / (2 rho_i))``. Parts with share 0 get no noise (and
    must not be released under DP)."""
    total = sum(share for share, _ in parts.values())
    if not total > 0:
        raise ValueError("no part has a positive share of the budget")
    rho = 1.0 / (2.0 * gaussian_noise_multiplier(target_epsilon, delta) ** 2)
    return {name: (math.sqrt(sens_sq / (2.0 * rho * share / total)) if share > 0 else 0.0)
            for name, (share, sens_sq) in parts.items()}


def default_delta(n_users: float) -> float:
    """The default delta for a dataset of ``n_users`` end users: the largest power of ten at most
    ``1 / (10 n)`` (so delta stays well below the 1/n at which a mechanism could reveal one
    user's data outright; e.g. 23,570 CDNOW users -> 1e-6)."""
    n = max(float(n_users), 1.0)
    exponent = math.floor(math.log10(1.0 / (10.0 * n)) + 1e-12)
    return 10.0 ** exponent


def delta_for(delta: float | None, population: int) -> float:
    """A run's delta: as given, or :func:`default_delta` of its population (end users over all units)."""
    return delta if delta is not None else default_delta(population)


def delta_acceptable(delta: float, n_users: int) -> bool:
    """Whether ``delta`` meets the default-delta rule for a dataset of ``n_users`` users."""
    return delta <= 1.0 / (10.0 * max(n_users, 1)) * (1 + 1e-9)
