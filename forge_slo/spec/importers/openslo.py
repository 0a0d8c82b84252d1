"""OpenSLO ``openslo/v1``, ``openslo/v1alpha`` and ``openslo.com/v2alpha``: SLO documents and the SLI, Service,
DataSource, AlertPolicy and AlertCondition documents they refer to, from any of the given files.

An SLO becomes one forge-slo SLO per objective. Its indicator (inline or referenced) is a ratio metric
(good/total or bad/total, counters or queries with a window placeholder, or a raw ratio) or a threshold metric
(an instant query compared with the objective's value). The budgeting method decides what an event is:

- ``Occurrences``: each request (ratio) or each evaluation of each series (threshold);
- ``Timeslices``: each slice of ``timeSliceWindow``; a slice is good when its ratio (or its share of good
  evaluations) reaches ``timeSliceTarget``. The rules count good and bad slices with subqueries stepped by the
  slice, so slices line up with the clock;
- ``RatioTimeslices``: the average over slices of each slice's ratio.

Burn-rate alert conditions of the SLO's alert policies become its page and ticket windows. What forge-slo cannot
carry over (calendar alignment, notification targets, dimensions, ...) is named in a warning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from forge_slo import promql
from forge_slo.durations import format_duration
from forge_slo.errors import SpecError, SpecErrors
from forge_slo.spec.importers.common import (
    Notes,
    W,
    counter_rate,
    default_policies,
    duration,
    instant_query,
    objective_percent,
    slo_with_policies,
    windowed,
)
from forge_slo.spec.model import PAGE, SLO, TICKET, AlertPolicy, BurnWindow, RatioSLI, ServiceSpec, frozen_map
from forge_slo.spec.native import (
    MAX_DURATION_S,
    MAX_MIN_EVENTS,
    RESERVED_LABEL_PREFIX,
    parse_alert_name,
    parse_annotations,
    parse_for,
    parse_name,
)
from forge_slo.spec.presets import CUSTOM
from forge_slo.spec.yamlnode import Node

V1ALPHA, V1, V2ALPHA = "openslo/v1alpha", "openslo/v1", "openslo.com/v2alpha"
VERSIONS = (V1ALPHA, V1, V2ALPHA)
KINDS = ("SLO", "SLI", "Service", "DataSource", "AlertPolicy", "AlertCondition", "AlertNotificationTarget")

# forge-slo's own annotations, written by `forge-slo export --format openslo` so a round trip is exact.
ANNOTATION_PREFIX = "forge-slo.dev/"
ALERT_NAME = ANNOTATION_PREFIX + "alert-name"
SLI_KIND = ANNOTATION_PREFIX + "sli-kind"
MIN_EVENTS = ANNOTATION_PREFIX + "min-events"
ABSENT_FOR = ANNOTATION_PREFIX + "absent-for"
SHORT_WINDOW = ANNOTATION_PREFIX + "short-window"
GROUP_BY = ANNOTATION_PREFIX + "group-by"
SLI_KINDS = ("latency", "availability", "ratio", "gauge")

DEFAULT_PERIOD = 30 * 86400.0
# OpenSLO's duration shorthand has months, quarters and years; a rolling period needs a fixed length.
_SHORTHAND = {"M": 30 * 86400.0, "Q": 90 * 86400.0, "Y": 365 * 86400.0}
_V1ALPHA_UNITS = {"Second": 1.0, "Minute": 60.0, "Hour": 3600.0, "Day": 86400.0, "Week": 7 * 86400.0,
                  "Month": 30 * 86400.0, "Quarter": 90 * 86400.0, "Year": 365 * 86400.0}
T = TypeVar("T")
# An objective's op says when a value is good; its negation when it is bad.
GOOD_OP = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
BAD_OP = {"gt": "<=", "gte": "<", "lt": ">=", "lte": ">"}
# The short window added to a single-window OpenSLO burn-rate condition: the SRE workbook's 1/12.
SHORT_WINDOW_SHARE = 1 / 12


@dataclass(frozen=True)
class Doc:
    version: str
    kind: str
    name: str
    node: Node
    items: dict[str, Node]

    @property
    def spec(self) -> Node:
        return self.items.get("spec") or Node({}, self.node.file, self.node.line, self.node.child_path("spec"))


@dataclass
class Library:
    """Every OpenSLO document of the run, by kind and name, so references resolve across files."""

    docs: dict[tuple[str, str], Doc] = field(default_factory=dict)
    slos: list[Doc] = field(default_factory=list)  # SLO names may repeat across services
    used: set[tuple[str, str]] = field(default_factory=set)

    def get(self, kind: str, name: str) -> Doc | None:
        doc = self.docs.get((kind, name))
        if doc is not None:
            self.used.add((kind, name))
        return doc


@dataclass(frozen=True)
class Indicator:
    """A parsed SLI: windowed per-second rates (ratio), an instant ratio (raw) or an instant value (threshold)."""

    total: str | None = None
    good: str | None = None
    bad: str | None = None
    raw_good_ratio: str | None = None
    value: str | None = None


@dataclass
class Imported:
    """One SLO document's contribution: its SLOs and what its service needs to agree on."""

    service: str
    slos: list[SLO]
    period: float
    doc: Doc
    notes: Notes
    min_events: float | None = None
    absent_for: float | None = None
    group_by: tuple[str, ...] | None = None


def import_openslo(nodes: Sequence[Node]) -> tuple[list[ServiceSpec], set[str]]:
    """One spec per service named by the SLO documents among ``nodes``, and the files whose documents they
    read (a file of SLI documents an SLO in another file refers to compiles too)."""
    errors: list[SpecError] = []
    library = Library()
    for node in nodes:
        try:
            doc = _document(node)
        except SpecError as exc:
            errors.append(exc)
            continue
        if doc.kind == "SLO":
            library.slos.append(doc)
            continue
        earlier = library.docs.get((doc.kind, doc.name))
        if earlier is not None:
            errors.append(SpecError(f"another OpenSLO {doc.kind} named {doc.name!r} is in {earlier.node.file}"
                                    f":{earlier.node.line}; references to it would be ambiguous", file=node.file,
                                    line=node.line, field=node.child_path("metadata.name").lstrip(".")))
            continue
        library.docs[(doc.kind, doc.name)] = doc
    imported: list[Imported] = []
    for doc in library.slos:
        try:
            imported.append(_slo_document(doc, library))
        except SpecError as exc:
            errors.append(exc)
    specs = _services(imported, library, errors)
    if errors:
        raise SpecErrors(errors)
    read = {doc.node.file for key, doc in library.docs.items() if key in library.used}
    return specs, read | {entry.doc.node.file for entry in imported}


def _document(node: Node) -> Doc:
    items = node.mapping({"apiVersion", "kind", "metadata", "spec"}, required=("apiVersion", "kind", "metadata"))
    version = items["apiVersion"].string()
    kind = items["kind"].string()
    if kind not in KINDS:
        items["kind"].fail(f"OpenSLO kind {kind!r} is not imported (known: {', '.join(KINDS)})")
    if "spec" not in items and kind != "Service":
        node.fail("missing required field 'spec'")
    meta = items["metadata"].mapping()
    if "name" not in meta:
        items["metadata"].fail("missing required field 'name'")
    return Doc(version, kind, meta["name"].string(), node, items)


def _services(imported: list[Imported], library: Library, errors: list[SpecError]) -> list[ServiceSpec]:
    by_service: dict[str, list[Imported]] = {}
    for entry in imported:
        by_service.setdefault(entry.service, []).append(entry)
    specs: list[ServiceSpec] = []
    for service, entries in sorted(by_service.items()):
        try:
            specs.append(_service_spec(service, entries, library))
        except SpecError as exc:
            errors.append(exc)
    _note_unused(specs, library)
    return specs


def _service_spec(service: str, entries: list[Imported], library: Library) -> ServiceSpec:
    first = entries[0]
    for entry in entries[1:]:
        if entry.period != first.period:
            entry.doc.node.fail(f"the SLOs of service {service!r} have different time windows "
                                f"({format_duration(first.period)} in {first.doc.node.file}:{first.doc.node.line}, "
                                f"{format_duration(entry.period)} here); forge-slo compiles one period per service")
    names: set[str] = set()
    slos: list[SLO] = []
    notes = Notes()
    for entry in entries:
        for slo in entry.slos:
            if slo.name in names:
                entry.doc.node.fail(f"duplicate SLO name {slo.name!r} in service {service!r}")
            names.add(slo.name)
            slos.append(slo)
        notes.items.extend(entry.notes.items)
    min_events = _agreed(entries, "min_events", 10.0)
    absent_for = _agreed(entries, "absent_for", 600.0)
    group_by = _agreed(entries, "group_by", ())
    labels: dict[str, str] = {}
    description = ""
    doc = library.get("Service", service)
    if doc is not None:
        spec = doc.spec.mapping({"description"}) if doc.spec.value is not None else {}
        notes.drop_all(doc.items["metadata"].mapping(), {"displayName": "the service's display name"})
        description = spec["description"].string(non_empty=False) if "description" in spec else ""
        labels = _labels(doc, notes)
    page, ticket = default_policies(first.period)
    return ServiceSpec(
        service=service, preset=CUSTOM, period_seconds=first.period, slos=tuple(slos), page=page, ticket=ticket,
        group_by=group_by, labels=frozen_map(labels), min_events=min_events, absent_for_seconds=absent_for,
        description=description, source=first.doc.node.file, source_format=first.doc.version,
        warnings=tuple(notes.items),
    )


def _agreed(entries: list[Imported], attr: str, default: T) -> T:
    """A service-wide setting from its SLOs' forge-slo annotations, which must agree."""
    values = {getattr(e, attr) for e in entries if getattr(e, attr) is not None}
    if len(values) > 1:
        entries[0].doc.node.fail(f"the SLOs of service {entries[0].service!r} set different "
                                 f"{ANNOTATION_PREFIX}{attr.replace('_', '-')} annotations; forge-slo has one per "
                                 "service")
    return values.pop() if values else default


def _note_unused(specs: list[ServiceSpec], library: Library) -> None:
    """Documents no SLO refers to are named in a warning of a service from their file (or the first)."""
    if not specs:
        return
    for key, doc in library.docs.items():
        if key in library.used:
            continue
        index = next((i for i, s in enumerate(specs) if s.source == doc.node.file), 0)
        text = (f"{doc.node.file}:{doc.node.line}: not carried over: OpenSLO {doc.kind} {doc.name!r} is not "
                "referred to by any SLO in the given files")
        specs[index] = replace(specs[index], warnings=(*specs[index].warnings, text))


# SLO documents ----------------------------------------------------------------------------------------------

_SLO_FIELDS = {
    V1ALPHA: {"description", "service", "indicator", "timeWindows", "budgetingMethod", "objectives"},
    V1: {"description", "service", "indicator", "indicatorRef", "timeWindow", "budgetingMethod", "objectives",
         "alertPolicies"},
    V2ALPHA: {"description", "service", "serviceRef", "sli", "sliRef", "timeWindow", "budgetingMethod", "objectives",
              "alertPolicies"},
}


def _slo_document(doc: Doc, library: Library) -> Imported:
    notes = Notes()
    if doc.version not in VERSIONS:
        doc.items["apiVersion"].fail(f"unsupported OpenSLO version {doc.version!r}; expected one of "
                                     f"{', '.join(VERSIONS)}")
    meta = doc.items["metadata"].mapping({"name", "displayName", "labels", "annotations", "namespace"})
    name = parse_name(meta["name"])
    annotations = _forge_annotations(meta, notes)
    notes.drop_all(meta, {"displayName": "forge-slo names an SLO by metadata.name",
                          "namespace": "forge-slo groups SLOs by service"})
    raw = doc.spec.value if isinstance(doc.spec.value, dict) else {}
    service_key = "serviceRef" if doc.version == V2ALPHA and "serviceRef" in raw else "service"
    spec = doc.spec.mapping(_SLO_FIELDS[doc.version], required=(service_key, "objectives"))
    service = parse_name(spec[service_key])
    method = spec["budgetingMethod"].choice(("Occurrences", "Timeslices", "RatioTimeslices")) \
        if "budgetingMethod" in spec else "Occurrences"
    if "budgetingMethod" not in spec:
        notes.note(doc.spec, "no budgetingMethod: Occurrences (every event counts) assumed")
    period = _period(spec, doc, notes)
    description = spec["description"].string(non_empty=False) if "description" in spec else ""
    labels = _labels(doc, notes)
    objectives = spec["objectives"].sequence()
    if not objectives:
        spec["objectives"].fail("must list at least one objective")
    policies = _alerting(spec.get("alertPolicies"), library, period, notes)
    slos: list[SLO] = []
    for index, objective in enumerate(objectives):
        entry = objective.mapping({"displayName", "op", "value", "target", "targetPercent", "timeSliceTarget",
                                   "timeSliceWindow", "ratioMetrics", "indicator", "indicatorRef", "sli", "sliRef",
                                   "compositeWeight"})
        indicator = _indicator(doc, spec, entry, library, notes)
        sli = _objective_sli(indicator, method, objective, entry, doc.version, notes)
        if annotations.get(SLI_KIND):
            sli = replace(sli, kind=annotations[SLI_KIND])
        if "compositeWeight" in entry:
            notes.dropped(entry["compositeWeight"], "composite SLOs are not compiled; each objective is its own SLO")
        suffix = entry["displayName"].string(non_empty=False) if "displayName" in entry else ""
        slo = SLO(
            name=name if len(objectives) == 1 else _indexed(meta["name"], name, index),
            objective_percent=_target(objective, entry),
            sli=sli,
            description=" ".join(p for p in (description, f"({suffix})" if suffix and len(objectives) > 1 else "")
                                 if p),
            labels=frozen_map(labels),
            alert_name=annotations.get(ALERT_NAME, ""),
        )
        if suffix and len(objectives) == 1 and not description:
            slo = replace(slo, description=suffix)
        if policies is None:
            slos.append(slo_with_policies(slo, default_policies(period), explicit=set(), where_node=objective,
                                          notes=notes))
        else:
            slos.append(slo_with_policies(slo, policies[0], explicit=policies[1], where_node=objective, notes=notes))
    min_events = absent_for = None
    group_by: tuple[str, ...] | None = None
    if MIN_EVENTS in annotations:
        min_events = _annotation_number(meta, MIN_EVENTS, annotations[MIN_EVENTS])
    if ABSENT_FOR in annotations:
        absent_for = duration(meta["annotations"], text=annotations[ABSENT_FOR])
    if GROUP_BY in annotations:
        group_by = tuple(label.strip() for label in annotations[GROUP_BY].split(","))
        if not all(promql.is_label_name(label) for label in group_by):
            meta["annotations"].fail(f"{GROUP_BY} must list label names separated by commas")
    return Imported(service, slos, period, doc, notes, min_events, absent_for, group_by)


def _indexed(node: Node, name: str, index: int) -> str:
    """``<name>-<index>`` for one of several objectives, as Sloth names them."""
    indexed = f"{name}-{index}"
    return parse_name(Node(indexed, node.file, node.line, node.path))


def _annotation_number(meta: dict[str, Node], key: str, text: str) -> float:
    where = Node(None, meta["annotations"].file, meta["annotations"].line, meta["annotations"].child_path(key))
    try:
        value = float(text)
    except ValueError:
        where.fail(f"must be a number, got {text!r}")
    return Node(value, where.file, where.line, where.path).number(minimum=0, maximum=MAX_MIN_EVENTS)


def _forge_annotations(meta: dict[str, Node], notes: Notes) -> dict[str, str]:
    """forge-slo's own annotations of an SLO; any other annotation is named as not carried over."""
    if "annotations" not in meta:
        return {}
    out: dict[str, str] = {}
    for key, value in meta["annotations"].items():
        if key.startswith(ANNOTATION_PREFIX):
            out[key] = value.string()
        else:
            notes.dropped(value, f"annotation {key!r} (OpenSLO annotations describe the object; forge-slo reads "
                                 f"only its own {ANNOTATION_PREFIX}* keys)")
    if SLI_KIND in out and out[SLI_KIND] not in SLI_KINDS:
        meta["annotations"].fail(f"{SLI_KIND} must be one of {', '.join(SLI_KINDS)}")
    if ALERT_NAME in out:
        parse_alert_name(Node(out[ALERT_NAME], meta["annotations"].file, meta["annotations"].line,
                              meta["annotations"].child_path(ALERT_NAME)))
    return out


def _labels(doc: Doc, notes: Notes) -> dict[str, str]:
    """OpenSLO metadata labels as Prometheus labels (v1 lists of values are joined with commas)."""
    meta = doc.items["metadata"].mapping()
    if "labels" not in meta:
        return {}
    out: dict[str, str] = {}
    for key, value in meta["labels"].items():
        where = Node(None, value.file, value.line, meta["labels"].child_path(key))
        if not promql.is_label_name(key) or key.startswith(RESERVED_LABEL_PREFIX):
            notes.dropped(where, f"label {key!r} is not a Prometheus label name")
            continue
        if isinstance(value.value, list):
            out[key] = ",".join(item.string() for item in value.sequence())
        elif isinstance(value.value, str | int | float) and not isinstance(value.value, bool):
            out[key] = str(value.value)
        else:
            value.fail("label values must be strings (or, in openslo/v1, lists of strings)")
    return out


def _target(objective: Node, entry: dict[str, Node]) -> float:
    if "target" in entry:
        return objective_percent(entry["target"], entry["target"].number() * 100)
    if "targetPercent" in entry:
        return objective_percent(entry["targetPercent"], entry["targetPercent"].number())
    objective.fail("needs 'target' (0-1) or 'targetPercent'")


def _period(spec: dict[str, Node], doc: Doc, notes: Notes) -> float:
    key = "timeWindows" if doc.version == V1ALPHA else "timeWindow"
    if key not in spec:
        notes.note(doc.spec, f"no {key}: a rolling 30d period assumed")
        return DEFAULT_PERIOD
    windows = spec[key].sequence()
    if len(windows) != 1:
        spec[key].fail("give exactly one time window: forge-slo compiles one period per SLO")
    if doc.version == V1ALPHA:
        window = windows[0].mapping({"unit", "count", "isRolling", "calendar"}, required=("unit", "count"))
        unit = window["unit"].choice(tuple(_V1ALPHA_UNITS))
        period = window["count"].integer(minimum=1, maximum=int(MAX_DURATION_S // _V1ALPHA_UNITS[unit])) \
            * _V1ALPHA_UNITS[unit]
        if unit in ("Month", "Quarter", "Year"):
            notes.note(window["unit"], f"a {unit.lower()} is read as {format_duration(_V1ALPHA_UNITS[unit])} "
                                       "(a rolling period has a fixed length)")
    else:
        window = windows[0].mapping({"duration", "isRolling", "calendar"}, required=("duration",))
        period = _shorthand(window["duration"], notes)
    if "isRolling" in window and not window["isRolling"].boolean() or "calendar" in window:
        notes.dropped(window.get("calendar", window.get("isRolling", windows[0])),
                      f"calendar alignment: Prometheus rules evaluate a rolling period, so this SLO covers the last "
                      f"{format_duration(period)} at every moment")
    return period


def _shorthand(node: Node, notes: Notes) -> float:
    text = node.string().strip()
    match = re.fullmatch(r"([0-9]{1,6})([MQY])", text)
    if match is None:
        return duration(node)
    seconds = int(match.group(1)) * _SHORTHAND[match.group(2)]
    if not 0 < seconds <= MAX_DURATION_S:
        node.fail(f"{text!r} must be longer than zero and at most {format_duration(MAX_DURATION_S)}")
    notes.note(node, f"{match.group(2)} is read as {format_duration(_SHORTHAND[match.group(2)])} (a rolling "
                     "period has a fixed length)")
    return seconds


# Indicators -------------------------------------------------------------------------------------------------

def _indicator(doc: Doc, spec: dict[str, Node], objective: dict[str, Node], library: Library,
               notes: Notes) -> Indicator:
    if doc.version == V1ALPHA:
        return _v1alpha_indicator(spec, objective, notes)
    inline, ref = ("indicator", "indicatorRef") if doc.version == V1 else ("sli", "sliRef")
    for source in (objective, spec):  # an objective may name its own indicator
        if inline in source:
            body = source[inline].mapping({"metadata", "spec"}, required=("spec",))
            return _sli_spec(body["spec"], doc.version, library, notes)
        if ref in source:
            name = source[ref].string()
            target = library.get("SLI", name)
            if target is None:
                source[ref].fail(f"no OpenSLO SLI named {name!r} in the given files")
            return _sli_spec(target.spec, target.version, library, notes)
    doc.spec.fail(f"needs an '{inline}' or an '{ref}'")


def _sli_spec(node: Node, version: str, library: Library, notes: Notes) -> Indicator:
    body = node.mapping({"description", "thresholdMetric", "ratioMetric"})
    if ("thresholdMetric" in body) == ("ratioMetric" in body):
        node.fail("give exactly one of 'thresholdMetric' or 'ratioMetric'")
    if "description" in body:
        notes.dropped(body["description"], "the SLI's description (the SLO's own is kept)")
    if "thresholdMetric" in body:
        return Indicator(value=_metric(body["thresholdMetric"], version, library, notes, mode="instant"))
    ratio = body["ratioMetric"].mapping({"counter", "good", "bad", "total", "rawType", "raw"})
    counter = ratio["counter"].boolean() if "counter" in ratio else True
    if "raw" in ratio:
        if any(k in ratio for k in ("good", "bad", "total")):
            body["ratioMetric"].fail("give either 'raw' (with rawType) or good/bad and total")
        raw_type = ratio["rawType"].choice(("success", "failure")) if "rawType" in ratio else "success"
        query = _metric(ratio["raw"], version, library, notes, mode="instant")
        return Indicator(raw_good_ratio=query if raw_type == "success" else f"1 - ({query})")
    if "total" not in ratio or ("good" in ratio) == ("bad" in ratio):
        body["ratioMetric"].fail("give exactly one of 'good' or 'bad', and 'total'")
    mode = "counter" if counter else "gauge"
    part = "good" if "good" in ratio else "bad"  # read in the order written: an error points at the first
    query = _metric(ratio[part], version, library, notes, mode=mode)
    total = _metric(ratio["total"], version, library, notes, mode=mode)
    return Indicator(total=total, good=query) if part == "good" else Indicator(total=total, bad=query)


def _metric(node: Node, version: str, library: Library, notes: Notes, *, mode: str) -> str:
    """A v1 ``metricSource`` or v2alpha data source reference with a Prometheus query, as PromQL."""
    if version == V2ALPHA:
        items = node.mapping({"dataSourceRef", "dataSourceSpec", "spec"}, required=("spec",))
        source_type = None
        if "dataSourceSpec" in items:
            inline = items["dataSourceSpec"].mapping({"type", "description", "connectionDetails"})
            source_type = inline.get("type")
        _check_source(source_type, items.get("dataSourceRef"), node, library, notes)
        spec = items["spec"]
    else:
        source = node.mapping({"metricSource"}, required=("metricSource",))["metricSource"]
        items = source.mapping({"metricSourceRef", "type", "spec"}, required=("spec",))
        _check_source(items.get("type"), items.get("metricSourceRef"), source, library, notes)
        spec = items["spec"]
    fields = spec.mapping()
    key = "query" if "query" in fields else "promql"
    if key not in fields:
        spec.fail("missing 'query' (the Prometheus query)")
    for other, value in fields.items():
        if other != key:
            notes.dropped(value, f"metric source field {other!r} (forge-slo reads the query only)")
    return _query(fields[key], mode)


def _query(node: Node, mode: str) -> str:
    if mode == "instant":
        return instant_query(node, "a threshold metric or raw ratio")
    query = windowed(node)
    if query is not None:
        return query
    if mode == "gauge":
        node.fail(f"counter: false (each point a count of events) has no exact rate over a window in PromQL; use "
                  f"counter: true with a counter, or a query with a {W} placeholder")
    return counter_rate(node)


def _check_source(type_node: Node | None, ref: Node | None, where_node: Node, library: Library,
                  notes: Notes) -> None:
    """The metric source must be Prometheus (or a source forge-slo cannot see, read as PromQL)."""
    if type_node is None and ref is not None:
        target = library.get("DataSource", ref.string())
        if target is not None:
            body = target.spec.mapping()
            type_node = body.get("type")
    if type_node is not None:
        kind = type_node.string()
        if kind.lower() != "prometheus":
            type_node.fail(f"only Prometheus metric sources can be compiled into Prometheus rules, got {kind!r}")
        return
    what = f"data source {ref.string()!r} is not among the given files" if ref is not None else "no source type"
    notes.note(ref or where_node, f"{what}: its query is read as PromQL")


def _v1alpha_indicator(spec: dict[str, Node], objective: dict[str, Node], notes: Notes) -> Indicator:
    if "ratioMetrics" in objective:
        ratio = objective["ratioMetrics"].mapping({"good", "total", "bad", "incremental"},
                                                  required=("total",))
        if ("good" in ratio) == ("bad" in ratio):
            objective["ratioMetrics"].fail("give exactly one of 'good' or 'bad', and 'total'")
        mode = "counter" if not ("incremental" in ratio and not ratio["incremental"].boolean()) else "gauge"
        part = "good" if "good" in ratio else "bad"
        query = _query(_v1alpha_source(ratio[part]), mode)
        total = _query(_v1alpha_source(ratio["total"]), mode)
        return Indicator(total=total, good=query) if part == "good" else Indicator(total=total, bad=query)
    if "indicator" not in spec:
        spec["objectives"].fail("each objective needs ratioMetrics, or the SLO an indicator")
    indicator = spec["indicator"].mapping({"thresholdMetric"}, required=("thresholdMetric",))
    return Indicator(value=_query(_v1alpha_source(indicator["thresholdMetric"]), "instant"))


def _v1alpha_source(node: Node) -> Node:
    items = node.mapping({"source", "queryType", "query", "metadata"}, required=("source", "query"))
    source = items["source"].string()
    if source.lower() != "prometheus":
        items["source"].fail(f"only Prometheus metric sources can be compiled into Prometheus rules, got {source!r}")
    return items["query"]


# SLIs by budgeting method -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    """A threshold metric's comparison: a value is good when ``value op threshold``."""

    value: str
    op: str
    threshold: float

    def good(self) -> str:
        return f"(({self.value}) {GOOD_OP[self.op]} bool {promql.number(self.threshold)})"

    def bad(self) -> str:
        return f"(({self.value}) {BAD_OP[self.op]} bool {promql.number(self.threshold)})"

    def one(self) -> str:
        return f"(({self.value}) * 0 + 1)"


def _objective_sli(ind: Indicator, method: str, objective: Node, entry: dict[str, Node], version: str,
                   notes: Notes) -> RatioSLI:
    op = entry["op"].choice(tuple(GOOD_OP)) if "op" in entry else None
    threshold = None
    if ind.value is not None:
        if op is None or "value" not in entry:
            objective.fail("a threshold metric needs the objective's 'op' and 'value' (good when the metric op value)")
        threshold = Threshold(ind.value, op, entry["value"].number())
    elif "value" in entry:
        notes.dropped(entry["value"], "a value is compared with threshold metrics only")
    if method == "Occurrences":
        for key in ("timeSliceTarget", "timeSliceWindow"):
            if key in entry:
                notes.dropped(entry[key], "time slices apply to Timeslices budgeting only")
        return _occurrences(ind, threshold, entry, notes)
    if "timeSliceWindow" in entry:
        slice_s = _shorthand(entry["timeSliceWindow"], notes)
    else:
        slice_s = 60.0
        notes.note(objective, "no timeSliceWindow" + (" (openslo/v1alpha has none)" if version == V1ALPHA else "")
                   + ": slices of 1m assumed")
    step = format_duration(slice_s)
    if method == "RatioTimeslices":
        if threshold is not None:
            objective.fail("RatioTimeslices averages the ratio of each slice: it needs a ratio metric")
        ratio = _slice_ratio(ind, step)
        return RatioSLI(errors=f"avg_over_time((1 - ({ratio}))[{W}:{step}])",
                        total=f"avg_over_time((({ratio}) * 0 + 1)[{W}:{step}])")
    if "timeSliceTarget" not in entry:
        objective.fail("Timeslices budgeting needs 'timeSliceTarget': the share a slice must reach to count as good")
    target = entry["timeSliceTarget"].number()
    if not 0 < target <= 1:
        entry["timeSliceTarget"].fail("must be above 0 and at most 1")
    if threshold is not None:  # a slice is good when its share of good evaluations reaches the target
        share = f"avg_over_time({threshold.good()}[{step}:])"
        return RatioSLI(errors=f"sum(avg_over_time(({share} < bool {promql.number(target)})[{W}:{step}]))",
                        total=f"sum(avg_over_time(({share} * 0 + 1)[{W}:{step}]))")
    ratio = _slice_ratio(ind, step)  # a slice is good when its ratio is on the good side of the target
    return RatioSLI(errors=f"avg_over_time((({ratio}) {BAD_OP[op or 'gte']} bool {promql.number(target)})[{W}:{step}])",
                    total=f"avg_over_time((({ratio}) * 0 + 1)[{W}:{step}])")


def _occurrences(ind: Indicator, threshold: Threshold | None, entry: dict[str, Node], notes: Notes) -> RatioSLI:
    if threshold is not None:  # every evaluation of every series is an event
        return RatioSLI(errors=f"sum(avg_over_time({threshold.bad()}[{W}:]))",
                        total=f"sum(avg_over_time({threshold.one()}[{W}:]))")
    if "op" in entry:
        notes.dropped(entry["op"], "op compares threshold metrics (and time slices) only")
    if ind.raw_good_ratio is not None:
        return RatioSLI(errors=f"avg_over_time((1 - ({ind.raw_good_ratio}))[{W}:])",
                        total=f"avg_over_time((({ind.raw_good_ratio}) * 0 + 1)[{W}:])")
    assert ind.total is not None
    return RatioSLI(total=ind.total, good=ind.good, errors=ind.bad)


def _slice_ratio(ind: Indicator, step: str) -> str:
    """The good share of one slice: good/total over the slice (only where there was traffic), or a raw ratio."""
    if ind.raw_good_ratio is not None:
        return f"avg_over_time(({ind.raw_good_ratio})[{step}:])"
    assert ind.total is not None  # a ratio metric (threshold metrics are judged per evaluation)
    total = f"({promql.fill_window(ind.total, step)}) > 0"
    if ind.good is not None:
        return f"({promql.fill_window(ind.good, step)}) / ({total})"
    assert ind.bad is not None
    return f"1 - ({promql.fill_window(ind.bad, step)}) / ({total})"


# Alert policies ---------------------------------------------------------------------------------------------

def _alerting(node: Node | None, library: Library, period: float,
              notes: Notes) -> tuple[tuple[AlertPolicy, AlertPolicy], set[str]] | None:
    """The page and ticket policies of the SLO's burn-rate conditions (None: forge-slo's defaults), and the
    severities whose windows the source set."""
    if node is None:
        return None
    page, ticket = default_policies(period)
    windows: dict[str, list[BurnWindow]] = {PAGE: [], TICKET: []}
    fors: dict[str, list[float]] = {PAGE: [], TICKET: []}
    labels: dict[str, dict[str, str]] = {PAGE: {}, TICKET: {}}
    annotations: dict[str, dict[str, str]] = {PAGE: {}, TICKET: {}}
    entries = node.sequence()
    for entry in entries:
        policy = _resolve(entry, "alertPolicyRef", "AlertPolicy", library, notes)
        if policy is None:
            continue
        meta, spec = policy
        body = spec.mapping({"description", "alertWhenNoData", "alertWhenBreaching", "alertWhenResolved", "conditions",
                             "notificationTargets"})
        notes.drop_all(body, {
            "description": "the policy's description",
            "alertWhenNoData": "forge-slo raises <alert>SLIAbsent whenever an SLO has alerts",
            "alertWhenResolved": "resolved notifications are Alertmanager's (send_resolved)",
            "notificationTargets": "notification targets are Alertmanager's receivers: route on the alerts' labels",
        })
        if "alertWhenBreaching" in body and not body["alertWhenBreaching"].boolean():
            notes.dropped(body["alertWhenBreaching"], "a policy that does not alert when breaching raises nothing")
            continue
        for condition in body["conditions"].sequence() if "conditions" in body else []:
            _condition(condition, library, period, notes, meta, windows, fors, labels, annotations)
    if not windows[PAGE] and not windows[TICKET]:
        if entries:
            notes.note(node, "no burn-rate condition could be carried over: forge-slo's default page and ticket "
                             "alerts are used")
            return None
        return (replace(page, enabled=False), replace(ticket, enabled=False)), set()
    out = []
    for base in (page, ticket):
        severity = base.severity
        if len(set(fors[severity])) > 1:
            notes.note(node, f"the {severity} conditions wait different times (alertAfter): forge-slo waits the "
                             f"longest, {format_duration(max(fors[severity]))}, for all of them")
        out.append(replace(base, windows=tuple(windows[severity]) or base.windows,
                           for_seconds=max(fors[severity]) if fors[severity] else base.for_seconds,
                           labels=frozen_map(labels[severity]), annotations=frozen_map(annotations[severity]),
                           enabled=bool(windows[severity])))
    return (out[0], out[1]), {s for s in (PAGE, TICKET) if windows[s]}


def _resolve(entry: Node, ref_key: str, kind: str, library: Library,
             notes: Notes) -> tuple[dict[str, Node], Node] | None:
    """An inline object's (metadata, spec), or the referenced document's; None (with a note) when missing."""
    items = entry.mapping()
    if ref_key in items:
        name = items[ref_key].string()
        doc = library.get(kind, name)
        if doc is None:
            notes.dropped(items[ref_key], f"no OpenSLO {kind} named {name!r} in the given files")
            return None
        return doc.items["metadata"].mapping(), doc.spec
    body = entry.mapping({"kind", "metadata", "spec", "apiVersion"}, required=("spec",))
    return (body["metadata"].mapping() if "metadata" in body else {}), body["spec"]


def _condition(entry: Node, library: Library, period: float, notes: Notes, policy_meta: dict[str, Node],
               windows: dict[str, list[BurnWindow]], fors: dict[str, list[float]],
               labels: dict[str, dict[str, str]], annotations: dict[str, dict[str, str]]) -> None:
    resolved = _resolve(entry, "conditionRef", "AlertCondition", library, notes)
    if resolved is None:
        return
    meta, spec = resolved
    body = spec.mapping({"severity", "condition", "description"}, required=("condition",))
    cond = body["condition"].mapping({"kind", "op", "threshold", "lookbackWindow", "alertAfter"},
                                     required=("kind", "threshold", "lookbackWindow"))
    if cond["kind"].string() != "burnrate":
        notes.dropped(cond["kind"], f"condition kind {cond['kind'].value!r} (burnrate conditions are compiled)")
        return
    op = cond["op"].choice(tuple(GOOD_OP)) if "op" in cond else "gt"
    if op not in ("gt", "gte"):
        notes.dropped(cond["op"], f"a condition that fires while the burn rate is {op} its threshold spends no "
                                  "budget (burn-rate alerts fire above a threshold)")
        return
    long_s = _shorthand(cond["lookbackWindow"], notes)
    if long_s > period:
        cond["lookbackWindow"].fail("the lookback window is longer than the SLO period")
    short_s = _short_window(meta, long_s, cond["lookbackWindow"], notes)
    factor = cond["threshold"].number()
    if factor <= 0:
        cond["threshold"].fail("a burn-rate threshold must be positive")
    severity_text = body["severity"].string() if "severity" in body else "page"
    severity = PAGE if severity_text.lower() in ("page", "critical") else TICKET
    if severity_text not in (PAGE, TICKET):
        labels[severity]["severity"] = severity_text
    windows[severity].append(BurnWindow(long_s, short_s, factor))
    fors[severity].append(parse_for(cond["alertAfter"]) if "alertAfter" in cond else 0.0)
    if "description" in body:
        notes.dropped(body["description"], "the condition's description")
    for key, value in _policy_labels(policy_meta, notes).items():
        labels[severity][key] = value
    if "annotations" in policy_meta:
        annotations[severity].update(parse_annotations(_alert_annotations(policy_meta["annotations"], notes)))


def _short_window(meta: dict[str, Node], long_s: float, where_node: Node, notes: Notes) -> float:
    given = meta["annotations"].string_map().get(SHORT_WINDOW) if "annotations" in meta else None
    if given is not None:
        short_s = duration(meta["annotations"], text=given)
        if short_s >= long_s:
            meta["annotations"].fail(f"{SHORT_WINDOW} must be shorter than the lookback window")
        return short_s
    short_s = long_s * SHORT_WINDOW_SHARE
    notes.note(where_node, f"a short window of {format_duration(short_s)} (1/12 of the lookback window) confirms "
                           "this burn rate, so an alert resolves soon after the burn stops")
    return short_s


def _policy_labels(meta: dict[str, Node], notes: Notes) -> dict[str, str]:
    if "labels" not in meta:
        return {}
    out: dict[str, str] = {}
    for key, value in meta["labels"].items():
        if not promql.is_label_name(key) or key.startswith(RESERVED_LABEL_PREFIX):
            notes.dropped(value, f"label {key!r} is not a Prometheus label name")
            continue
        out[key] = ",".join(v.string() for v in value.sequence()) if isinstance(value.value, list) \
            else value.string()
    return out


def _alert_annotations(node: Node, notes: Notes) -> Node:
    """The annotations that can be alert annotations (label-name keys, not forge-slo's own) as a Node."""
    kept: dict[str, Node] = {}
    for key, value in node.items():
        if key.startswith(ANNOTATION_PREFIX):
            continue
        if not promql.is_label_name(key):
            notes.dropped(value, f"annotation {key!r} is not a valid alert annotation name")
            continue
        kept[key] = value
    return Node(kept, node.file, node.line, node.path)
