"""Importers from other SLO formats, so users can migrate: Sloth ``prometheus/v1`` and OpenSLO v1.

Both produce the same :class:`ServiceSpec` as the native format; what cannot be carried over exactly is
refused with the reason rather than approximated.
"""

from __future__ import annotations

import re

from forge_slo import promql
from forge_slo.errors import SpecError, SpecErrors
from forge_slo.spec.model import (
    PAGE,
    SLO,
    TICKET,
    AlertPolicy,
    RatioSLI,
    ServiceSpec,
    default_windows,
    frozen_map,
)
from forge_slo.spec.native import (
    DEFAULT_FOR,
    parse_alert_name,
    parse_duration_node,
    parse_labels,
    parse_name,
    parse_slo_identity,
)
from forge_slo.spec.presets import CUSTOM
from forge_slo.spec.yamlnode import Node

_SLOTH_WINDOW = re.compile(r"\{\{\s*\.window\s*\}\}")


def _sloth_query(node: Node) -> str:
    query = _SLOTH_WINDOW.sub(promql.WINDOW_PLACEHOLDER, node.string())
    if promql.WINDOW_PLACEHOLDER not in query:
        node.fail("the query must contain Sloth's {{.window}} placeholder")
    problem = promql.parse_error(promql.fill_window(query, "5m"))
    if problem:
        node.fail(f"not valid PromQL: {problem}")
    return query.strip()


def from_sloth(doc: Node) -> ServiceSpec:
    """A Sloth ``prometheus/v1`` service spec with ``events`` SLIs."""
    items = doc.mapping({"version", "service", "labels", "slos"}, required=("service", "slos"))
    service = parse_name(items["service"])
    labels = parse_labels(items["labels"]) if "labels" in items else {}
    period = 30 * 86400.0
    page_windows, ticket_windows = default_windows(period)
    page_labels: dict[str, str] = {}
    ticket_labels: dict[str, str] = {}
    page_on = ticket_on = False
    slos: list[SLO] = []
    names: set[str] = set()
    for entry in items["slos"].sequence():
        slo = entry.mapping({"name", "objective", "description", "sli", "alerting", "labels"},
                            required=("name", "objective", "sli"))
        name, objective = parse_slo_identity(slo, names)
        sli = slo["sli"].mapping({"events", "raw", "plugin"})
        if "events" not in sli:
            kind = next(iter(sli), "nothing")
            slo["sli"].fail(f"Sloth '{kind}' SLIs cannot be imported: forge-slo weights the period SLI by traffic, "
                            "so it needs an error query and a total query (Sloth's 'events' SLI)")
        events = sli["events"].mapping({"error_query", "total_query"}, required=("error_query", "total_query"))
        alerting = slo["alerting"].mapping({"name", "labels", "annotations", "page_alert", "ticket_alert"}) \
            if "alerting" in slo else {}
        for key, target in (("page_alert", page_labels), ("ticket_alert", ticket_labels)):
            if key in alerting:
                alert = alerting[key].mapping({"labels", "annotations", "disable"})
                if "labels" in alert:
                    target.update(parse_labels(alert["labels"]))
                disabled = alert["disable"].boolean() if "disable" in alert else False
                if key == "page_alert":
                    page_on = page_on or not disabled
                else:
                    ticket_on = ticket_on or not disabled
            elif key == "page_alert":
                page_on = True
            else:
                ticket_on = True
        slo_labels = parse_labels(slo["labels"]) if "labels" in slo else {}
        if "alerting" in slo and "labels" in alerting:
            slo_labels.update(parse_labels(alerting["labels"]))
        slos.append(SLO(
            name=name,
            objective_percent=objective,
            sli=RatioSLI(total=_sloth_query(events["total_query"]), errors=_sloth_query(events["error_query"])),
            description=slo["description"].string(non_empty=False) if "description" in slo else "",
            labels=frozen_map(slo_labels),
            alert_name=parse_alert_name(alerting["name"]) if "name" in alerting else "",
        ))
    if not slos:
        items["slos"].fail("must list at least one SLO")
    return ServiceSpec(
        service=service, preset=CUSTOM, period_seconds=period, slos=tuple(slos),
        page=AlertPolicy(PAGE, page_windows, DEFAULT_FOR[PAGE], frozen_map(page_labels), enabled=page_on),
        ticket=AlertPolicy(TICKET, ticket_windows, DEFAULT_FOR[TICKET], frozen_map(ticket_labels),
                           enabled=ticket_on),
        labels=frozen_map(labels), source=doc.file, source_format="sloth/prometheus-v1",
    )


# OpenSLO ---------------------------------------------------------------------------------------------------

def _openslo_query(node: Node, path_hint: str) -> str:
    """An OpenSLO Prometheus metric as a per-second rate with a {{window}}."""
    body = node.mapping({"metricSource"}, required=("metricSource",))
    source = body["metricSource"].mapping({"type", "spec", "metricSourceRef"}, required=("spec",))
    if "type" in source and source["type"].string().lower() != "prometheus":
        source["type"].fail(f"only Prometheus metric sources can be imported, got {source['type'].value!r}")
    spec = source["spec"].mapping({"query", "promql"})
    key = "query" if "query" in spec else "promql"
    if key not in spec:
        source["spec"].fail("missing 'query'")
    query = spec[key].string().strip()
    if promql.WINDOW_PLACEHOLDER in query:
        expr = query
    else:
        import promql_parser

        try:
            parsed = promql_parser.parse(query)
        except ValueError as exc:
            spec[key].fail(f"not valid PromQL: {exc}")
        if not isinstance(parsed, promql_parser.VectorSelector):
            spec[key].fail(f"{path_hint}: a counter query must be a plain series selector (e.g. "
                           "http_requests_total{code!~\"5..\"}) so forge-slo can take its rate over each window; "
                           "or write the rate yourself with a {{window}} placeholder")
        expr = f"sum(rate({query}[{promql.WINDOW_PLACEHOLDER}]))"
    problem = promql.parse_error(promql.fill_window(expr, "5m"))
    if problem:
        spec[key].fail(f"not valid PromQL: {problem}")
    return expr


def _openslo_indicator(node: Node) -> RatioSLI:
    spec = node.mapping({"apiVersion", "kind", "metadata", "spec"}, required=("spec",))["spec"]
    body = spec.mapping({"ratioMetric", "thresholdMetric", "description"})
    if "ratioMetric" not in body:
        spec.fail("only ratioMetric indicators can be imported (good/total or bad/total over Prometheus)")
    ratio = body["ratioMetric"].mapping({"counter", "good", "bad", "total", "rawType", "raw"}, required=("total",))
    if "raw" in ratio:
        ratio["raw"].fail("raw ratio indicators cannot be weighted by traffic; use good/total or bad/total")
    if "counter" in ratio and not ratio["counter"].boolean():
        ratio["counter"].fail("only counter metrics (counter: true) can be imported")
    if ("good" in ratio) == ("bad" in ratio):
        body["ratioMetric"].fail("give exactly one of 'good' or 'bad', and 'total'")
    total = _openslo_query(ratio["total"], "total")
    if "good" in ratio:
        return RatioSLI(total=total, good=_openslo_query(ratio["good"], "good"))
    return RatioSLI(total=total, errors=_openslo_query(ratio["bad"], "bad"))


def from_openslo(docs: list[Node]) -> list[ServiceSpec]:
    """OpenSLO v1 ``SLO`` documents (with inline or referenced ``SLI`` documents), one spec per service."""
    errors: list[SpecError] = []
    indicators: dict[str, Node] = {}
    slo_docs: list[Node] = []
    for doc in docs:
        try:
            items = doc.mapping({"apiVersion", "kind", "metadata", "spec"}, required=("kind", "metadata", "spec"))
            kind = items["kind"].string()
            if kind == "SLI":
                meta = items["metadata"].mapping()
                indicators[meta["name"].string() if "name" in meta else ""] = doc
            elif kind == "SLO":
                slo_docs.append(doc)
            elif kind != "Service":
                items["kind"].fail(f"OpenSLO kind {kind!r} is not imported (SLO, SLI and Service are)")
        except SpecError as exc:
            errors.append(exc)
    by_service: dict[str, list[tuple[SLO, float, Node]]] = {}
    for doc in slo_docs:
        try:
            items = doc.mapping()
            meta = items["metadata"].mapping()
            name = parse_name(meta["name"]) if "name" in meta else items["metadata"].fail("missing 'name'")
            spec = items["spec"].mapping(
                {"description", "service", "indicator", "indicatorRef", "timeWindow", "budgetingMethod",
                 "objectives", "alertPolicies"}, required=("service", "objectives"))
            service = parse_name(spec["service"])
            if "budgetingMethod" in spec and spec["budgetingMethod"].string() != "Occurrences":
                spec["budgetingMethod"].fail("only the Occurrences budgeting method can be imported")
            if "indicator" in spec:
                sli = _openslo_indicator(spec["indicator"])
            elif "indicatorRef" in spec:
                ref = spec["indicatorRef"].string()
                if ref not in indicators:
                    spec["indicatorRef"].fail(f"no OpenSLO SLI named {ref!r} in the given files")
                sli = _openslo_indicator(indicators[ref])
            else:
                items["spec"].fail("needs an 'indicator' or an 'indicatorRef'")
            period = 30 * 86400.0
            if "timeWindow" in spec:
                windows = spec["timeWindow"].sequence()
                if len(windows) != 1:
                    spec["timeWindow"].fail("exactly one time window can be imported")
                window = windows[0].mapping({"duration", "isRolling", "calendar"}, required=("duration",))
                if "isRolling" in window and not window["isRolling"].boolean():
                    window["isRolling"].fail("only rolling windows can be imported")
                period = parse_duration_node(window["duration"])
            objectives = spec["objectives"].sequence()
            if len(objectives) != 1:
                spec["objectives"].fail("exactly one objective per SLO can be imported")
            objective = objectives[0].mapping({"displayName", "target", "targetPercent", "op", "value"})
            if "target" in objective:
                target = objective["target"].number() * 100
                where = objective["target"]
            elif "targetPercent" in objective:
                target = objective["targetPercent"].number()
                where = objective["targetPercent"]
            else:
                objectives[0].fail("needs 'target' (0-1) or 'targetPercent'")
            if not 0 < target < 100:
                where.fail(f"the objective must be between 0% and 100% (exclusive), got {target:g}%")
            description = spec["description"].string(non_empty=False) if "description" in spec else ""
            entry = SLO(name=name, objective_percent=round(target, 9), sli=sli, description=description)
            by_service.setdefault(service, []).append((entry, period, doc))
        except SpecError as exc:
            errors.append(exc)
    specs: list[ServiceSpec] = []
    for service, entries in sorted(by_service.items()):
        periods = {period for _, period, _ in entries}
        if len(periods) > 1:
            errors.append(SpecError(f"the SLOs of service {service!r} have different time windows; forge-slo "
                                    "compiles one period per service", file=entries[0][2].file))
            continue
        names = [slo.name for slo, _, _ in entries]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            errors.append(SpecError(f"duplicate SLO name {dup!r} in service {service!r}", file=entries[0][2].file))
            continue
        period = periods.pop()
        page_windows, ticket_windows = default_windows(period)
        specs.append(ServiceSpec(
            service=service, preset=CUSTOM, period_seconds=period, slos=tuple(s for s, _, _ in entries),
            page=AlertPolicy(PAGE, page_windows, DEFAULT_FOR[PAGE]),
            ticket=AlertPolicy(TICKET, ticket_windows, DEFAULT_FOR[TICKET]),
            source=entries[0][2].file, source_format="openslo/v1",
        ))
    if errors:
        raise SpecErrors(errors)
    return specs
