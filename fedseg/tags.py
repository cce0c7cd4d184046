"""Declarative tags: a small, safe expression language over a user's features.

A tag is a named condition, for example::

    [tags.high_frequency_low_spend]
    rule = "frequency >= 5 and monetary_mean < q25(monetary_mean)"
    description = "buys often, spends little per purchase day"

(or the short form ``high_frequency_low_spend = "frequency >= 5 and ..."`` under ``[tags]``).

Grammar (Python's expression syntax, parsed with :mod:`ast` and checked node by node, never
``eval``): comparisons ``< <= > >= == !=`` (chains allowed), ``and``, ``or``, ``not``, arithmetic
``+ - * /`` and unary minus, numbers, parentheses, feature names (:data:`TAG_FEATURES`) and quantile
calls ``qNN(feature)`` with NN from 1 to 99: the NN-th percentile of the feature over every unit's
users, from the federated histograms (:data:`QUANTILE_EDGES`; DP with ``--epsilon``). A rule must be
a condition (a comparison or a boolean combination). A missing value (a price feature for a user
without priced purchases) makes every comparison with it false.

Quantiles are read at bin resolution: ``qNN(f)`` is the **upper edge** of the first bin of ``f``'s
histogram where the cumulative share reaches NN% (so ``f < q25(f)`` holds for at least a quarter of
the users, and exactly for the users in the bins below and in that bin).

Errors name the rule and the 1-based column in its text (:class:`TagRuleError`).
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from fedseg.errors import FedsegError
from fedseg.segments import FREQUENCY_EDGES, MONETARY_EDGES

_DAYS = np.arange(0, 731, 1.0)
_COUNTS = np.unique(np.r_[np.arange(0, 100, 1.0), np.round(np.geomspace(100, 1e6, 60))])
_SHARES = np.linspace(0.0, 1.0, 101)[:-1]
#: Fixed bin edges (left-closed; the last bin is open) of every feature a rule may name, in natural
#: units: days, purchase days, currency units, counts, shares. Never read from data.
QUANTILE_EDGES: Final[dict[str, np.ndarray]] = {
    "recency_days": _DAYS, "tenure_days": _DAYS, "days_since_last_event": _DAYS,
    "ipi_mean": _DAYS, "ipi_std": _DAYS, "max_gap_days": _DAYS,
    "frequency": FREQUENCY_EDGES, "monetary_total": MONETARY_EDGES, "monetary_mean": MONETARY_EDGES,
    "events_total": _COUNTS, "active_days_7": np.arange(0, 8, 1.0), "active_days_30": np.arange(0, 31, 1.0),
    "active_days_90": np.arange(0, 91, 1.0), "trend": np.linspace(-1.0, 1.0, 41)[:-1],
    "discount_share": _SHARES, "relative_price": np.linspace(0.0, 3.0, 121)[:-1], "priced_purchases": _COUNTS,
    "churn_probability": _SHARES,
}
#: Features a rule may name.
TAG_FEATURES: Final = tuple(QUANTILE_EDGES)
DEFAULT_TAGS_FILE: Final = Path(__file__).with_name("default_tags.toml")
_QUANTILE = re.compile(r"^q([1-9][0-9]?)$")


class TagRuleError(FedsegError):
    """A tag rule that does not parse or names what does not exist (names the rule and the column)."""


@dataclass(frozen=True)
class TagRule:
    """A parsed, checked rule."""

    name: str
    text: str
    description: str
    tree: ast.Expression
    features: frozenset[str]
    quantiles: frozenset[tuple[str, int]]   # (feature, percentile)


def _fail(name: str, text: str, column: int, message: str) -> TagRuleError:
    """One line: the rule, the column, what is wrong, and the text with a mark at the column."""
    marked = text[:column - 1] + ">>>" + text[column - 1:]
    return TagRuleError(f"tag rule {name!r}, column {column}: {message} (in \"{marked}\")")


def _unknown(feature: str) -> str:
    import difflib

    close = difflib.get_close_matches(feature, TAG_FEATURES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown feature {feature!r}; {hint}known: {', '.join(TAG_FEATURES)}"


def parse_rule(name: str, text: str, description: str = "") -> TagRule:
    """Parse and check one rule; a :class:`TagRuleError` names the rule and the column."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise TagRuleError(f"tag name {name!r}: use letters, digits and '_' (at most 64), starting with a letter")
    if not isinstance(text, str) or not text.strip():
        raise TagRuleError(f"tag rule {name!r}: the rule is empty; write a condition such as \"frequency >= 5\"")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        stripped = text.strip()
        if not exc.offset or exc.offset > len(stripped):
            raise _fail(name, stripped, len(stripped) + 1, "the rule ends too early") from None
        raise _fail(name, stripped, exc.offset, f"does not parse ({exc.msg})") from None
    text = text.strip()
    features: set[str] = set()
    quantiles: set[tuple[str, int]] = set()

    def col(node: ast.AST) -> int:
        return getattr(node, "col_offset", 0) + 1

    def kind(node: ast.AST) -> str:
        """'bool' or 'num'; raises on anything outside the grammar."""
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                if kind(value) != "bool":
                    raise _fail(name, text, col(value), f"'{type(node.op).__name__.lower()}' joins conditions; "
                                "this part is a number")
            return "bool"
        if isinstance(node, ast.UnaryOp):
            inner = kind(node.operand)
            if isinstance(node.op, ast.Not):
                if inner != "bool":
                    raise _fail(name, text, col(node), "'not' needs a condition")
                return "bool"
            if isinstance(node.op, ast.USub | ast.UAdd) and inner == "num":
                return "num"
            raise _fail(name, text, col(node), "this operator is not allowed here")
        if isinstance(node, ast.Compare):
            allowed = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
            for op in node.ops:
                if not isinstance(op, allowed):
                    raise _fail(name, text, col(node), f"comparison '{type(op).__name__}' is not allowed; use < <= "
                                "> >= == !=")
            for operand in [node.left, *node.comparators]:
                if kind(operand) != "num":
                    raise _fail(name, text, col(operand), "a comparison compares numbers; this is a condition")
            return "bool"
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
                raise _fail(name, text, col(node), "only + - * / are allowed")
            for operand in (node.left, node.right):
                if kind(operand) != "num":
                    raise _fail(name, text, col(operand), "arithmetic needs numbers; this is a condition")
            return "num"
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise _fail(name, text, col(node), f"{node.value!r} is not a number")
            return "num"
        if isinstance(node, ast.Name):
            if node.id not in QUANTILE_EDGES:
                raise _fail(name, text, col(node), _unknown(node.id))
            features.add(node.id)
            return "num"
        if isinstance(node, ast.Call):
            match = _QUANTILE.match(node.func.id) if isinstance(node.func, ast.Name) else None
            if match is None:
                called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise _fail(name, text, col(node), f"unknown function {called!r}; the only calls are q1(...) to "
                            "q99(...), percentiles over all units")
            if node.keywords or len(node.args) != 1 or not isinstance(node.args[0], ast.Name):
                raise _fail(name, text, col(node), f"{node.func.id}(...) takes one feature name")  # type: ignore[union-attr]
            feature = node.args[0].id
            if feature not in QUANTILE_EDGES:
                raise _fail(name, text, col(node.args[0]), _unknown(feature))
            quantiles.add((feature, int(match.group(1))))
            return "num"
        raise _fail(name, text, col(node), f"{type(node).__name__} is not allowed in a tag rule")

    if kind(tree.body) != "bool":
        raise _fail(name, text, 1, "a rule must be a condition (a comparison such as \"frequency >= 5\"), not a number")
    return TagRule(name=name, text=text, description=description, tree=tree, features=frozenset(features),
                   quantiles=frozenset(quantiles))


def parse_rules(spec: dict[str, object], source: str = "tags") -> list[TagRule]:
    """Rules from the ``[tags]`` table of a TOML document (short or long form)."""
    tags = spec.get("tags")
    if not isinstance(tags, dict) or not tags:
        raise TagRuleError(f"{source}: no [tags] table; write for example [tags] new = \"tenure_days <= 30\"")
    rules = []
    for name, value in tags.items():
        if isinstance(value, dict):
            unknown = set(value) - {"rule", "description"}
            if unknown or "rule" not in value:
                raise TagRuleError(f"{source}: tag {name!r} takes rule = \"...\" and optionally description = \"...\""
                                   + (f"; unknown keys {sorted(unknown)}" if unknown else ""))
            rules.append(parse_rule(name, value["rule"], str(value.get("description", ""))))
        else:
            rules.append(parse_rule(name, value))  # type: ignore[arg-type]
    return rules


def load_rules(path: Path | None = None) -> list[TagRule]:
    """The rules of a TOML file (default: the documented default tag set)."""
    path = path or DEFAULT_TAGS_FILE
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TagRuleError(f"{path}: no such tags file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TagRuleError(f"{path}: not valid TOML ({exc})") from None
    return parse_rules(spec, str(path))


def rules_to_toml(rules: list[TagRule]) -> str:
    """The rules as a TOML document (what the coordinator sends the units)."""
    import tomli_w

    return tomli_w.dumps({"tags": {r.name: {"rule": r.text, "description": r.description} for r in rules}})


def needed_quantiles(rules: list[TagRule]) -> list[str]:
    """Features whose histogram the rules' quantiles need, in a stable order."""
    return sorted({feature for rule in rules for feature, _ in rule.quantiles})


def quantile_value(feature: str, histogram: np.ndarray, percentile: int) -> float:
    """``qNN(feature)`` from its (merged, possibly noisy) histogram: the upper edge of the quantile bin."""
    from fedseg.segments import quantile_bins

    edges = QUANTILE_EDGES[feature]
    [index] = quantile_bins(histogram, (percentile / 100.0,))
    return float(edges[index + 1]) if index + 1 < len(edges) else float(edges[-1])


def quantiles_from_histograms(rules: list[TagRule], histograms: np.ndarray) -> dict[tuple[str, int], float]:
    """Every ``qNN(feature)`` the rules call, from the histograms of :func:`needed_quantiles`
    concatenated in that order."""
    out: dict[tuple[str, int], float] = {}
    offset = 0
    for feature in needed_quantiles(rules):
        size = len(QUANTILE_EDGES[feature])
        for rule in rules:
            for f, q in rule.quantiles:
                if f == feature:
                    out[(f, q)] = quantile_value(f, histograms[offset:offset + size], q)
        offset += size
    return out


def evaluate(rule: TagRule, columns: dict[str, np.ndarray], quantiles: dict[tuple[str, int], float]) -> np.ndarray:
    """The rule for every user (vectorised); ``columns`` maps feature names to arrays."""

    def value(node: ast.AST) -> np.ndarray:
        if isinstance(node, ast.BoolOp):
            parts = [value(v) for v in node.values]
            out = parts[0]
            for part in parts[1:]:
                out = (out & part) if isinstance(node.op, ast.And) else (out | part)
            return out
        if isinstance(node, ast.UnaryOp):
            inner = value(node.operand)
            return ~inner if isinstance(node.op, ast.Not) else (-inner if isinstance(node.op, ast.USub) else inner)
        if isinstance(node, ast.Compare):
            out, left = None, value(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = value(right_node)
                with np.errstate(invalid="ignore"):
                    part = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
                            ast.Eq: np.equal, ast.NotEq: np.not_equal}[type(op)](left, right)
                part = part & ~np.isnan(left) & ~np.isnan(right)
                out = part if out is None else out & part
                left = right
            return out
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            with np.errstate(divide="ignore", invalid="ignore"):
                return {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
                        ast.Div: np.divide}[type(node.op)](left, right)
        if isinstance(node, ast.Constant):
            return np.asarray(float(node.value))
        if isinstance(node, ast.Name):
            return np.asarray(columns[node.id], dtype=float)
        if isinstance(node, ast.Call):
            return np.asarray(quantiles[(node.args[0].id, int(node.func.id[1:]))])  # type: ignore[attr-defined]
        raise AssertionError(f"unchecked node {type(node).__name__}")  # parse_rule refused it

    n = len(next(iter(columns.values()))) if columns else 0
    return np.broadcast_to(value(rule.tree.body), (n,)).astype(bool)
