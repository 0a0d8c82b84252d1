"""The project's own dashboard linter: the grafana dashboard-linter rules that matter for our dashboards.

It reads Grafana's JSON model (plain dicts), so it checks what is written, not what was meant. Queries are
parsed with promql-parser after Grafana's macros and template variables are substituted.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from forge_slo import promql
from forge_slo.compile.dashboard_model import DATASOURCE_TYPE, DATASOURCE_VAR
from forge_slo.spec.presets import PRESETS

# Gauges whose names end like counters (Triton's pending-request count ends in _count).
SERVER_GAUGES: frozenset[str] = frozenset(
    m for p in PRESETS.values() for m in (p.server.running, p.server.waiting, p.server.kv_cache_usage) if m
)

RATE_FUNCTIONS = frozenset({"rate", "irate", "increase"})
COUNTER_SUFFIXES = ("_total", "_count", "_bucket", "_sum")
MAX_UID_LENGTH = 40
# $__rate_interval is replaced by this odd duration before parsing, so a range can be recognised as it.
_RATE_INTERVAL_SENTINEL = "7777s"
_SENTINEL_RANGE = datetime.timedelta(seconds=7777)
_DATASOURCE_REFS = frozenset({f"${DATASOURCE_VAR}", f"${{{DATASOURCE_VAR}}}"})


@dataclass(frozen=True)
class Problem:
    rule: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message} [{self.rule}]"


def lint_dashboard(dashboard: Mapping[str, Any], gauges: Collection[str] = SERVER_GAUGES) -> list[Problem]:
    """Every rule violation in a dashboard's JSON model; an empty list when it is clean.

    ``gauges`` names gauges whose names end like a counter's, so they may be read without a rate.
    """
    problems: list[Problem] = []
    uid = str(dashboard.get("uid") or "")
    if not uid or len(uid) > MAX_UID_LENGTH:
        problems.append(Problem("uid", "dashboard",
                                f"uid {uid!r} must have 1 to {MAX_UID_LENGTH} characters"))
    variables = list(dashboard.get("templating", {}).get("list") or [])
    if not any(v.get("type") == "datasource" and v.get("name") == DATASOURCE_VAR
               and v.get("query") == DATASOURCE_TYPE for v in variables):
        problems.append(Problem("template-datasource", "dashboard",
                                f"no {DATASOURCE_TYPE} data source variable named {DATASOURCE_VAR!r}"))
    names = [str(v.get("name", "")) for v in variables]
    seen_ids: set[int] = set()
    for panel in _panels(dashboard):
        where = f"panel {panel.get('id')} {panel.get('title', '')!r}"
        if panel.get("id") in seen_ids:
            problems.append(Problem("panel-ids", where, "panel id used twice"))
        seen_ids.add(panel.get("id", -1))
        if not str(panel.get("title") or "").strip():
            problems.append(Problem("panel-title-description", where, "no title"))
        if panel.get("type") == "row":
            continue
        problems.extend(_lint_panel(panel, where, names, gauges))
    return problems


def _panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def _uses_datasource_variable(ref: object) -> bool:
    if isinstance(ref, str):
        return ref in _DATASOURCE_REFS
    return isinstance(ref, Mapping) and ref.get("uid") in _DATASOURCE_REFS


def _lint_panel(panel: Mapping[str, Any], where: str, variables: list[str], gauges: Collection[str],
                ) -> list[Problem]:
    problems: list[Problem] = []
    if not str(panel.get("description") or "").strip():
        problems.append(Problem("panel-title-description", where, "no description"))
    if not str(panel.get("fieldConfig", {}).get("defaults", {}).get("unit") or "").strip():
        problems.append(Problem("panel-units", where, "no unit set"))
    if not _uses_datasource_variable(panel.get("datasource")):
        problems.append(Problem("panel-datasource", where, f"does not use the ${DATASOURCE_VAR} variable"))
    targets = [t for t in panel.get("targets") or [] if str(t.get("expr") or "").strip()]
    if not targets:
        problems.append(Problem("panel-no-targets", where, "has no queries"))
    for target in targets:
        twhere = f"{where} target {target.get('refId', '?')}"
        if not _uses_datasource_variable(target.get("datasource")):
            problems.append(Problem("target-datasource", twhere,
                                    f"does not use the ${DATASOURCE_VAR} variable"))
        problems.extend(lint_query(str(target["expr"]), twhere, variables, gauges))
    return problems


def lint_query(expr: str, where: str, variables: Collection[str] = (),
               gauges: Collection[str] = SERVER_GAUGES) -> list[Problem]:
    """Parse errors, rates without ``$__rate_interval`` and counters read without a rate."""
    error = promql.parse_error(substitute_macros(expr, variables))
    if error is not None:
        return [Problem("target-promql", where, f"not valid PromQL: {error}")]
    import promql_parser

    sentinel = substitute_macros(expr.replace("$__rate_interval", _RATE_INTERVAL_SENTINEL), variables)
    problems: list[Problem] = []
    _visit(promql_parser.parse(sentinel), None, _Context(where, gauges), problems)
    return problems


@dataclass(frozen=True)
class _Context:
    where: str
    gauges: Collection[str]


def _visit(node: Any, parent: Any, ctx: _Context, problems: list[Problem]) -> None:
    import promql_parser as pp

    if isinstance(node, pp.Call):
        name = node.func.name
        if name in RATE_FUNCTIONS:
            arg = node.args[0] if node.args else None
            if not isinstance(arg, pp.MatrixSelector | pp.SubqueryExpr) or arg.range != _SENTINEL_RANGE:
                problems.append(Problem("target-rate-interval", ctx.where,
                                        f"{name}() must use [$__rate_interval] as its range"))
        for arg in node.args:
            _visit(arg, node, ctx, problems)
    elif isinstance(node, pp.BinaryExpr):
        _visit(node.lhs, node, ctx, problems)
        _visit(node.rhs, node, ctx, problems)
    elif isinstance(node, pp.AggregateExpr):
        if node.param is not None:
            _visit(node.param, node, ctx, problems)
        _visit(node.expr, node, ctx, problems)
    elif isinstance(node, pp.ParenExpr | pp.UnaryExpr | pp.SubqueryExpr):
        _visit(node.expr, node, ctx, problems)
    elif isinstance(node, pp.MatrixSelector):
        in_rate = isinstance(parent, pp.Call) and parent.func.name in RATE_FUNCTIONS
        _check_counter(node.vector_selector, in_rate, ctx, problems)
    elif isinstance(node, pp.VectorSelector):
        _check_counter(node, False, ctx, problems)
    # Number and string literals have nothing to check.


def _check_counter(selector: Any, in_rate: bool, ctx: _Context, problems: list[Problem]) -> None:
    name = selector.name or ""
    if name.endswith(COUNTER_SUFFIXES) and name not in ctx.gauges and not in_rate:
        problems.append(Problem("target-counter-agg", ctx.where,
                                f"counter {name} must be read through rate(), irate() or increase()"))


# Queries as Grafana sends them ---------------------------------------------------------------------------

# Values Grafana puts in for its macros when a query runs; any real value parses the same way.
MACRO_VALUES: Mapping[str, str] = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
VARIABLE_VALUE = ".*"
_VARIABLE_RE = re.compile(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)\]\]")


def substitute_macros(expr: str, variables: Iterable[str] = ()) -> str:
    """``expr`` as Grafana sends it: macros replaced by durations, template variables by ``.*``."""
    names = set(variables)

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in MACRO_VALUES:
            return MACRO_VALUES[name]
        if name in names:
            return VARIABLE_VALUE
        return m.group(0)

    return _VARIABLE_RE.sub(replace, expr)


def panel_queries(dashboard_json: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` for every query of every panel, with Grafana's macros substituted."""
    variables = [v.get("name", "") for v in dashboard_json.get("templating", {}).get("list", [])]
    out: list[tuple[str, str]] = []
    for panel in _all_panels(dashboard_json):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if isinstance(expr, str) and expr:
                out.append((str(panel.get("title", "")), substitute_macros(expr, variables)))
    return out


def _all_panels(dashboard_json: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    panels: list[Mapping[str, Any]] = []
    for panel in dashboard_json.get("panels") or []:
        panels.append(panel)
        panels.extend(panel.get("panels") or [])  # panels inside collapsed rows
    return panels
