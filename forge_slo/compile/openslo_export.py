"""``forge-slo export --format openslo``: OpenSLO v1 documents for forge-slo specs.

Per service, one file: a ``Service`` document and one ``SLO`` document per SLO with its indicator inline (the
SLI's bad/total or good/total queries, Sloth's ``{{.window}}`` where the rate window goes, as Sloth's OpenSLO
reader takes them), its rolling period, its objective and its page and ticket burn-rate windows as alert
policies. What OpenSLO has no field for is kept in ``forge-slo.dev/*`` annotations, so importing the files back
compiles to the same rules. Pure: specs in, file texts out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from forge_slo import promql
from forge_slo.compile import yamlout
from forge_slo.compile.artifact import header
from forge_slo.compile.sli import sli_queries
from forge_slo.durations import format_duration
from forge_slo.spec.importers.openslo import (
    ABSENT_FOR,
    ALERT_NAME,
    GROUP_BY,
    MIN_EVENTS,
    SHORT_WINDOW,
    SLI_KIND,
    V1,
)
from forge_slo.spec.model import SLO, AlertPolicy, RatioSLI, ServiceSpec

SLOTH_WINDOW = "{{.window}}"


@dataclass
class Exported:
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def export_openslo(specs: Sequence[ServiceSpec]) -> Exported:
    """``<service>.openslo.yaml`` for each spec, and warnings for what OpenSLO cannot hold."""
    out = Exported()
    for spec in specs:
        docs = [service_document(spec)] + [slo_document(spec, slo) for slo in spec.slos]
        text = yamlout.dump(docs[0], header(spec) + "\nOpenSLO v1, written by forge-slo export --format openslo.")
        text += "".join("---\n" + yamlout.dump(doc) for doc in docs[1:])
        out.files[f"{spec.service}.openslo.yaml"] = text
        if spec.gpu is not None:
            out.warnings.append(f"{spec.service}: the gpu section is not exported: OpenSLO has no GPU fleet (its "
                                "health alerts and cost recordings stay in the forge-slo spec)")
    return out


def shorthand(seconds: float) -> str:
    """A duration in OpenSLO's one-unit shorthand where it has one (``90m``, ``28d``)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return format_duration(seconds)


def _labels(labels: dict[str, str] | Any) -> dict[str, list[str]]:
    return {key: [value] for key, value in sorted(dict(labels).items())}


def service_document(spec: ServiceSpec) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": spec.service}
    if spec.labels:
        meta["labels"] = _labels(spec.labels)
    return {"apiVersion": V1, "kind": "Service", "metadata": meta, "spec": {"description": spec.description}}


def _metric(query: str) -> dict[str, Any]:
    text = query.replace(promql.WINDOW_PLACEHOLDER, SLOTH_WINDOW)
    return {"metricSource": {"type": "Prometheus", "spec": {"query": text}}}


def _ratio(spec: ServiceSpec, slo: SLO) -> dict[str, Any]:
    sli = slo.sli
    if isinstance(sli, RatioSLI) and sli.good is not None:
        return {"counter": True, "good": _metric(sli.good), "total": _metric(sli.total)}
    queries = sli_queries(spec, slo)
    return {"counter": True, "bad": _metric(queries.errors), "total": _metric(queries.total)}


def slo_document(spec: ServiceSpec, slo: SLO) -> dict[str, Any]:
    annotations = {SLI_KIND: slo.sli.kind, MIN_EVENTS: promql.number(spec.min_events),
                   ABSENT_FOR: format_duration(spec.absent_for_seconds)}
    if spec.group_by:
        annotations[GROUP_BY] = ",".join(spec.group_by)
    if slo.alert_name:
        annotations[ALERT_NAME] = slo.alert_name
    meta: dict[str, Any] = {"name": slo.name}
    if slo.labels:
        meta["labels"] = _labels(slo.labels)
    meta["annotations"] = dict(sorted(annotations.items()))
    body: dict[str, Any] = {"description": slo.description, "service": spec.service,
                            "indicator": {"metadata": {"name": f"{slo.name}-sli"},
                                          "spec": {"ratioMetric": _ratio(spec, slo)}},
                            "timeWindow": [{"duration": shorthand(spec.period_seconds), "isRolling": True}],
                            "budgetingMethod": "Occurrences",
                            "objectives": [{"target": round(slo.objective_ratio, 12)}],
                            "alertPolicies": [_policy(slo, p) for p in spec.policies(slo)]}
    return {"apiVersion": V1, "kind": "SLO", "metadata": meta, "spec": body}


def _policy(slo: SLO, policy: AlertPolicy) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"{slo.name}-{policy.severity}"}
    if policy.labels:
        meta["labels"] = _labels(policy.labels)
    if policy.annotations:
        meta["annotations"] = dict(policy.annotations)
    conditions = []
    for window in policy.windows:
        condition: dict[str, Any] = {"kind": "burnrate", "op": "gt", "threshold": window.factor,
                                     "lookbackWindow": shorthand(window.long_seconds)}
        if policy.for_seconds > 0:
            condition["alertAfter"] = shorthand(policy.for_seconds)
        conditions.append({
            "kind": "AlertCondition",
            "metadata": {"name": f"{slo.name}-{policy.severity}-{shorthand(window.long_seconds)}",
                         "annotations": {SHORT_WINDOW: format_duration(window.short_seconds)}},
            "spec": {"severity": policy.severity, "condition": condition},
        })
    return {"kind": "AlertPolicy", "metadata": meta, "spec": {"alertWhenBreaching": True, "conditions": conditions}}
