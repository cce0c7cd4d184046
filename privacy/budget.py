"""A unit's own privacy account: the unit charges every release it makes and refuses to overspend.

A partner unit trusts only its own code, its own ``unit.toml`` and its own keys, so the unit,
not the coordinator, keeps the account of what its end users have spent:

1. **Acceptance** (before anything about the data is released): the coordinator states the
   run's task, delta, its claimed total epsilon and the list of releases it plans
   (:class:`privacy.accounting.Release`). The unit composes them with its own accountant,
   adds what the run already released (a resumed run), and refuses when

   - its own epsilon is above the coordinator's claim (the claim would be false),
   - delta is above ``1 / (10 n)`` for the unit's ``n`` users (:func:`privacy.accounting.delta_acceptable`),
   - delta changed within a run, or
   - spent + asked exceeds the unit's budget (epsilon or delta; :class:`privacy.ledger.BudgetExceeded`).

   Refusals name no data size, so nothing about a small unit leaks through an error.
2. **Charge** (write-ahead, before each release): the release actually about to be made, built
   from the parameters the unit will apply, is composed with the run's earlier releases; the
   unit refuses if that exceeds what it accepted (a coordinator asking for more, or less noise,
   than it announced), and records the run's new cumulative ``(epsilon, delta)``.

Where the account lives: the unit's budget ledger (:class:`privacy.ledger.BudgetLedger`, across
runs and tasks) when ``ledger-path`` is configured; otherwise Flower's per-run context on the
unit, which covers one run only (set a ledger to enforce a budget across runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from fedseg.errors import FedsegError
from privacy.accounting import Release, composition_key, delta_acceptable, epsilon
from privacy.ledger import TOLERANCE, BudgetExceeded, BudgetLedger


class BudgetRefused(FedsegError):
    """The unit refuses a run or a release (the message says why; it holds no data size)."""

    exit_code = 2


class RunStore(Protocol):
    """Where a unit keeps the account of its runs."""

    def accepted(self, run_id: str) -> tuple[float, float] | None: ...
    def accept(self, run_id: str, task: str, delta: float, epsilon: float) -> None: ...
    def releases(self, run_id: str) -> list[Release]: ...
    def record(self, run_id: str, task: str, release: Release, cumulative: float, delta: float) -> None: ...
    def check(self, run_id: str, epsilon: float, delta: float, budget: tuple[float, float] | None) -> None: ...
    def memo(self, key: str) -> float | None: ...
    def remember(self, results: dict[str, float]) -> None: ...


@dataclass
class LedgerStore:
    """The unit's ledger file: the account across runs and tasks."""

    ledger: BudgetLedger
    unit: str
    dataset: str

    def accepted(self, run_id: str) -> tuple[float, float] | None:
        return self.ledger.accepted(run_id, self.unit, self.dataset)

    def accept(self, run_id: str, task: str, delta: float, epsilon: float) -> None:
        self.ledger.accept_run(run_id, self.unit, self.dataset, task, delta, epsilon)

    def releases(self, run_id: str) -> list[Release]:
        return self.ledger.run_releases(run_id, self.unit, self.dataset)

    def record(self, run_id: str, task: str, release: Release, cumulative: float, delta: float) -> None:
        number = self.ledger.releases(run_id, self.unit, self.dataset) + 1
        self.ledger.record(run_id, self.unit, self.dataset, number, cumulative, delta, _mechanism(release),
                           {"release": release.model_dump()}, task=task)

    def check(self, run_id: str, epsilon: float, delta: float, budget: tuple[float, float] | None) -> None:
        self.ledger.check(self.unit, self.dataset, run_id, epsilon, delta, budget)

    def memo(self, key: str) -> float | None:
        return self.ledger.memo(key)

    def remember(self, results: dict[str, float]) -> None:
        self.ledger.remember(results)


@dataclass
class ContextStore:
    """Flower's per-run state on the unit (``context.state``): the account of the current run only."""

    state: Any  # flwr.app.RecordDict
    unit: str
    dataset: str
    KEY = "fedseg-privacy-account"

    MEMO = "fedseg-epsilon-memo"

    def _runs(self) -> dict[str, Any]:
        record = self.state.config_records.get(self.KEY)
        return json.loads(str(record["runs"])) if record is not None else {}

    def _save(self, runs: dict[str, Any]) -> None:
        from flwr.app import ConfigRecord

        self.state.config_records[self.KEY] = ConfigRecord({"runs": json.dumps(runs)})

    def _memo(self) -> dict[str, float]:
        record = self.state.config_records.get(self.MEMO)
        return json.loads(str(record["memo"])) if record is not None else {}

    def memo(self, key: str) -> float | None:
        return self._memo().get(key)

    def remember(self, results: dict[str, float]) -> None:
        from flwr.app import ConfigRecord

        self.state.config_records[self.MEMO] = ConfigRecord({"memo": json.dumps({**self._memo(), **results})})

    def accepted(self, run_id: str) -> tuple[float, float] | None:
        run = self._runs().get(run_id)
        return None if run is None else (run["delta"], run["accepted"])

    def accept(self, run_id: str, task: str, delta: float, epsilon: float) -> None:
        runs = self._runs()
        run = runs.setdefault(run_id, {"releases": []})
        run.update({"task": task, "delta": delta, "accepted": epsilon})
        self._save(runs)

    def releases(self, run_id: str) -> list[Release]:
        return [Release.model_validate(r) for r in self._runs().get(run_id, {}).get("releases", [])]

    def record(self, run_id: str, task: str, release: Release, cumulative: float, delta: float) -> None:
        runs = self._runs()
        runs.setdefault(run_id, {"releases": []})["releases"].append(release.model_dump())
        self._save(runs)

    def check(self, run_id: str, epsilon: float, delta: float, budget: tuple[float, float] | None) -> None:
        if budget is not None and (epsilon > budget[0] + TOLERANCE or delta > budget[1] * (1 + 1e-9)):
            raise BudgetExceeded(self.unit, self.dataset, (0.0, 0.0), (epsilon, delta), budget)


def _mechanism(release: Release) -> str:
    sampled = f", Poisson rate {release.sample_rate:g}" if release.sample_rate < 1 else ""
    return f"Gaussian z={release.noise_multiplier:.4g}{sampled} x{release.count} ({release.group} users)"


@dataclass
class UnitPrivacy:
    """One unit's privacy account for one dataset (see the module doc)."""

    unit: str
    dataset: str
    store: RunStore
    budget: tuple[float, float] | None = None

    def require_private(self, what: str) -> None:
        """A unit with a budget takes part only in differentially private runs."""
        if self.budget is not None:
            raise BudgetRefused(f"unit {self.unit!r} allows epsilon <= {self.budget[0]:g} per user on dataset "
                                f"{self.dataset!r}; this {what} has no differential privacy. Run it with DP "
                                "(--privacy user, or --epsilon).")

    def accept(self, run_id: str, task: str, delta: float, stated_epsilon: float, planned: list[Release],
               n_users: int | None = None) -> float:
        """Accept (or refuse) a run before its first release; returns the unit's own epsilon for it."""
        if not 0 < delta < 1:
            raise BudgetRefused(f"unit {self.unit!r}: delta {delta} must be in (0, 1)")
        if n_users is not None and not delta_acceptable(delta, n_users):
            raise BudgetRefused(f"unit {self.unit!r}: delta {delta:g} is above 1 / (10 x this unit's number of "
                                "users); ask for a smaller delta")
        before = self.store.accepted(run_id)
        if before is not None and abs(before[0] - delta) > 1e-15:
            raise BudgetRefused(f"unit {self.unit!r}: run {run_id} was accepted at delta {before[0]:g}; it cannot "
                                f"continue at delta {delta:g}")
        own = self._remember_prefixes(self.store.releases(run_id), list(planned), delta)
        if own > stated_epsilon * (1 + 1e-6) + TOLERANCE:
            raise BudgetRefused(f"unit {self.unit!r}: the coordinator states epsilon {stated_epsilon:.4f} for this "
                                f"{task} run, but the releases it plans cost {own:.4f} by this unit's accountant")
        self.store.check(run_id, own, delta, self.budget)
        self.store.accept(run_id, task, delta, own)
        return own

    def _epsilon(self, releases: list[Release], delta: float) -> float:
        """The accountant's epsilon of ``releases``, kept in the unit's store by composition key."""
        key = composition_key(releases, delta)
        value = self.store.memo(key)
        if value is None:
            value = epsilon(releases, delta)
            self.store.remember({key: value})
        return value

    def _remember_prefixes(self, done: list[Release], planned: list[Release], delta: float) -> float:
        """epsilon of ``done + planned``; the accountant's epsilon after each planned release is kept
        too, so that charging the releases as planned needs no accountant in the unit's later
        processes (a deployed unit starts a fresh process per message; dp-accounting and scipy
        take about 1.5 s of CPU to import). Returns the total."""
        total = self._epsilon(done, delta) if not planned else 0.0
        for k in range(1, len(planned) + 1):
            total = self._epsilon(done + planned[:k], delta)
        return total

    def charge(self, run_id: str, task: str, release: Release) -> float:
        """Record ``release`` before it is made; refuse it if it exceeds what the run was accepted at.

        Returns the run's cumulative epsilon after it."""
        accepted = self.store.accepted(run_id)
        if accepted is None:
            raise BudgetRefused(f"unit {self.unit!r}: run {run_id} asks for a private release but never stated its "
                                "privacy plan; this unit answers only runs it accepted")
        delta, cap = accepted
        cumulative = self._epsilon(self.store.releases(run_id) + [release], delta)
        if cumulative > cap * (1 + 1e-6) + TOLERANCE:
            raise BudgetRefused(f"unit {self.unit!r}: this {release.task or task} release would bring run {run_id} to "
                                f"epsilon {cumulative:.4f}, above the {cap:.4f} this unit accepted at its start")
        self.store.check(run_id, cumulative, delta, self.budget)
        self.store.record(run_id, task, release, cumulative, delta)
        return cumulative
