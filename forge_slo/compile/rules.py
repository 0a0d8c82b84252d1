"""Prometheus rules for a service: SLI recordings, SLO metadata, burn-rate and absent-metrics alerts.

Pure functions from a spec to plain data; writing files is the CLI's job. One set of rules, laid out for the
engine that evaluates it (``--format``): Prometheus rule files (also what vmalert loads), prometheus-operator
PrometheusRule resources, Thanos ruler files (``partial_response_strategy``) and Mimir/Cortex ruler files
(``mimirtool rules load``: a namespace per service). Groups hold at most ``RuleGroups.max_rules`` rules (Mimir's
default limit is 20), split where one kind of rule ends and the next begins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from forge_slo import conventions as cv
from forge_slo import gotemplate, promql
from forge_slo.compile import kubernetes, yamlout
from forge_slo.compile.artifact import header
from forge_slo.compile.producer import CompileOptions, Produced, Producer, RuleGroups
from forge_slo.compile.sli import grouped_by, sli_queries
from forge_slo.durations import format_duration
from forge_slo.spec.model import SLO, AlertPolicy, BurnWindow, GpuPool, LatencySLI, ServiceSpec

Rule = dict[str, Any]


def slo_labels(spec: ServiceSpec, slo: SLO) -> dict[str, str]:
    """Labels on every series and alert of one SLO: ours, then the spec's, then the SLO's own."""
    labels = {cv.SERVICE_LABEL: spec.service, cv.SLO_LABEL: slo.name}
    labels.update(spec.labels)
    labels.update(slo.labels)
    return dict(sorted(labels.items()))


def burn_alert_name(spec: ServiceSpec, slo: SLO) -> str:
    return slo.alert_name or cv.burn_alert_name(spec.service, slo.name)


def absent_alert_name(spec: ServiceSpec, slo: SLO) -> str:
    return f"{slo.alert_name}SLIAbsent" if slo.alert_name else cv.absent_alert_name(spec.service, slo.name)


def slo_selector(spec: ServiceSpec, slo: SLO) -> dict[str, str]:
    """Matchers that pick one SLO's recorded series."""
    return {cv.SERVICE_LABEL: spec.service, cv.SLO_LABEL: slo.name}


def rule_groups(spec: ServiceSpec, options: RuleGroups | None = None) -> list[dict[str, Any]]:
    """The rule groups of one SLO after another: recordings first, then alerts, so alerts read this
    evaluation's values (within a group; across a split, at worst the previous evaluation's).

    A spec with a ``gpu`` section gets one more: GPU health alerts and the fleet's cost recordings.
    """
    options = options or RuleGroups()
    groups: list[dict[str, Any]] = []
    for slo in spec.slos:
        groups.extend(split_group(f"forge-slo:{spec.service}:{slo.name}", slo_layers(spec, slo), options))
    if spec.gpu is not None:
        groups.extend(split_group(f"forge-slo:{spec.service}:gpu", [gpu_rules(spec, spec.gpu)], options))
    return groups


def split_group(name: str, layers: list[list[Rule]], options: RuleGroups) -> list[dict[str, Any]]:
    """Layers of rules (each reading the ones before) packed into groups of at most ``max_rules``: a layer
    stays whole where it fits, and a layer larger than a group is cut in order. The first group keeps
    ``name``; the others are ``name:2``, ``name:3``..."""
    limit = options.max_rules or sum(len(layer) for layer in layers) or 1
    chunks: list[list[Rule]] = [[]]
    for layer in layers:
        if chunks[-1] and len(chunks[-1]) + len(layer) > limit:
            chunks.append([])
        for rule in layer:
            if len(chunks[-1]) == limit:
                chunks.append([])
            chunks[-1].append(rule)
    return [group_entry(name if i == 0 else f"{name}:{i + 1}", rules, options)
            for i, rules in enumerate(c for c in chunks if c)]


def group_entry(name: str, rules: list[Rule], options: RuleGroups) -> dict[str, Any]:
    group: dict[str, Any] = {"name": name}
    if options.interval_seconds is not None:
        group["interval"] = format_duration(options.interval_seconds)
    if options.limit is not None:
        group["limit"] = options.limit
    if options.query_offset_seconds is not None:
        group["query_offset"] = format_duration(options.query_offset_seconds)
    group["rules"] = rules
    return group


def slo_layers(spec: ServiceSpec, slo: SLO) -> list[list[Rule]]:
    """An SLO's rules in the order they read each other: SLI recordings, metadata, alerts."""
    return [sli_recordings(spec, slo), metadata_recordings(spec, slo), alerts(spec, slo)]


def slo_rules(spec: ServiceSpec, slo: SLO) -> list[Rule]:
    return [rule for layer in slo_layers(spec, slo) for rule in layer]


def _record(name: str, expr: str, labels: dict[str, str]) -> Rule:
    return {"record": name, "expr": expr, "labels": labels}


def sli_recordings(spec: ServiceSpec, slo: SLO) -> list[Rule]:
    queries = sli_queries(spec, slo)
    labels = slo_labels(spec, slo)
    base = spec.base_window_seconds
    rules: list[Rule] = []
    for seconds in spec.windows_seconds() or [base]:
        window = format_duration(seconds)
        rules.append(_record(cv.request_rate(seconds), queries.total_over(window), labels))
        if seconds == base:
            rules.append(_record(cv.error_rate(seconds), queries.errors_over(window), labels))
        rules.append(_record(
            cv.error_ratio(seconds), f"({queries.errors_over(window)}) / ({queries.total_over(window)})", labels))
    # The period SLI weights every moment by its traffic: a ratio of sums of the recorded base-window rates.
    # An average of ratios would let a quiet night with an incident count as much as a busy day.
    sel = slo_selector(spec, slo)
    period = format_duration(spec.period_seconds)
    rules.append(_record(
        cv.PERIOD_ERROR_RATIO,
        f"sum_over_time({promql.selector(cv.error_rate(base), sel)}[{period}])"
        f" / sum_over_time({promql.selector(cv.request_rate(base), sel)}[{period}])",
        labels,
    ))
    return rules


def metadata_recordings(spec: ServiceSpec, slo: SLO) -> list[Rule]:
    labels = slo_labels(spec, slo)
    sel = slo_selector(spec, slo)
    budget = promql.number(slo.error_budget_ratio)
    info_labels = dict(labels)
    info_labels.update({
        cv.OBJECTIVE_LABEL: promql.number(slo.objective_percent),
        cv.PERIOD_LABEL: format_duration(spec.period_seconds),
        cv.SLI_KIND_LABEL: slo.sli.kind,
    })
    return [
        _record(cv.OBJECTIVE, f"vector({promql.number(slo.objective_ratio)})", labels),
        _record(cv.ERROR_BUDGET, f"vector({budget})", labels),
        _record(cv.INFO, "vector(1)", dict(sorted(info_labels.items()))),
        _record(cv.CURRENT_BURN_RATE,
                f"{promql.selector(cv.error_ratio(spec.base_window_seconds), sel)} / {budget}", labels),
        _record(cv.PERIOD_BURN_RATE, f"{promql.selector(cv.PERIOD_ERROR_RATIO, sel)} / {budget}", labels),
        _record(cv.ERROR_BUDGET_REMAINING, f"1 - {promql.selector(cv.PERIOD_BURN_RATE, sel)}", labels),
    ]


def burn_alert_expr(spec: ServiceSpec, slo: SLO, window: BurnWindow) -> str:
    """True while both windows burn faster than the factor; its value is the long window's burn rate."""
    sel = slo_selector(spec, slo)
    budget = promql.number(slo.error_budget_ratio)
    factor = promql.number(window.factor)
    parts = [
        f"{promql.selector(cv.error_ratio(window.long_seconds), sel)} / {budget} > {factor}",
        f"{promql.selector(cv.error_ratio(window.short_seconds), sel)} / {budget} > {factor}",
    ]
    if spec.min_events > 0:
        # Guard: a lone failure among a handful of requests is no emergency.
        parts.append(f"{promql.selector(cv.request_rate(window.long_seconds), sel)} * "
                     f"{promql.number(window.long_seconds)} >= {promql.number(spec.min_events)}")
    return " and ".join(parts)


def alert_labels(spec: ServiceSpec, slo: SLO, policy: AlertPolicy, window: BurnWindow) -> dict[str, str]:
    labels = slo_labels(spec, slo)
    labels.update(policy.labels)
    labels.update({
        cv.SEVERITY_LABEL: policy.severity,
        cv.LONG_WINDOW_LABEL: format_duration(window.long_seconds),
        cv.SHORT_WINDOW_LABEL: format_duration(window.short_seconds),
    })
    return dict(sorted(labels.items()))


def _group_text(spec: ServiceSpec, slo: SLO) -> str:
    """`` for model_name={{ $labels.model_name }}`` naming the group an alert is about."""
    labels = grouped_by(spec, slo)
    if not labels:
        return ""
    return " for " + ", ".join(f"{label}={{{{ $labels.{label} }}}}" for label in labels)


def burn_annotations(spec: ServiceSpec, slo: SLO, policy: AlertPolicy, window: BurnWindow) -> dict[str, str]:
    long_w, short_w = format_duration(window.long_seconds), format_duration(window.short_seconds)
    period = format_duration(spec.period_seconds)
    factor = promql.number(window.factor)
    budget_spent = window.factor * window.long_seconds / spec.period_seconds
    objective = promql.number(slo.objective_percent)
    annotations = {
        "summary": (f"{spec.service} SLO {slo.name} ({objective}% over {period}) is burning its error budget "
                    f"{{{{ $value | printf \"%.1f\" }}}}x as fast as allowed{_group_text(spec, slo)}"),
        "description": (
            f"Over the last {long_w} (confirmed by the last {short_w}) the error ratio of {slo.name} was "
            f"{{{{ $value | printf \"%.1f\" }}}} times what the {objective}% objective allows. The {policy.severity} "
            f"threshold is {factor}x: at that rate {budget_spent:.0%} of the {period} error budget is gone within "
            f"{long_w}." + (f" SLO: {gotemplate.literal(slo.description)}" if slo.description else "")),
        "action": (
            f"Open the {spec.service} dashboard: find which {' and '.join(spec.group_by) or 'part of the service'} "
            "burns and whether errors, latency or traffic changed; if a deploy or config change lines up, roll it "
            "back; if the server is saturated (queue, KV cache), add capacity or shed load."),
    }
    annotations.update(policy.annotations)
    return annotations


def alerts(spec: ServiceSpec, slo: SLO) -> list[Rule]:
    rules: list[Rule] = []
    name = burn_alert_name(spec, slo)
    for policy in spec.policies(slo):
        for window in policy.windows:
            rule: Rule = {"alert": name, "expr": burn_alert_expr(spec, slo, window)}
            if policy.for_seconds > 0:
                rule["for"] = format_duration(policy.for_seconds)
            rule["labels"] = literal_labels(alert_labels(spec, slo, policy, window))
            rule["annotations"] = burn_annotations(spec, slo, policy, window)
            rules.append(rule)
    if rules:  # an SLO whose alerts are all disabled raises none, not even the absent alert
        rules.append(absent_alert(spec, slo))
    return rules


def literal_labels(labels: dict[str, str]) -> dict[str, str]:
    """Prometheus expands templates in alert labels too: spec values must come out as written."""
    return {k: gotemplate.literal(v) for k, v in labels.items()}


def absent_policy(spec: ServiceSpec, slo: SLO) -> AlertPolicy:
    """Where the absent alert goes: with the ticket, or with the page when tickets are disabled."""
    page, ticket = spec.page_and_ticket(slo)
    return ticket if ticket.enabled or not page.enabled else page


def absent_labels(spec: ServiceSpec, slo: SLO) -> dict[str, str]:
    policy = absent_policy(spec, slo)
    labels = slo_labels(spec, slo)
    labels.update(policy.labels)
    labels[cv.SEVERITY_LABEL] = policy.severity
    return dict(sorted(labels.items()))


def absent_alert(spec: ServiceSpec, slo: SLO) -> Rule:
    base = spec.base_window_seconds
    return {
        "alert": absent_alert_name(spec, slo),
        "expr": f"absent({promql.selector(cv.request_rate(base), slo_selector(spec, slo))})",
        "for": format_duration(spec.absent_for_seconds),
        "labels": literal_labels(absent_labels(spec, slo)),
        "annotations": {
            "summary": f"{spec.service} SLO {slo.name} has no data: its SLI cannot be computed",
            "description": (f"The recording {cv.request_rate(base)} for {spec.service}/{slo.name} has been empty for "
                            f"{format_duration(spec.absent_for_seconds)}: the metrics it reads are missing, so "
                            "burn-rate alerts for this SLO cannot fire."),
            "action": ("Check that Prometheus scrapes the service (targets page, up == 1), that the metric names and "
                       "the selector in the spec match what the server exports, and that the server runs."),
        },
    }


# GPU fleet ------------------------------------------------------------------------------------------------

XID = "DCGM_FI_DEV_XID_ERRORS"
ECC_DBE = "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"
CLOCK_EVENTS = ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")  # new and old name
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
_GPU_WHERE = "GPU {{ $labels.gpu }} ({{ $labels.UUID }}) on {{ $labels.hostname }}{{ $labels.Hostname }}"


def gpu_alert_labels(spec: ServiceSpec, policy: AlertPolicy) -> dict[str, str]:
    labels = {cv.SERVICE_LABEL: spec.service, **spec.labels, **policy.labels, cv.SEVERITY_LABEL: policy.severity}
    return dict(sorted(labels.items()))


def gpu_alerts(spec: ServiceSpec, gpu: GpuPool) -> list[Rule]:
    sel = gpu.selector
    codes = "|".join(str(c) for c in gpu.critical_xids)
    xid = promql.selector(XID, sel, [f"err_code=~{promql.quote(codes)}"])
    # increase() sees codes whose series existed at 0 before the error (forge-slo's exporter writes them);
    # the second half catches a code whose series appears with the error, as dcgm-exporter writes it.
    xid_expr = f"increase({xid}[5m]) > 0 or ({xid} > 0 unless {xid} offset 5m)"
    thermal = " or ".join(f"floor({promql.selector(m, sel)} / 32) % 4 > 0" for m in CLOCK_EVENTS)
    page, ticket = gpu_alert_labels(spec, spec.page), gpu_alert_labels(spec, spec.ticket)
    return [
        {"alert": cv.GPU_XID_ALERT, "expr": xid_expr, "labels": literal_labels(page), "annotations": {
            "summary": f"{_GPU_WHERE} reported XID {{{{ $labels.err_code }}}}",
            "description": ("A critical XID (" + ", ".join(str(c) for c in gpu.critical_xids) + ") means the GPU "
                            "needs attention now: 79 fallen off the bus, 48/94/95 ECC errors, 63/64 row "
                            "remapping, 74 NVLink, 119/120 GSP."),
            "action": ("Drain the node's workloads; check nvidia-smi -q and the kernel log (dmesg | grep -i xid); "
                       "79 and uncontained ECC errors need a GPU reset or node reboot, repeated ones an RMA."),
        }},
        {"alert": cv.GPU_UNHEALTHY_ALERT, "expr": f"{promql.selector(cv.GPU_HEALTHY, sel)} == 0",
         "for": format_duration(gpu.unhealthy_for_seconds) if gpu.unhealthy_for_seconds else None,
         "labels": literal_labels(page), "annotations": {
            "summary": f"{_GPU_WHERE} is unhealthy ({{{{ $labels.reason }}}})",
            "description": ("The GPU exporter marks this GPU unhealthy: it stopped answering NVML (lost), or it "
                            "reported a critical XID, uncorrectable ECC errors or a row-remapping failure."),
            "action": "Cordon the node so no new work lands on it; drain, then reset or replace the GPU.",
        }},
        {"alert": cv.GPU_ECC_ALERT, "expr": f"increase({promql.selector(ECC_DBE, sel)}[10m]) > 0",
         "labels": literal_labels(page), "annotations": {
            "summary": f"{_GPU_WHERE} had uncorrectable (double-bit) ECC errors",
            "description": "Double-bit ECC errors corrupt data: the job on this GPU may have produced wrong results.",
            "action": "Drain the GPU; check retired pages and remapped rows (nvidia-smi -q -d ECC,ROW_REMAPPER).",
        }},
        {"alert": cv.GPU_THERMAL_ALERT, "expr": thermal,
         "for": format_duration(gpu.thermal_for_seconds) if gpu.thermal_for_seconds else None,
         "labels": literal_labels(ticket), "annotations": {
            "summary": f"{_GPU_WHERE} is throttling its clocks for heat",
            "description": ("The clock event reasons carry the software or hardware thermal slowdown bit (0x20 or "
                            "0x40): the GPU runs slower, and every collective it takes part in waits for it."),
            "action": "Check GPU and memory temperature, fans and airflow in the rack; compare with its neighbours.",
        }},
    ]


def cost_recordings(spec: ServiceSpec, gpu: GpuPool) -> list[Rule]:
    """GPU count, dollars per second, good tokens per second and dollars per million good tokens (1h)."""
    assert gpu.price_per_gpu_hour is not None and spec.preset.server.generation_tokens is not None
    labels = {cv.SERVICE_LABEL: spec.service, **spec.labels}
    svc = {cv.SERVICE_LABEL: spec.service}
    base = spec.base_window_seconds
    window = format_duration(base)
    g = spec.group_by
    tokens = promql.sum_by(g, promql.rate(promql.selector(spec.preset.server.generation_tokens, spec.selector),
                                          window))
    latency = [s.name for s in spec.slos if isinstance(s.sli, LatencySLI)]
    if latency:
        ratios = promql.selector(cv.error_ratio(base), svc,
                                 [f"{cv.SLO_LABEL}=~{promql.quote('|'.join(re.escape(n) for n in latency))}"])
        # Lower bound of the share of requests that met every latency SLO: 1 - the sum of the shares that
        # missed one (exact when misses never overlap, pessimistic otherwise).
        good = f"{tokens} * on({', '.join(g)}) group_left() clamp_min(1 - {promql.sum_by(g, ratios)}, 0)"
    else:
        good = tokens
    return [
        _record(cv.GPU_COUNT, f"count({promql.selector(GPU_UTIL, gpu.selector)})", labels),
        _record(cv.GPU_COST_RATE,
                f"{promql.selector(cv.GPU_COUNT, svc)} * {promql.number(gpu.price_per_gpu_hour)} / 3600", labels),
        _record(cv.GOOD_TOKENS_RATE, f"sum({good})", labels),
        _record(cv.COST_PER_MILLION_GOOD_TOKENS,
                f"sum_over_time({promql.selector(cv.GPU_COST_RATE, svc)}[1h]) / "
                f"sum_over_time({promql.selector(cv.GOOD_TOKENS_RATE, svc)}[1h]) * 1e6", labels),
    ]


def gpu_rules(spec: ServiceSpec, gpu: GpuPool) -> list[Rule]:
    rules = cost_recordings(spec, gpu) if gpu.price_per_gpu_hour is not None else []
    for alert in gpu_alerts(spec, gpu):
        if alert.get("for") is None:
            alert.pop("for", None)
        rules.append(alert)
    return rules


# Files ----------------------------------------------------------------------------------------------------

def rules_document(spec: ServiceSpec, options: RuleGroups | None = None) -> dict[str, Any]:
    """A Prometheus rule file: ``{"groups": [...]}`` (vmalert loads the same file)."""
    return {"groups": rule_groups(spec, options)}


def operator_document(spec: ServiceSpec, options: RuleGroups | None = None) -> dict[str, Any]:
    """The same rules as a prometheus-operator PrometheusRule custom resource, with Kubernetes metadata the API
    server accepts (what sanitising changed is kept in annotations)."""
    labels = {"app.kubernetes.io/managed-by": "forge-slo", **dict(spec.labels)}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": kubernetes.metadata("forge-slo", spec.service, labels),
        "spec": rules_document(spec, options),
    }


# Thanos' ruler: what a group does when a store answers only in part. Abort: an alert neither fires nor resolves
# on part of the data.
PARTIAL_RESPONSE_STRATEGY = "abort"


def thanos_document(spec: ServiceSpec, options: RuleGroups | None = None) -> dict[str, Any]:
    """A Thanos ruler file: Prometheus' groups, each with ``partial_response_strategy``."""
    groups = [{**group, "partial_response_strategy": PARTIAL_RESPONSE_STRATEGY} for group in rule_groups(spec, options)]
    return {"groups": groups}


def mimir_document(spec: ServiceSpec, options: RuleGroups | None = None) -> dict[str, Any]:
    """A Mimir/Cortex ruler file as ``mimirtool rules load`` takes it: the service's namespace and its groups."""
    return {"namespace": spec.service, "groups": rule_groups(spec, options)}


DOCUMENTS = {"prometheus": rules_document, "prometheus-operator": operator_document, "thanos": thanos_document,
             "mimir": mimir_document}


def rules_file(spec: ServiceSpec) -> str:
    """The rule file's name in the producer's folder."""
    return f"{spec.service}.rules.yaml"


def produce(specs: Sequence[ServiceSpec], options: CompileOptions) -> Produced:
    document = DOCUMENTS[options.format]
    return Produced({rules_file(spec): yamlout.dump(document(spec, options.groups), header(spec)) for spec in specs})


PRODUCER = Producer(
    name="rules", folder="prometheus", description="Prometheus recording rules and burn-rate alerts",
    produce=produce, optional=False,
    formats={"prometheus": "plain Prometheus rule files (vmalert loads them too)",
             "prometheus-operator": "PrometheusRule custom resources for the prometheus-operator",
             "thanos": "Thanos ruler files (groups with partial_response_strategy: abort)",
             "mimir": "Mimir/Cortex ruler files for mimirtool rules load (a namespace per service)"},
)
