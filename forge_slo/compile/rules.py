"""Prometheus rules for a service: SLI recordings, SLO metadata, burn-rate and absent-metrics alerts.

Pure functions from a spec to plain data; writing files is the CLI's job.
"""

from __future__ import annotations

from typing import Any

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.compile.sli import sli_queries
from forge_slo.durations import format_duration
from forge_slo.spec.model import SLO, AlertPolicy, BurnWindow, ServiceSpec

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


def rule_groups(spec: ServiceSpec) -> list[dict[str, Any]]:
    """One rule group per SLO: recordings first, then alerts, so alerts read this evaluation's values."""
    return [{"name": f"forge-slo:{spec.service}:{slo.name}", "rules": slo_rules(spec, slo)} for slo in spec.slos]


def slo_rules(spec: ServiceSpec, slo: SLO) -> list[Rule]:
    return sli_recordings(spec, slo) + metadata_recordings(spec, slo) + alerts(spec, slo)


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


def _group_text(spec: ServiceSpec) -> str:
    """`` for model_name={{ $labels.model_name }}`` naming the group an alert is about."""
    if not spec.group_by:
        return ""
    return " for " + ", ".join(f"{label}={{{{ $labels.{label} }}}}" for label in spec.group_by)


def _safe(text: str) -> str:
    """Spec text placed in an annotation: template braces are shown, never executed."""
    return text.replace("{{", "{{`{{`}}")


def burn_annotations(spec: ServiceSpec, slo: SLO, policy: AlertPolicy, window: BurnWindow) -> dict[str, str]:
    long_w, short_w = format_duration(window.long_seconds), format_duration(window.short_seconds)
    period = format_duration(spec.period_seconds)
    factor = promql.number(window.factor)
    budget_spent = window.factor * window.long_seconds / spec.period_seconds
    objective = promql.number(slo.objective_percent)
    annotations = {
        "summary": (f"{spec.service} SLO {slo.name} ({objective}% over {period}) is burning its error budget "
                    f"{{{{ $value | printf \"%.1f\" }}}}x as fast as allowed{_group_text(spec)}"),
        "description": (
            f"Over the last {long_w} (confirmed by the last {short_w}) the error ratio of {slo.name} was "
            f"{{{{ $value | printf \"%.1f\" }}}} times what the {objective}% objective allows. The {policy.severity} "
            f"threshold is {factor}x: at that rate {budget_spent:.0%} of the {period} error budget is gone within "
            f"{long_w}." + (f" SLO: {_safe(slo.description)}" if slo.description else "")),
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
    for policy in spec.policies:
        for window in policy.windows:
            rule: Rule = {"alert": name, "expr": burn_alert_expr(spec, slo, window)}
            if policy.for_seconds > 0:
                rule["for"] = format_duration(policy.for_seconds)
            rule["labels"] = literal_labels(alert_labels(spec, slo, policy, window))
            rule["annotations"] = burn_annotations(spec, slo, policy, window)
            rules.append(rule)
    rules.append(absent_alert(spec, slo))
    return rules


def literal_labels(labels: dict[str, str]) -> dict[str, str]:
    """Prometheus expands templates in alert labels too: spec values must come out as written."""
    return {k: _safe(v) for k, v in labels.items()}


def absent_labels(spec: ServiceSpec, slo: SLO) -> dict[str, str]:
    labels = slo_labels(spec, slo)
    labels.update(spec.ticket.labels)
    labels[cv.SEVERITY_LABEL] = "ticket"
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
