"""The packages stay in their layers: every import in the source is parsed (function-level
imports included) and checked against what each package may import.

- ``fedseg``: what every role shares; imports no other fedseg package;
- ``privacy``: accounting, ledger, keys, secure aggregation; builds on ``fedseg`` only;
- ``clients`` (the unit's code): ``fedseg`` and ``privacy``, never the coordinator (``server``),
  the research harness (``simulations``) or ``audit``;
- ``server`` (the coordinator): ``fedseg`` and ``privacy``; never unit code (``clients``, which
  reads rows), never ``simulations``;
- ``audit``: runs both sides of a federated audit, so it may use ``clients`` and ``server``, never
  ``simulations``;
- ``simulations``: the research harness, may use everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fedseg", "privacy", "clients", "server", "audit", "simulations")
ALLOWED = {
    "fedseg": {"fedseg"},
    "privacy": {"fedseg", "privacy"},
    "clients": {"fedseg", "privacy", "clients"},
    "server": {"fedseg", "privacy", "server"},
    "audit": {"fedseg", "privacy", "clients", "server", "audit"},
    "simulations": set(PACKAGES),
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(first-level package, line) of every fedseg-internal import in a file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                out.add((top, node.lineno))
    return out


def test_no_package_imports_across_its_layer():
    violations = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for top, line in sorted(imported_packages(path)):
                if top not in ALLOWED[package]:
                    violations.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not violations, "layer violations:\n" + "\n".join(violations)
