"""A small language for picking one config from a Pareto front.

    EXPR := ("max" | "min") METRIC ["where" COND ("and" COND)*]
    COND := METRIC OP NUMBER          OP: <=  <  >=  >  ==  !=

    max accuracy where latency_p90_ms <= 10 and gflops <= 2
    min latency_p50_ms where accuracy >= 0.95

Parsed by hand into a Pick (never eval'd): the expression usually comes from a command line.
A row is a dict of metrics, or a pareto.json entry whose "metrics" holds them.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Optional

from adasearch.checks import is_number
from adasearch.errors import UserError
from adasearch.metrics import relative_miss, tie_break

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq, "!=": operator.ne}
# Longest operators first so `<=` is not read as `<` followed by `=`.
TOKEN = re.compile(
    r"\s*(?:(?P<op><=|>=|==|!=|<|>)"
    r"|(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
CLOSEST = 3  # rows listed when nothing qualifies


class NoMatch(UserError):
    """No row satisfies the conditions; the message lists the closest rows and what they violate."""


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float

    def holds(self, v: Optional[float]) -> bool:
        return is_number(v) and OPS[self.op](v, self.value)

    def violation(self, v: Optional[float]) -> float:
        """How far v misses, relative to the bound; 0 when it holds."""
        if self.holds(v):
            return 0.0
        if not is_number(v):
            return math.inf  # not measured in this run (or not a number): further than any number
        if self.op == "!=":
            return 1.0  # equal to the excluded value: no distance to speak of, but a miss
        return relative_miss(v - self.value, self.value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Pick:
    direction: str  # "max" or "min"
    metric: str
    conditions: tuple = ()

    @property
    def metric_names(self) -> list:
        return [self.metric] + [c.metric for c in self.conditions]

    def __str__(self) -> str:
        where = " and ".join(map(str, self.conditions))
        return f"{self.direction} {self.metric}" + (f" where {where}" if where else "")


def _tokens(expr: str) -> list:
    """(kind, text) pairs; a character that starts no token is a syntax error right there."""
    out, pos = [], 0
    while expr[pos:].strip():
        m = TOKEN.match(expr, pos)
        if m is None:
            col = len(expr) - len(expr[pos:].lstrip())
            raise _syntax(expr, f"unexpected {expr[col]!r} at column {col + 1}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _syntax(expr: str, what: str) -> UserError:
    return UserError(
        f"cannot parse pick expression {expr!r}: {what} "
        f"(form: max|min METRIC [where METRIC OP NUMBER [and ...]], OP one of {' '.join(OPS)})"
    )


def parse_pick(expr: str) -> Pick:
    tokens = _tokens(expr)
    pos = 0

    def take(kind: str, expected: str) -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise _syntax(expr, f"expected {expected} at the end")
        k, text = tokens[pos]
        if k != kind:
            raise _syntax(expr, f"expected {expected}, got {text!r}")
        pos += 1
        return text

    def keyword(*words: str) -> str:
        text = take("word", " or ".join(repr(w) for w in words))
        if text.lower() not in words:
            raise _syntax(expr, f"expected {' or '.join(repr(w) for w in words)}, got {text!r}")
        return text.lower()

    direction = keyword("max", "min")
    metric = take("word", "a metric name")
    conditions = []
    if pos < len(tokens):
        joiner = "where"
        while True:
            keyword(joiner)
            name = take("word", "a metric name")
            op = take("op", f"an operator ({' '.join(OPS)})")
            conditions.append(Condition(name, op, float(take("number", "a number"))))
            if pos == len(tokens):
                break
            joiner = "and"
    return Pick(direction, metric, tuple(conditions))


def _metrics(row: dict) -> dict:
    return row["metrics"] if isinstance(row.get("metrics"), dict) else row


def _label(row: dict, i: int) -> str:
    name = row.get("name")
    return name.removesuffix(".yaml") if isinstance(name, str) else f"row {i}"


def pick(rows: list, expr: str) -> dict:
    """The row that the expression selects. Ties on its metric are broken by metrics.tie_break (the more
    accurate row, then the faster by p90), then the earlier one (pareto.json is best-first), so
    `max accuracy` picks what Deployment.predict picks without a budget."""
    p = parse_pick(expr)
    if not rows:
        raise NoMatch("the Pareto front is empty: nothing to pick from")
    allowed = list(dict.fromkeys(k for r in rows for k in _metrics(r)))
    for name in p.metric_names:
        if name not in allowed:
            raise UserError(f"unknown metric {name!r} in {expr!r}; allowed: {', '.join(allowed)}")

    def qualifies(r: dict) -> bool:
        m = _metrics(r)
        return is_number(m.get(p.metric)) and all(c.holds(m.get(c.metric)) for c in p.conditions)

    qualifying = [r for r in rows if qualifies(r)]
    if not qualifying:
        raise NoMatch(_no_match_message(rows, p))
    sign = 1 if p.direction == "max" else -1

    def rank(r: dict) -> tuple:
        # ties: adasearch's one tie-break (as Deployment.choose), then the earlier row (max keeps the first)
        m = _metrics(r)
        return (sign * m[p.metric], *tie_break(m))

    return max(qualifying, key=rank)


def _misses(m: dict, p: Pick) -> list:
    """What a row's metrics m get wrong, e.g. `accuracy=0.9378 (needs >= 0.99)`."""
    out = []
    for c in p.conditions:
        v = m.get(c.metric)
        if v is None:
            out.append(f"{c.metric} not measured")
        elif not is_number(v):
            out.append(f"{c.metric} is {v!r}, not a number")
        elif not c.holds(v):
            out.append(f"{c.metric}={v:.4g} (needs {c.op} {c.value:g})")
    if m.get(p.metric) is None:
        out.append(f"{p.metric} not measured")
    elif not is_number(m[p.metric]):
        out.append(f"{p.metric} is {m[p.metric]!r}, not a number")
    return out


def _no_match_message(rows: list, p: Pick) -> str:
    ranked = sorted(
        enumerate(rows), key=lambda ir: sum(c.violation(_metrics(ir[1]).get(c.metric)) for c in p.conditions)
    )
    closest = [f"{_label(r, i)}: {', '.join(_misses(_metrics(r), p))}" for i, r in ranked[:CLOSEST]]
    return f"no config satisfies {str(p)!r}; closest: " + "; ".join(closest)
