"""The unit's side of privacy: its own account, its own randomness, its answer to a privacy plan.

- :func:`unit_account`: the unit's :class:`privacy.budget.UnitPrivacy` from its node config
  (``unit-id``, ``dataset-id``, ``ledger-path``, ``epsilon-budget``, ``delta-budget``) or, in
  simulation, from what the simulation hands the ClientApp. The dataset id defaults to a
  fingerprint of the unit's events, so spend is kept per dataset even when nobody named it.
- :func:`answer_privacy_plan`: the reply to the coordinator's ``query.privacy`` message.
- :func:`private_generators`: the randomness of DP-SGD (Poisson sample, noise). It comes from
  the operating system's entropy (``secrets``), so nothing the coordinator sends or knows (run
  seed, round, node id) lets it replay which users were sampled or which noise was drawn, and
  amplification by subsampling holds. A unit-local research seed (node config ``dp-seed``, or
  ``fedseg simulate --dp-research-seed``) makes runs reproducible; it never leaves the unit and
  must not be used in production.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedseg import protocol
from privacy.accounting import Release
from privacy.budget import BudgetRefused, ContextStore, LedgerStore, UnitPrivacy
from privacy.ledger import BudgetExceeded, BudgetLedger

#: delta budget of a unit whose node config sets ``epsilon-budget`` but no ``delta-budget``.
DEFAULT_DELTA_BUDGET = 1e-5


def events_fingerprint(events: pd.DataFrame) -> str:
    """``sha256:<16 hex>`` over the canonical events (row order included): the default dataset id."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(events, index=False).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def node_budget(node_config: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(epsilon-budget, delta-budget)`` of the node config, or None when the unit set none."""
    if "epsilon-budget" not in node_config:
        return None
    eps = float(node_config["epsilon-budget"])
    delta = float(node_config.get("delta-budget", DEFAULT_DELTA_BUDGET))
    if not eps > 0 or not 0 < delta < 1:
        raise BudgetRefused(f"node config epsilon-budget={eps}, delta-budget={delta}: epsilon must be positive and "
                            "delta in (0, 1)")
    return eps, delta


def unit_account(context: Any, unit: str, dataset_id: str, ledger_path: Path | None) -> UnitPrivacy:
    """The unit's privacy account (ledger file if configured, else the run's context state)."""
    node = context.node_config
    path = Path(str(node["ledger-path"])) if "ledger-path" in node else ledger_path
    budget = node_budget(node)
    if path is not None:
        ledger = BudgetLedger(path)
        store: Any = LedgerStore(ledger, unit, dataset_id)
        budget = budget or ledger.budget(unit, dataset_id)
    else:
        store = ContextStore(context.state, unit, dataset_id)
    return UnitPrivacy(unit=unit, dataset=dataset_id, store=store, budget=budget)


def answer_privacy_plan(account: UnitPrivacy, plan: Mapping[str, Any], n_users: int) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """Metrics and config records of the reply to a ``query.privacy`` message."""
    releases = [Release.model_validate(r) for r in json.loads(str(plan[protocol.PLAN_RELEASES]))]
    identity = {"unit-id": account.unit, "dataset-id": account.dataset}
    try:
        own = account.accept(str(plan[protocol.PLAN_RUN_ID]), str(plan[protocol.PLAN_TASK]),
                             float(plan[protocol.PLAN_DELTA]), float(plan[protocol.PLAN_EPSILON]), releases,
                             n_users=n_users)
    except (BudgetRefused, BudgetExceeded) as exc:
        return {"accepted": 0}, {protocol.IDENTITY: identity, protocol.REFUSAL: {"reason": str(exc)}}
    return {"accepted": 1, "epsilon": own}, {protocol.IDENTITY: identity}


def private_generators(node_config: Mapping[str, Any], research_seed: int | None, purpose: str,
                       request: Any = None) -> tuple[Any, Any, np.random.Generator]:
    """Fresh torch generators for Poisson sampling and noise, and a numpy generator.

    Seeded from OS entropy, unless the unit keeps a seed of its own; then the streams are
    ``sha256(seed, purpose, request)``, where ``purpose`` names the unit and the release and
    ``request`` is the message's content (:func:`fedseg.protocol.content_digest`). Keying by the whole request
    means two different requests never share noise (no differencing of two releases, not even
    between iterations of one run or when a deviating coordinator repeats a run id), and the
    same request gets the same answer back (nothing to average).

    * ``dp-seed`` in the unit's node config: the digest includes the coordinator's run id.
    * ``research_seed`` (simulations only, the coordinator is the researcher's own code): the
      digest leaves the run id (a fresh uuid per run) out, so two simulations with the same seed
      draw the same holdouts, samples and noise.
    """
    import torch

    if "dp-seed" in node_config:
        seed, ignore = node_config["dp-seed"], ()
    elif research_seed is not None:
        seed, ignore = research_seed, (protocol.RUN_ID,)
    else:  # OS entropy: nothing to key, so the request (a whole model, in training) is not hashed
        seed = None
    if seed is None:
        seeds = [secrets.randbits(63) for _ in range(3)]
    else:
        asked = "" if request is None else protocol.content_digest(request, ignore=ignore)
        key = f"{seed}|{purpose}|{asked}"
        seeds = [int.from_bytes(hashlib.sha256(f"{key}|{k}".encode()).digest()[:8], "big") >> 1 for k in range(3)]
    return (torch.Generator().manual_seed(seeds[0]), torch.Generator().manual_seed(seeds[1]),
            np.random.default_rng(seeds[2]))
