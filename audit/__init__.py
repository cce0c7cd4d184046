"""fedseg audit: fairness, pricing and federated audits with a signed, hash-chained trail.

Public surface (imported lazily so that ``fedseg --help`` stays fast)::

    from audit import fairness_audit, FairnessSpec, FairnessReport
    from audit import pricing_audit, PricingSpec, PricingReport, PricingFinding
    from audit import federated_fairness, federated_pricing, combine_fairness, DPConfig
    from audit import keygen, append_entry, verify_log, write_report
    from audit import load_policy, Policy          # rules decided on intervals (audit/default_policy.toml)
    from audit.intervals import wilson, newcombe, mover_ratio

See docs/audit.md for the math and what is hand-written and why.
"""

from __future__ import annotations

import importlib

import fedseg  # noqa: F401 - first: Flower's telemetry off before flwr is imported (fedseg/__init__.py)
from typing import Any

_EXPORTS = {
    "FairnessReport": "audit.fairness", "FairnessSpec": "audit.fairness", "FairnessStats": "audit.fairness",
    "fairness_audit": "audit.fairness", "local_stats": "audit.fairness",
    "PricingFinding": "audit.pricing", "PricingReport": "audit.pricing", "PricingSpec": "audit.pricing",
    "pricing_audit": "audit.pricing",
    "DPConfig": "audit.federated", "combine_fairness": "audit.federated", "federated_fairness": "audit.federated",
    "federated_pricing": "audit.federated",
    "write_report": "audit.report_html", "Estimate": "audit.stats", "holm": "audit.stats",
    "Policy": "audit.policy", "load_policy": "audit.policy",
    "keygen": "audit.trail", "append_entry": ("audit.trail", "append"), "verify_log": ("audit.trail", "verify"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'audit' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(importlib.import_module(module), attr)
