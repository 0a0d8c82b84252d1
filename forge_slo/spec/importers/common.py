"""What the importers share: queries with a window, counters as rates, notes on what was not carried over, and
the page and ticket policies an imported SLO carries itself.

An importer keeps what its source says or says why not: a field it cannot carry over is named in a warning
(:class:`Notes`, which become ``ServiceSpec.warnings``), one it cannot compile is refused at its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from forge_slo import promql
from forge_slo.durations import parse_duration
from forge_slo.spec.model import PAGE, SLO, TICKET, AlertPolicy, BurnWindow, default_windows
from forge_slo.spec.native import DEFAULT_FOR, MAX_DURATION_S, fit_windows
from forge_slo.spec.yamlnode import Node

W = promql.WINDOW_PLACEHOLDER
# forge-slo's {{window}} and Sloth's {{.window}} (which Sloth's OpenSLO reader takes too), spaces allowed.
_WINDOW = re.compile(r"\{\{\s*\.?window\s*\}\}")
_MATCH_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def where(node: Node) -> str:
    """``file:line: field.path`` of a value, as errors print it."""
    text = node.file + (f":{node.line}" if node.line is not None else "")
    return f"{text}: {node.path}" if node.path else text


@dataclass
class Notes:
    """Warnings gathered while importing one service: each names the field and why it was not carried over."""

    items: list[str] = field(default_factory=list)

    def dropped(self, node: Node, reason: str) -> None:
        self.items.append(f"{where(node)}: not carried over: {reason}")

    def note(self, node: Node, text: str) -> None:
        self.items.append(f"{where(node)}: {text}")

    def drop_all(self, items: dict[str, Node], keys: dict[str, str]) -> None:
        """Warn for each of ``keys`` present in ``items`` (key -> reason)."""
        for key, reason in keys.items():
            if key in items:
                self.dropped(items[key], reason)


# Queries ----------------------------------------------------------------------------------------------------

def check_promql(node: Node, query: str) -> str:
    """``query`` (with ``{{window}}`` where a window goes) if it is PromQL, else fail at ``node``."""
    problem = promql.parse_error(promql.fill_window(query, "5m"))
    if problem:
        node.fail(f"not valid PromQL: {problem}")
    return query


def windowed(node: Node) -> str | None:
    """The query with its window placeholder in forge-slo's spelling, or None when it has none."""
    text = node.string()
    if not _WINDOW.search(text):
        return None
    return check_promql(node, _WINDOW.sub(W, text).strip())


def instant_query(node: Node, what: str) -> str:
    """A query evaluated as it is (a threshold metric, a ratio gauge): PromQL without a window placeholder."""
    text = node.string().strip()
    if _WINDOW.search(text):
        node.fail(f"{what} is read at each evaluation, so it takes no window placeholder")
    return check_promql(node, text)


def counter_rate(node: Node, grouping: tuple[str, ...] = ()) -> str:
    """A counter query as its per-second rate over ``{{window}}``, summed (``by`` the grouping labels).

    Takes a series selector or sums of one (``sum by (a) (x{...})``): the rate of a sum of counters is the sum
    of their rates, so the rate goes inside, where counter resets are seen. Anything else has no exact rate.
    """
    import promql_parser

    text = node.string().strip()
    try:
        expr = promql_parser.parse(text)
    except ValueError as exc:
        node.fail(f"not valid PromQL: {exc}")
    inner = _rate_inside(expr, node)
    if isinstance(expr, promql_parser.VectorSelector) or grouping:
        inner = promql.sum_by(grouping, inner)
    return check_promql(node, inner)


def _rate_inside(expr: Any, node: Node) -> str:
    import promql_parser

    if isinstance(expr, promql_parser.ParenExpr):
        return _rate_inside(expr.expr, node)
    if isinstance(expr, promql_parser.VectorSelector):
        if expr.offset is not None or expr.at is not None:
            node.fail("a counter selector with offset or @ cannot be turned into a rate here; write the query "
                      f"with a {W} placeholder (e.g. sum(rate(x[{W}] offset 5m)))")
        return f"rate({selector_text(expr)}[{W}])"
    if isinstance(expr, promql_parser.AggregateExpr) and str(expr.op) == "sum" and expr.param is None:
        modifier = expr.modifier
        inner = _rate_inside(expr.expr, node)
        if modifier is None:
            return f"sum({inner})"
        word = "without" if str(modifier.type).endswith("Without") else "by"
        return f"sum {word} ({', '.join(modifier.labels)}) ({inner})"
    node.fail("a counter query must be a series selector or a sum of one (e.g. sum by (code) (http_requests_total"
              "{job=\"api\"})), so forge-slo can take its rate over each window; for anything else write the rate "
              f"yourself with a {W} placeholder (e.g. sum(rate(http_requests_total[{W}])))")


def selector_text(expr: Any) -> str:
    """A parsed selector written back, its label values quoted by :func:`forge_slo.promql.quote`."""
    matchers = [f"{m.name}{_MATCH_OPS[str(m.op).rsplit('.', 1)[-1]]}{promql.quote(m.value)}"
                for m in expr.matchers.matchers]
    name = expr.name or ""
    return f"{name}{{{','.join(matchers)}}}" if matchers or not name else name


# Durations and numbers ---------------------------------------------------------------------------------------

def duration(node: Node, *, text: str | None = None) -> float:
    try:
        return parse_duration(node.string() if text is None else text, maximum=MAX_DURATION_S)
    except ValueError as exc:
        node.fail(str(exc))


def percent_text(node: Node) -> float:
    """A percentage written as a number or a string (Pyrra's ``target: "99.9"``)."""
    value = node.value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            node.fail(f"must be a percentage such as \"99.9\", got {node.value!r}")
    return Node(value, node.file, node.line, node.path).number()


def objective_percent(node: Node, percent: float) -> float:
    """``percent`` checked the way a forge-slo objective is (0 < objective < 100)."""
    if not 0 < percent < 100:
        node.fail(f"the objective must be between 0% and 100% (exclusive), got {percent:g}%")
    return round(percent, 9)


# Alert policies ---------------------------------------------------------------------------------------------

def default_policies(period: float) -> tuple[AlertPolicy, AlertPolicy]:
    """forge-slo's page and ticket policies for ``period`` (the SRE workbook's windows)."""
    page_windows, ticket_windows = default_windows(period)
    return (AlertPolicy(PAGE, page_windows, DEFAULT_FOR[PAGE]),
            AlertPolicy(TICKET, ticket_windows, DEFAULT_FOR[TICKET]))


def budget_window(node: Node, long_s: float, short_s: float, budget_percent: float, period: float) -> BurnWindow:
    """A window pair that fires when ``budget_percent`` of the period's budget goes within the long window."""
    if short_s >= long_s:
        node.fail("the short window must be shorter than the long one")
    if long_s > period:
        node.fail("the long window is longer than the SLO period")
    if not 0 < budget_percent <= 100:
        node.fail("the share of the error budget must be above 0 and at most 100 percent")
    return BurnWindow(long_s, short_s, round(budget_percent / 100 * period / long_s, 4))


def slo_with_policies(slo: SLO, policies: tuple[AlertPolicy, AlertPolicy], *, explicit: set[str], where_node: Node,
                      notes: Notes) -> SLO:
    """``slo`` carrying its own page and ticket policies, factors fitted to its objective as natively."""
    warnings: list[str] = []
    fitted = fit_windows(slo.name, slo.objective_percent, policies, explicit, where_node, warnings)
    for warning in warnings:
        notes.note(where_node, warning)
    return replace(slo, alerting=fitted or policies)
