"""The one place that builds PromQL text.

Every label value that reaches a query goes through :func:`quote`, so no spec can break out of a PromQL
string. Names are checked against Prometheus' grammar before they are used.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
WINDOW_PLACEHOLDER = "{{window}}"


def is_label_name(name: str) -> bool:
    return bool(_LABEL_NAME.match(name)) and not name.startswith("__")


def is_metric_name(name: str) -> bool:
    return bool(_METRIC_NAME.match(name))


def quote(value: str) -> str:
    """A PromQL double-quoted string literal holding exactly ``value``."""
    # JSON's escapes (\\, \", \n, \uXXXX) are a subset of the Go escapes PromQL accepts.
    return json.dumps(value, ensure_ascii=False)


def float_label_values(value: float) -> list[str]:
    """Every spelling a float takes in an ``le`` label.

    Go clients write ``1``, Python clients and Prometheus 3's normalisation write ``1.0``; both must match.
    """
    spellings = {repr(float(value))}
    if math.isfinite(value) and float(value).is_integer():
        spellings.add(str(int(value)))
        spellings.add(f"{int(value)}.0")
    return sorted(spellings)


def le_matcher(bound: float) -> str:
    spellings = float_label_values(bound)
    if len(spellings) == 1:
        return f"le={quote(spellings[0])}"
    return "le=~" + quote("|".join(re.escape(s) for s in spellings))


def selector(metric: str, matchers: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> str:
    """``metric{a="x",b="y",<extra>}`` with equality matchers in sorted order and raw ``extra`` matchers."""
    parts = [f"{k}={quote(v)}" for k, v in sorted((matchers or {}).items())]
    parts.extend(extra)
    return f"{metric}{{{','.join(parts)}}}" if parts else metric


def by_clause(labels: Iterable[str]) -> str:
    return f"by ({', '.join(labels)})"


def sum_by(labels: Iterable[str], expr: str) -> str:
    labels = list(labels)
    return f"sum {by_clause(labels)} ({expr})" if labels else f"sum({expr})"


def rate(selector_text: str, window: str) -> str:
    return f"rate({selector_text}[{window}])"


def number(value: float) -> str:
    """A float literal without noise: 0.001 not 0.0010000000000000009."""
    text = repr(round(value, 12))
    return text[:-2] if text.endswith(".0") else text


def fill_window(template: str, window: str) -> str:
    return template.replace(WINDOW_PLACEHOLDER, window)


def parse_error(expr: str) -> str | None:
    """The parser's complaint about ``expr``, or None when it is valid PromQL."""
    import promql_parser

    try:
        promql_parser.parse(expr)
    except ValueError as exc:
        return str(exc) or "invalid PromQL"
    return None


def regex_matcher(label: str, pattern: str) -> str:
    """``label=~"pattern"``: ``pattern`` is a regex (or a Grafana variable expanding to one), quoted as is."""
    if not is_label_name(label):
        raise ValueError(f"{label!r} is not a valid label name")
    return f"{label}=~{quote(pattern)}"


def any_of_regex(values: Iterable[str]) -> str:
    """A regex matching exactly one of ``values`` (for a ``=~`` matcher)."""
    return "|".join(re.escape(v) for v in values)
