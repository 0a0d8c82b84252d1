"""Sloth specs: ``version: prometheus/v1`` files, the Kubernetes ``PrometheusServiceLevel`` (``sloth.slok.dev/v1``,
camelCase fields) and ``AlertWindows`` documents.

Everything a Sloth SLO says is kept: ``events`` and ``raw`` SLIs, service and SLO labels, the alert name, labels
and annotations of both alerts and of each severity, and ``disable`` per severity, each SLO its own. Plugins are
Go code Sloth runs while it writes the rules, so their output is unknown here: they are refused at their field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from forge_slo.errors import SpecError, SpecErrors
from forge_slo.spec.importers.common import (
    Notes,
    budget_window,
    default_policies,
    duration,
    slo_with_policies,
    windowed,
)
from forge_slo.spec.model import PAGE, SLO, TICKET, AlertPolicy, BurnWindow, RatioSLI, ServiceSpec, frozen_map
from forge_slo.spec.native import (
    parse_alert_name,
    parse_annotations,
    parse_labels,
    parse_name,
    parse_slo_identity,
)
from forge_slo.spec.presets import CUSTOM
from forge_slo.spec.yamlnode import Node

SPEC_VERSION = "prometheus/v1"
K8S_API = "sloth.slok.dev/v1"
K8S_KIND = "PrometheusServiceLevel"
WINDOWS_KIND = "AlertWindows"
DEFAULT_PERIOD = 30 * 86400.0  # Sloth's default SLO period
_CAMEL = {"error_query": "errorQuery", "total_query": "totalQuery", "error_ratio_query": "errorRatioQuery",
          "page_alert": "pageAlert", "ticket_alert": "ticketAlert", "slo_plugins": "sloPlugins"}


@dataclass(frozen=True)
class Spelling:
    """Field names of one form: snake_case in ``prometheus/v1`` files, camelCase in the Kubernetes resource."""

    camel: bool

    def __call__(self, snake: str) -> str:
        return _CAMEL.get(snake, snake) if self.camel else snake


@dataclass(frozen=True)
class Windows:
    """An ``AlertWindows`` document: the period and the page and ticket windows for it."""

    period: float
    page: tuple[BurnWindow, ...]
    ticket: tuple[BurnWindow, ...]
    node: Node


def import_sloth(docs: Sequence[Node], window_docs: Sequence[Node]) -> tuple[list[ServiceSpec], set[str]]:
    """Every Sloth service in ``docs``, with the windows of the ``AlertWindows`` documents given with them, and
    the files read (an AlertWindows file counts once a service uses its windows)."""
    errors: list[SpecError] = []
    windows: list[Windows] = []
    for doc in window_docs:
        try:
            windows.append(parse_windows(doc))
        except SpecError as exc:
            errors.append(exc)
    chosen = windows[0] if windows else None
    for other in windows[1:]:
        if other.period != windows[0].period:
            errors.append(SpecError(
                "two AlertWindows documents with different periods; Sloth uses the windows of one period per run "
                "(--default-slo-period), so give one", file=other.node.file, line=other.node.line))
    specs: list[ServiceSpec] = []
    for doc in docs:
        try:
            specs.append(from_sloth(doc, chosen))
        except SpecError as exc:
            errors.append(exc)
    if errors:
        raise SpecErrors(errors)
    read = {spec.source for spec in specs}
    if specs and chosen is not None:
        read |= {w.node.file for w in windows}
    return specs, read


def from_sloth(doc: Node, windows: Windows | None = None) -> ServiceSpec:
    """One Sloth service (either form); ``windows`` from an ``AlertWindows`` document, else Sloth's defaults."""
    notes = Notes()
    raw = doc.value if isinstance(doc.value, dict) else {}
    spelling = Spelling(camel="apiVersion" in raw)
    if spelling.camel:
        items = doc.mapping({"apiVersion", "kind", "metadata", "spec"}, required=("apiVersion", "kind", "spec"))
        body = items["spec"]
        refuse_plugins(body, spelling)
        if "metadata" in items:
            notes.dropped(items["metadata"], "the resource's Kubernetes metadata (name, namespace, labels) places "
                                             "Sloth's PrometheusServiceLevel; forge-slo names its rules after the "
                                             "service")
        fields = body.mapping({"service", "labels", spelling("slo_plugins"), "slos"}, required=("service", "slos"))
    else:
        body = doc
        refuse_plugins(body, spelling)
        fields = body.mapping({"version", "service", "labels", "slo_plugins", "slos"}, required=("service", "slos"))
    service = parse_name(fields["service"])
    period = windows.period if windows is not None else DEFAULT_PERIOD
    slos: list[SLO] = []
    names: set[str] = set()
    for entry in fields["slos"].sequence():
        slos.append(_slo(entry, spelling, names, period, windows, notes))
    if not slos:
        fields["slos"].fail("must list at least one SLO")
    page, ticket = default_policies(period)
    return ServiceSpec(
        service=service, preset=CUSTOM, period_seconds=period, slos=tuple(slos), page=page, ticket=ticket,
        labels=frozen_map(parse_labels(fields["labels"]) if "labels" in fields else {}), source=doc.file,
        source_format=f"sloth/{K8S_KIND}" if spelling.camel else "sloth/prometheus-v1",
        warnings=tuple(notes.items),
    )


def refuse_plugins(body: Node, spelling: Spelling) -> None:
    """Fail at the first plugin field of a Sloth service (service-wide, per SLO, or an SLI plugin)."""
    fields = body.value if isinstance(body.value, dict) else {}
    candidates = [fields.get(spelling("slo_plugins"))]
    slos = fields.get("slos")
    for entry in slos.value if slos is not None and isinstance(slos.value, list) else []:
        slo = entry.value if isinstance(entry.value, dict) else {}
        candidates.append(slo.get("plugins"))
        sli = slo.get("sli")
        if sli is not None and isinstance(sli.value, dict):
            candidates.append(sli.value.get("plugin"))
    for node in candidates:
        if node is not None:
            ids = _plugin_ids(node)
            what = (f"plugin {ids[0]!r} is" if len(ids) == 1 else
                    f"plugins {', '.join(repr(i) for i in ids)} are" if ids else "a plugin is")
            node.fail(f"Sloth plugins cannot be imported: {what} Go code that Sloth runs while it writes the "
                      "rules, so what it would generate is not in the spec; forge-slo writes its own recording and "
                      "alert rules: remove the plugin, and give an 'events' or 'raw' SLI")


def _plugin_ids(node: Node) -> list[str]:
    value = node.plain()
    ids: list[str] = []
    if isinstance(value, dict):
        if isinstance(value.get("id"), str):
            ids.append(value["id"])
        chain = value.get("chain")
        for step in chain if isinstance(chain, list) else []:
            if isinstance(step, dict) and isinstance(step.get("id"), str):
                ids.append(step["id"])
    return list(dict.fromkeys(ids))


def _slo(entry: Node, spelling: Spelling, names: set[str], period: float, windows: Windows | None,
         notes: Notes) -> SLO:
    items = entry.mapping({"name", "objective", "description", "plugins", "sli", "alerting", "labels"},
                          required=("name", "objective", "sli"))
    name, objective = parse_slo_identity(items, names)
    alerting = items["alerting"].mapping(
        {"name", "labels", "annotations", spelling("page_alert"), spelling("ticket_alert")}) \
        if "alerting" in items else {}
    labels = parse_labels(alerting["labels"]) if "labels" in alerting else {}
    annotations = parse_annotations(alerting["annotations"]) if "annotations" in alerting else {}
    page, ticket = default_policies(period)
    if windows is not None:
        page, ticket = replace(page, windows=windows.page), replace(ticket, windows=windows.ticket)
    slo = SLO(
        name=name,
        objective_percent=objective,
        sli=_sli(items["sli"], spelling),
        description=items["description"].string(non_empty=False) if "description" in items else "",
        labels=frozen_map(parse_labels(items["labels"]) if "labels" in items else {}),
        alert_name=parse_alert_name(alerting["name"]) if "name" in alerting else "",
    )
    policies = (_policy(alerting.get(spelling("page_alert")), page, labels, annotations),
                _policy(alerting.get(spelling("ticket_alert")), ticket, labels, annotations))
    explicit = {PAGE, TICKET} if windows is not None else set()
    return slo_with_policies(slo, policies, explicit=explicit, where_node=items["objective"], notes=notes)


def _policy(node: Node | None, base: AlertPolicy, labels: dict[str, str], annotations: dict[str, str]) -> AlertPolicy:
    """One severity's policy: the SLO's alert labels and annotations, then the severity's own."""
    items = node.mapping({"disable", "labels", "annotations"}) if node is not None else {}
    own_labels = {**labels, **(parse_labels(items["labels"]) if "labels" in items else {})}
    own_annotations = {**annotations, **(parse_annotations(items["annotations"]) if "annotations" in items else {})}
    return replace(base, labels=frozen_map(own_labels), annotations=frozen_map(own_annotations),
                   enabled=not items["disable"].boolean() if "disable" in items else True)


def _sli(node: Node, spelling: Spelling) -> RatioSLI:
    items = node.mapping({"events", "raw", "plugin"})
    if len(items) != 1:
        node.fail("give exactly one of 'events' or 'raw'")
    if "events" in items:
        error, total = spelling("error_query"), spelling("total_query")
        events = items["events"].mapping({error, total}, required=(error, total))
        return RatioSLI(total=_query(events[total]), errors=_query(events[error]))
    key = spelling("error_ratio_query")
    ratio = _query(items["raw"].mapping({key}, required=(key,))[key])
    # A raw SLI is an error ratio with no traffic behind it: every evaluation is one event, so the period SLI
    # is the average of the shortest window's ratios (exact while traffic is steady; see the README).
    return RatioSLI(total=f"({ratio}) * 0 + 1", errors=ratio)


def _query(node: Node) -> str:
    query = windowed(node)
    if query is None:
        node.fail("the query must contain Sloth's {{.window}} placeholder")
    return query


def parse_windows(doc: Node) -> Windows:
    """An ``AlertWindows`` document: ``sloPeriod`` and the quick and slow windows of page and ticket alerts."""
    items = doc.mapping({"apiVersion", "kind", "metadata", "spec"}, required=("apiVersion", "kind", "spec"))
    spec = items["spec"].mapping({"sloPeriod", "page", "ticket"}, required=("sloPeriod", "page", "ticket"))
    period = duration(spec["sloPeriod"])

    def severity(node: Node) -> tuple[BurnWindow, ...]:
        speeds = node.mapping({"quick", "slow"}, required=("quick", "slow"))
        out = []
        for speed in ("quick", "slow"):
            window = speeds[speed].mapping({"errorBudgetPercent", "shortWindow", "longWindow"},
                                           required=("errorBudgetPercent", "shortWindow", "longWindow"))
            out.append(budget_window(speeds[speed], duration(window["longWindow"]), duration(window["shortWindow"]),
                                     window["errorBudgetPercent"].number(), period))
        return tuple(out)

    return Windows(period, severity(spec["page"]), severity(spec["ticket"]), doc)
