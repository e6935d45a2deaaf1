"""The metric names a PromQL expression reads: enough of PromQL for our dashboard and rules.

Not a parser: it drops what cannot hold a metric name (strings, label matchers, range and
subquery brackets, `by (...)`-style label lists, Grafana variables), then keeps the
identifiers that are not functions, keywords or numbers.
"""

from __future__ import annotations

import re

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan", "Inf", "NaN", "e"}
)


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` reads (`rate(a_total[5m]) / b` -> {"a_total", "b"})."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name not in _KEYWORDS:
            names.add(name)
    return names


def histogram_base(name: str, histograms: set[str]) -> str:
    """`x_bucket`, `x_count` and `x_sum` of a histogram `x` read the histogram."""
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name
