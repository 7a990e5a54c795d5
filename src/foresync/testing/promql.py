"""The PromQL subset the Grafana dashboard uses, evaluated over scrapes kept in memory.

Grafana is not installable on this machine, so ``contrib/grafana/render.py`` draws the dashboard
itself: it scrapes a real pair's ``/metrics``, then evaluates each panel's query here exactly as
written in ``docs/grafana-dashboard.json``. What is covered, and how it follows Prometheus:

- selectors ``name{label="v", label=~"re", label!="v", label!~"re"}``, regexes fully anchored;
- ``rate(selector[1m])``: the increase over the samples inside the window (a counter reset
  adds the value after it) divided by the time between the first and last of them, without
  Prometheus's extrapolation to the window's edges; fewer than two samples give nothing;
- ``sum by (labels) (expr)``, ``clamp_min(expr, scalar)``, ``histogram_quantile(q, expr)``
  (linear interpolation inside the bucket, as Prometheus does);
- ``+ - * /`` between two vectors (one-to-one on every label but the name) or a vector and a
  scalar, and ``== scalar`` as a filter.

Anything else is a ``ValueError`` naming the query, so a new panel with an unsupported form
fails loudly instead of drawing nothing. Dashboard variables (``$volume``) match everything.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]  # sorted, without __name__
Vector = dict[Labels, float]
Value = Vector | float

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:e-?\d+)?)|(?P<dur>\[\d+[smh]\])|"
                    r"(?P<str>\"(?:[^\"\\]|\\.)*\")|(?P<op>=~|!~|!=|==|[-+*/(),{}=])|"
                    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*))")
_UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclass
class Store:
    """Every scraped sample: (name, labels) -> [(time, value)] in time order."""

    series: dict[tuple[str, Labels], list[tuple[float, float]]] = field(default_factory=dict)

    def add_scrape(self, now: float, text: str, extra: dict[str, str]) -> None:
        """One ``/metrics`` answer at ``now``; ``extra`` labels are what Prometheus adds (job,
        instance)."""
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(sorted({**sample.labels, **extra}.items()))
                self.series.setdefault((sample.name, labels), []).append((now, float(sample.value)))


def _tokens(query: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    query = query.strip()
    while pos < len(query):
        match = _TOKEN.match(query, pos)
        if not match or match.end() == pos:
            raise ValueError(f"cannot read {query[pos:]!r} in {query!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    """Recursive descent into closures ``(store, t) -> value``."""

    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens = _tokens(query.replace("$volume", ".*"))
        self.pos = 0

    def peek(self) -> str:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise ValueError(f"{self.query!r} ends early")
        token = self.tokens[self.pos]
        if expected is not None and token[1] != expected:
            raise ValueError(f"expected {expected!r}, found {token[1]!r} in {self.query!r}")
        self.pos += 1
        return token

    def parse(self) -> Callable[[Store, float], Value]:
        expr = self.comparison()
        if self.pos != len(self.tokens):
            raise ValueError(f"unexpected {self.peek()!r} in {self.query!r}")
        return expr

    def comparison(self) -> Callable[[Store, float], Value]:
        left = self.additive()
        if self.peek() != "==":
            return left
        self.take()
        right = self.additive()
        return lambda s, t: _filter_equal(left(s, t), right(s, t))

    def additive(self) -> Callable[[Store, float], Value]:
        left = self.multiplicative()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            left = _binary(op, left, self.multiplicative())
        return left

    def multiplicative(self) -> Callable[[Store, float], Value]:
        left = self.primary()
        while self.peek() in ("*", "/"):
            op = self.take()[1]
            left = _binary(op, left, self.primary())
        return left

    def primary(self) -> Callable[[Store, float], Value]:
        kind, text = self.take()
        if kind == "num":
            number = float(text)
            return lambda s, t: number
        if text == "(":
            inner = self.comparison()
            self.take(")")
            return inner
        if kind != "name":
            raise ValueError(f"unexpected {text!r} in {self.query!r}")
        if text == "sum":
            return self.sum()
        if self.peek() == "(":
            return self.call(text)
        return self.selector(text)

    def sum(self) -> Callable[[Store, float], Value]:
        by: tuple[str, ...] = ()
        if self.peek() == "by":
            self.take()
            by = self.names()
        self.take("(")
        inner = self.comparison()
        self.take(")")
        return lambda s, t: _sum_by(_vector(inner(s, t), self.query), by)

    def names(self) -> tuple[str, ...]:
        self.take("(")
        names = [self.take()[1]]
        while self.peek() == ",":
            self.take()
            names.append(self.take()[1])
        self.take(")")
        return tuple(names)

    def call(self, name: str) -> Callable[[Store, float], Value]:
        self.take("(")
        args = [self.rate_arg() if name == "rate" else self.comparison()]
        while self.peek() == ",":
            self.take()
            args.append(self.comparison())
        self.take(")")
        query = self.query
        if name == "rate" and len(args) == 1:
            return args[0]
        if name == "clamp_min" and len(args) == 2:
            vec, low = args
            return lambda s, t: {k: max(v, _scalar(low(s, t), query))
                                 for k, v in _vector(vec(s, t), query).items()}
        if name == "histogram_quantile" and len(args) == 2:
            q, vec = args
            return lambda s, t: _quantile(_scalar(q(s, t), query), _vector(vec(s, t), query))
        raise ValueError(f"function {name}() with {len(args)} arguments is not covered: {query!r}")

    def rate_arg(self) -> Callable[[Store, float], Value]:
        kind, name = self.take()
        if kind != "name":
            raise ValueError(f"rate() needs a range selector in {self.query!r}")
        matchers = self.matchers()
        kind, text = self.take()
        if kind != "dur":
            raise ValueError(f"rate() needs a range like [1m] in {self.query!r}")
        window = float(text[1:-2]) * _UNITS[text[-2]]
        return lambda s, t: _rate(s, name, matchers, t, window)

    def selector(self, name: str) -> Callable[[Store, float], Value]:
        matchers = self.matchers()
        return lambda s, t: _instant(s, name, matchers, t)

    def matchers(self) -> list[tuple[str, str, str]]:
        found: list[tuple[str, str, str]] = []
        if self.peek() != "{":
            return found
        self.take("{")
        while self.peek() != "}":
            label = self.take()[1]
            op = self.take()[1]
            value = self.take()[1][1:-1].replace('\\"', '"').replace("\\\\", "\\")
            found.append((label, op, value))
            if self.peek() == ",":
                self.take()
        self.take("}")
        return found


def compile_query(query: str) -> Callable[[Store, float], Value]:
    """A query as a function of (store, evaluation time)."""
    return _Parser(query).parse()


def _matches(labels: Labels, matchers: Iterable[tuple[str, str, str]]) -> bool:
    have = dict(labels)
    for label, op, value in matchers:
        actual = have.get(label, "")
        if (op == "=" and actual != value) or (op == "!=" and actual == value):
            return False
        if op in ("=~", "!~") and (re.fullmatch(value, actual) is not None) != (op == "=~"):
            return False
    return True


LOOKBACK_S = 300.0  # an instant selector takes the last sample within this (as Prometheus)


def _instant(store: Store, name: str, matchers: list[tuple[str, str, str]], t: float) -> Vector:
    out: Vector = {}
    for (series_name, labels), points in store.series.items():
        if series_name != name or not _matches(labels, matchers):
            continue
        recent = [v for at, v in points if t - LOOKBACK_S < at <= t]
        if recent:
            out[labels] = recent[-1]
    return out


def _rate(store: Store, name: str, matchers: list[tuple[str, str, str]], t: float,
          window: float) -> Vector:
    out: Vector = {}
    for (series_name, labels), points in store.series.items():
        if series_name != name or not _matches(labels, matchers):
            continue
        inside = [(at, v) for at, v in points if t - window < at <= t]
        if len(inside) < 2:
            continue
        increase = 0.0
        for (_, before), (_, after) in itertools.pairwise(inside):
            increase += after - before if after >= before else after  # a reset starts from 0
        out[labels] = increase / (inside[-1][0] - inside[0][0])
    return out


def _vector(value: Value, query: str) -> Vector:
    if isinstance(value, float):
        raise ValueError(f"a scalar where a vector is needed in {query!r}")
    return value


def _scalar(value: Value, query: str) -> float:
    if not isinstance(value, float):
        raise ValueError(f"a vector where a scalar is needed in {query!r}")
    return value


def _apply(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b else (math.nan if a == 0 else math.copysign(math.inf, a))


def _binary(op: str, left: Callable[[Store, float], Value],
            right: Callable[[Store, float], Value]) -> Callable[[Store, float], Value]:
    def evaluate(store: Store, t: float) -> Value:
        a, b = left(store, t), right(store, t)
        if isinstance(a, float) and isinstance(b, float):
            return _apply(op, a, b)
        if isinstance(a, float):
            return {k: _apply(op, a, v) for k, v in _vector(b, op).items()}
        if isinstance(b, float):
            return {k: _apply(op, v, b) for k, v in a.items()}
        return {k: _apply(op, v, b[k]) for k, v in a.items() if k in b}
    return evaluate


def _filter_equal(a: Value, b: Value) -> Value:
    if isinstance(a, float) or not isinstance(b, float):
        raise ValueError("== is covered as vector == scalar only")
    return {k: v for k, v in a.items() if v == b}


def _sum_by(vector: Vector, by: tuple[str, ...]) -> Vector:
    out: Vector = {}
    for labels, value in vector.items():
        key = tuple((k, v) for k, v in labels if k in by)
        out[key] = out.get(key, 0.0) + value
    return out


def _quantile(q: float, vector: Vector) -> Vector:
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for labels, value in vector.items():
        le = dict(labels).get("le")
        if le is None:
            continue
        key = tuple((k, v) for k, v in labels if k != "le")
        groups.setdefault(key, []).append((float(le), value))
    out: Vector = {}
    for key, buckets in groups.items():
        buckets.sort()
        total = buckets[-1][1]
        if total <= 0 or len(buckets) < 2:
            continue
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if math.isinf(bound):
                    out[key] = lower_bound  # the highest finite bound, as Prometheus
                else:
                    inside = count - lower_count
                    share = (rank - lower_count) / inside if inside > 0 else 1.0
                    out[key] = lower_bound + (bound - lower_bound) * share
                break
            lower_bound, lower_count = bound, count
    return out
