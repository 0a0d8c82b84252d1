"""Pyrra ``ServiceLevelObjective`` resources (``pyrra.dev/v1alpha1``): one service with one SLO each.

Indicators: ``ratio`` (errors/total counters), ``latency`` (a histogram's bucket under the threshold over its
count), ``latencyNative`` (a native histogram: compiled only for a Prometheus that evaluates native histograms)
and ``bool_gauge`` (a 0/1 gauge such as ``probe_success``), each summed ``by`` its ``grouping`` labels, which
become the service's ``group_by``.
"""

from __future__ import annotations

from dataclasses import replace

from forge_slo import promql
from forge_slo.spec.importers.common import (
    Notes,
    W,
    check_promql,
    counter_rate,
    default_policies,
    duration,
    objective_percent,
    percent_text,
    selector_text,
    slo_with_policies,
)
from forge_slo.spec.model import SLO, AlertPolicy, RatioSLI, ServiceSpec, frozen_map
from forge_slo.spec.native import parse_alert_name, parse_group_by, parse_name
from forge_slo.spec.presets import CUSTOM
from forge_slo.spec.yamlnode import Node

API_VERSION = "pyrra.dev/v1alpha1"
KIND = "ServiceLevelObjective"
NATIVE_HISTOGRAMS_HINT = ("a Prometheus that evaluates native histograms (2.40 or later started with "
                          "--enable-feature=native-histograms, or 3.x)")


def from_pyrra(doc: Node, *, native_histograms: bool = False) -> ServiceSpec:
    """One ServiceLevelObjective as a service of the same name with one SLO."""
    notes = Notes()
    items = doc.mapping({"apiVersion", "kind", "metadata", "spec", "status"}, required=("kind", "metadata", "spec"))
    meta = items["metadata"].mapping({"name", "namespace", "labels", "annotations"}, required=("name",))
    name = parse_name(meta["name"])
    notes.drop_all(meta, {
        "namespace": "the resource's namespace (forge-slo names its rules after the service)",
        "labels": "Kubernetes labels of the resource (Pyrra copies them onto its PrometheusRule; forge-slo's "
                  "PrometheusRule carries the service's labels)",
        "annotations": "Kubernetes annotations of the resource",
    })
    if "status" in items:
        notes.dropped(items["status"], "status is written by Pyrra's operator")
    spec = items["spec"].mapping({"description", "target", "window", "indicator", "alerting",
                                  "partial_response_strategy", "performanceOverAccuracy", "ruleOutput"},
                                 required=("target", "window", "indicator"))
    notes.drop_all(spec, {
        "partial_response_strategy": "compile with --format thanos for Thanos' partial_response_strategy",
        "performanceOverAccuracy": "forge-slo computes the period SLI one way (traffic-weighted)",
        "ruleOutput": "Pyrra's rule output labels",
    })
    period = duration(spec["window"])
    objective = objective_percent(spec["target"], percent_text(spec["target"]))
    sli, grouping = _indicator(spec["indicator"], native_histograms)
    page, ticket = default_policies(period)
    alert_name = ""
    if "alerting" in spec:
        page, ticket, alert_name = _alerting(spec["alerting"], page, ticket, notes)
    slo = SLO(name=name, objective_percent=objective, sli=sli,
              description=spec["description"].string(non_empty=False) if "description" in spec else "",
              alert_name=alert_name)
    slo = slo_with_policies(slo, (page, ticket), explicit=set(), where_node=spec["target"], notes=notes)
    return ServiceSpec(
        service=name, preset=CUSTOM, period_seconds=period, slos=(slo,), page=page, ticket=ticket,
        group_by=grouping, source=doc.file, source_format=f"pyrra/{KIND}", warnings=tuple(notes.items),
    )


def _indicator(node: Node, native_histograms: bool) -> tuple[RatioSLI, tuple[str, ...]]:
    kinds = node.mapping({"ratio", "latency", "latencyNative", "bool_gauge"})
    if len(kinds) != 1:
        node.fail("give exactly one of 'ratio', 'latency', 'latencyNative' or 'bool_gauge'")
    kind, body = next(iter(kinds.items()))
    if kind == "ratio":
        items = body.mapping({"errors", "total", "grouping"}, required=("errors", "total"))
        grouping = _grouping(items)
        return RatioSLI(errors=_counter(items["errors"], grouping), total=_counter(items["total"], grouping)), grouping
    if kind == "latency":
        items = body.mapping({"success", "total", "grouping"}, required=("success", "total"))
        grouping = _grouping(items)
        total = _counter(items["total"], grouping)
        return RatioSLI(total=total, good=_counter(items["success"], grouping), kind="latency"), grouping
    if kind == "latencyNative":
        items = body.mapping({"latency", "total", "grouping"}, required=("latency", "total"))
        if not native_histograms:
            body.fail(f"a native-histogram latency SLI needs {NATIVE_HISTOGRAMS_HINT}; if the Prometheus that "
                      "evaluates these rules is one, pass --native-histograms")
        grouping = _grouping(items)
        threshold = duration(items["latency"])
        rates = promql.sum_by(grouping, f"rate({_selector(items['total'])}[{W}])")
        count = f"histogram_count({rates})"
        return RatioSLI(
            total=count,
            errors=f"{count} * (1 - histogram_fraction(0, {promql.number(threshold)}, {rates}))",
            kind="latency",
        ), grouping
    items = body.mapping({"metric", "grouping"}, required=("metric",))
    grouping = _grouping(items)
    series = _selector(items)
    # Each series-second is one event; a 0 is a failed one. Pyrra weighs each sample: the same while the
    # series are scraped at one interval.
    return RatioSLI(errors=promql.sum_by(grouping, f"1 - avg_over_time({series}[{W}])"),
                    total=_count_by(grouping, f"avg_over_time({series}[{W}])"), kind="gauge"), grouping


def _count_by(grouping: tuple[str, ...], expr: str) -> str:
    return f"count {promql.by_clause(grouping)} ({expr})" if grouping else f"count({expr})"


def _grouping(items: dict[str, Node]) -> tuple[str, ...]:
    return parse_group_by(items["grouping"]) if "grouping" in items else ()


def _counter(node: Node, grouping: tuple[str, ...]) -> str:
    return counter_rate(node.mapping({"metric"}, required=("metric",))["metric"], grouping)


def _selector(items: Node | dict[str, Node]) -> str:
    """The ``metric`` selector, checked to be one (native histograms and gauges are read series by series)."""
    import promql_parser

    fields = items.mapping({"metric"}, required=("metric",)) if isinstance(items, Node) else items
    node = fields["metric"]
    try:
        expr = promql_parser.parse(node.string())
    except ValueError as exc:
        node.fail(f"not valid PromQL: {exc}")
    if not isinstance(expr, promql_parser.VectorSelector) or expr.offset is not None or expr.at is not None:
        node.fail("must be a series selector, e.g. probe_success{job=\"blackbox\"}")
    return check_promql(node, selector_text(expr))


def _alerting(node: Node, page: AlertPolicy, ticket: AlertPolicy,
              notes: Notes) -> tuple[AlertPolicy, AlertPolicy, str]:
    items = node.mapping({"disabled", "burnrates", "absent", "name", "absentName", "severities"})
    name = parse_alert_name(items["name"]) if "name" in items else ""
    if "disabled" in items and items["disabled"].boolean():
        return replace(page, enabled=False), replace(ticket, enabled=False), name
    if "burnrates" in items and not items["burnrates"].boolean():
        notes.dropped(items["burnrates"], "burn-rate alerts off with the absent alert on: forge-slo raises the "
                                          "absent alert only for SLOs with alerts, so none is raised")
        return replace(page, enabled=False), replace(ticket, enabled=False), name
    if "absent" in items and not items["absent"].boolean():
        notes.dropped(items["absent"], "forge-slo raises <alert>SLIAbsent for every SLO with alerts")
    if "absentName" in items:
        notes.dropped(items["absentName"], "the absent alert is named <alert name>SLIAbsent")
    if "severities" in items:
        severities = items["severities"].mapping({"absent", "fastBurn", "mediumBurn", "slowBurn", "longTermBurn"})
        notes.drop_all(severities, {"absent": "the absent alert takes the ticket's labels"})
        page = _severity(page, severities, "fastBurn", "mediumBurn", notes)
        ticket = _severity(ticket, severities, "slowBurn", "longTermBurn", notes)
    return page, ticket, name


def _severity(policy: AlertPolicy, severities: dict[str, Node], fast: str, slow: str, notes: Notes) -> AlertPolicy:
    """Pyrra's severity of the policy's two windows as its ``severity`` label (one per forge-slo policy)."""
    values = [severities[k].string() for k in (fast, slow) if k in severities]
    if not values:
        return policy
    if len(set(values)) > 1:
        notes.dropped(severities[slow], f"{slow} differs from {fast}: forge-slo labels both {policy.severity} "
                                        f"windows alike, with {values[0]!r}")
    return replace(policy, labels=frozen_map({**policy.labels, "severity": values[0]}))
