"""Grafana dashboards for SLO specs: one per service and an overview of every SLO.

The dashboards are described here with the project's own small frozen dataclasses, built by pure functions
from a :class:`ServiceSpec`. :mod:`forge_slo.compile.grafana_sdk` turns them into Grafana's JSON; it is the
only module that knows the Grafana SDK. Every recorded series a panel reads is named by
:mod:`forge_slo.conventions`, and every query is built with :mod:`forge_slo.promql`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.compile.artifact import GENERATED_MARK
from forge_slo.compile.dashboard_model import (
    DATASOURCE_TYPE,
    DATASOURCE_VAR,
    GRID_WIDTH,
    Column,
    Dashboard,
    GridPos,
    Link,
    Panel,
    PanelKind,
    Row,
    SeriesStyle,
    Step,
    Target,
    Variable,
)
from forge_slo.compile.producer import CompileOptions, Produced, Producer
from forge_slo.durations import format_duration
from forge_slo.spec.model import PAGE, SLO, LatencySLI, ServiceSpec

TAG = "forge-slo"
OVERVIEW_UID = "forge-slo-overview"
RATE_INTERVAL = "$__rate_interval"
# Label the overview adds to its rows so each row links to its service dashboard.
DASHBOARD_LINK_LABEL = "dashboard"

RED, ORANGE, GREEN = "red", "orange", "green"


# Ids and names --------------------------------------------------------------------------------------------


def dashboard_uid(service: str) -> str:
    """A stable uid for a service's dashboard (Grafana allows at most 40 characters)."""
    return "forge-slo-" + hashlib.sha1(service.encode("utf-8"), usedforsecurity=False).hexdigest()[:12]


def dashboard_url(uid: str) -> str:
    return f"/d/{uid}"


def _variable_ref(name: str) -> str:
    return f"${name}"


def _group_legend(spec: ServiceSpec, prefix: str = "") -> str:
    parts = [f"{label}={{{{{label}}}}}" for label in spec.group_by]
    return " ".join(p for p in [prefix, *parts] if p) or prefix


def _variable_matchers(spec: ServiceSpec, lacks: Iterable[str] = (), allow_missing: bool = False,
                       ) -> list[str]:
    """``model_name=~"$model_name"`` for every group_by label the series carries.

    ``allow_missing`` also matches series without the label (the absent-metrics alert has no group labels).
    """
    skip = set(lacks)
    suffix = "|" if allow_missing else ""
    return [promql.regex_matcher(label, _variable_ref(label) + suffix)
            for label in spec.group_by if label not in skip]


def _recorded(spec: ServiceSpec, slo: SLO | None, name: str, grouped: bool = True) -> str:
    """A recorded series of one SLO (or of the whole service), narrowed to the selected groups.

    A ratio SLI's recordings carry only the labels its queries keep, so a series without a group label is
    kept whatever is selected rather than hidden.
    """
    matchers = {cv.SERVICE_LABEL: spec.service}
    if slo is not None:
        matchers[cv.SLO_LABEL] = slo.name
    return promql.selector(name, matchers, _variable_matchers(spec, allow_missing=True) if grouped else ())


def _raw(spec: ServiceSpec, metric: str, lacks: Iterable[str] = (), extra: Iterable[str] = ()) -> str:
    """A server metric with the spec's selector and the selected groups."""
    return promql.selector(metric, spec.selector, [*extra, *_variable_matchers(spec, lacks)])


def _rate(selector_text: str) -> str:
    return promql.rate(selector_text, RATE_INTERVAL)


def _percent(value: float) -> str:
    return f"{promql.number(value * 100)}%"


# Service dashboard ----------------------------------------------------------------------------------------

_H = 8  # panel height


def _panel(kind: PanelKind, title: str, description: str, unit: str, targets: Sequence[Target], width: int,
           **extra: Any) -> Panel:
    """A panel not yet placed: id and position are assigned by :func:`_layout`."""
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    numbered = tuple(dataclasses.replace(t, ref_id=refs[i]) for i, t in enumerate(targets))
    return Panel(id=0, kind=kind, title=title, description=description, unit=unit, targets=numbered,
                 grid=GridPos(0, 0, width, _H), **extra)


def _layout(sections: Sequence[tuple[str, Sequence[Panel]]]) -> tuple[Panel | Row, ...]:
    """Rows with their panels packed left to right, ids counted from 1 in order, positions explicit."""
    out: list[Panel | Row] = []
    next_id = 1
    y = 0
    for title, panels in sections:
        out.append(Row(id=next_id, title=title, y=y))
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in panels:
            if x + panel.grid.w > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            out.append(dataclasses.replace(panel, id=next_id, grid=GridPos(x, y, panel.grid.w, panel.grid.h)))
            next_id += 1
            x += panel.grid.w
            line_height = max(line_height, panel.grid.h)
        y += line_height
    return tuple(out)


def _slo_title(spec: ServiceSpec, slo: SLO) -> str:
    what = slo.sli.kind
    if isinstance(slo.sli, LatencySLI):
        what = f"{slo.sli.alias} under {promql.number(slo.sli.threshold_seconds)}s"
    return (f"SLO {slo.name}: {promql.number(slo.objective_percent)}% {what} over "
            f"{format_duration(spec.period_seconds)}")


def _burn_steps(spec: ServiceSpec, slo: SLO) -> tuple[Step, ...]:
    """Threshold steps at every alert factor: red where a page fires, orange where only a ticket does."""
    colours: dict[float, str] = {}
    for policy in spec.policies(slo):
        for window in policy.windows:
            if policy.severity == PAGE or colours.get(window.factor) != RED:
                colours[window.factor] = RED if policy.severity == PAGE else ORANGE
    return (Step(None, GREEN), *(Step(f, colours[f]) for f in sorted(colours)))


def _factors_text(spec: ServiceSpec, slo: SLO) -> str:
    parts = []
    for policy in spec.policies(slo):
        for w in policy.windows:
            parts.append(f"{policy.severity} {promql.number(w.factor)}x over "
                         f"{format_duration(w.long_seconds)} and {format_duration(w.short_seconds)}")
    return "; ".join(parts) if parts else "no alert windows are enabled"


def slo_panels(spec: ServiceSpec, slo: SLO) -> list[Panel]:
    """The panels of one SLO's row (not yet placed): SLI, budget, alerts, burn rates, burn-down, latency."""
    panels = [_sli_panel(spec, slo), *_budget_and_alert_stats(spec, slo), _burn_rate_panel(spec, slo),
              _burn_down_panel(spec, slo)]
    if isinstance(slo.sli, LatencySLI):
        panels.extend(_latency_panels(spec, slo, slo.sli))
    return panels


def _sli_panel(spec: ServiceSpec, slo: SLO) -> Panel:
    base = spec.base_window_seconds
    objective = _percent(slo.objective_ratio)
    return _panel(
        "timeseries", f"{slo.name}: SLI against objective",
        f"Share of good events of {slo.name} over the last {format_duration(base)} (1 - {cv.error_ratio(base)}), "
        f"with the {objective} objective as a dashed line ({cv.OBJECTIVE}). When the SLI is under the line the "
        "error budget is being spent faster than allowed: check the burn-rate panel and the errors and "
        "saturation rows to find what changed.",
        "percentunit",
        [Target(f"1 - {_recorded(spec, slo, cv.error_ratio(base))}", _group_legend(spec, "SLI") or "SLI"),
         Target(_recorded(spec, slo, cv.OBJECTIVE, grouped=False), "objective")],
        12,
        series=(SeriesStyle("objective", RED, dashed=True),),
    )


def _budget_and_alert_stats(spec: ServiceSpec, slo: SLO) -> list[Panel]:
    period = format_duration(spec.period_seconds)
    return [
        _panel(
            "stat", f"{slo.name}: error budget remaining",
            f"Share of the {period} error budget still unspent ({cv.ERROR_BUDGET_REMAINING}); the budget is "
            f"{_percent(slo.error_budget_ratio)} of events. Red: the budget is gone - freeze risky changes and "
            "put reliability work first. Orange: under a quarter left - be careful with deploys.",
            "percentunit",
            [Target(_recorded(spec, slo, cv.ERROR_BUDGET_REMAINING), _group_legend(spec) or "remaining",
                    instant=True)],
            6,
            steps=(Step(None, RED), Step(0.0, ORANGE), Step(0.25, GREEN)),
        ),
        _panel(
            "stat", f"{slo.name}: alerts firing",
            f"Burn-rate and missing-data alerts of {slo.name} firing now (ALERTS{{alertstate=\"firing\"}}), by "
            "severity. Red: an alert fires - follow its action annotation: find which group burns and whether "
            "errors, latency or traffic changed; roll back a change that lines up; add capacity if saturated.",
            "none",
            [Target(_alerts(spec, slo, severity) + " or vector(0)", severity, instant=True)
             for severity in ("page", "ticket")],
            6,
            steps=(Step(None, GREEN), Step(1.0, RED)),
        ),
    ]


def _burn_rate_panel(spec: ServiceSpec, slo: SLO) -> Panel:
    base = spec.base_window_seconds
    budget = promql.number(slo.error_budget_ratio)
    return _panel(
        "timeseries", f"{slo.name}: burn rate per alert window",
        f"How many times faster than allowed the error budget burns, over each alert window "
        f"({cv.error_ratio(base)} and the other windows, divided by the {budget} budget). Dashed lines are the "
        f"alert factors ({_factors_text(spec, slo)}); red lines page, orange ones open a ticket. A burn rate of 1 "
        "spends exactly the budget over the period. Above a line in both of its windows the alert fires: "
        "find the cause in the errors, latency and saturation panels.",
        "suffix:x",
        [Target(f"{_recorded(spec, slo, cv.error_ratio(w))} / {budget}", _group_legend(spec, format_duration(w)))
         for w in spec.windows_seconds() or [base]],
        12,
        steps=_burn_steps(spec, slo), threshold_style="dashed", min=0.0,
    )


def _burn_down_panel(spec: ServiceSpec, slo: SLO) -> Panel:
    period = format_duration(spec.period_seconds)
    return _panel(
        "timeseries", f"{slo.name}: error budget burn-down over {period}",
        f"Error budget remaining ({cv.ERROR_BUDGET_REMAINING}) over the {period} SLO period, so the slope "
        "shows how fast it is spent. Under the red line at 0 the SLO is breached for the period: stop risky "
        "changes until the budget recovers. Needs Prometheus to keep the period's data.",
        "percentunit",
        [Target(_recorded(spec, slo, cv.ERROR_BUDGET_REMAINING), _group_legend(spec) or "remaining")],
        12,
        steps=(Step(None, RED), Step(0.0, GREEN)), threshold_style="dashed", time_from=period,
    )


def _alerts(spec: ServiceSpec, slo: SLO, severity: str) -> str:
    matchers = {"alertstate": "firing", cv.SERVICE_LABEL: spec.service, cv.SLO_LABEL: slo.name,
                cv.SEVERITY_LABEL: severity}
    return f"count({promql.selector('ALERTS', matchers, _variable_matchers(spec, allow_missing=True))})"


def _latency_panels(spec: ServiceSpec, slo: SLO, sli: LatencySLI) -> list[Panel]:
    hist = sli.histogram
    buckets = _rate(_raw(spec, f"{hist.metric}_bucket"))
    by_le = ["le", *spec.group_by]
    scale = "" if hist.unit_seconds == 1 else f" * {promql.number(hist.unit_seconds)}"
    threshold = promql.number(sli.threshold_seconds)
    quantiles = [
        Target(f"histogram_quantile({q}, {promql.sum_by(by_le, buckets)}){scale}",
               _group_legend(spec, f"p{round(q * 100)}"))
        for q in (0.5, 0.9, 0.99)
    ]
    good = _rate(_raw(spec, f"{hist.metric}_bucket", extra=[promql.le_matcher(sli.bucket_bound)]))
    total = _rate(_raw(spec, f"{hist.metric}_count"))
    share = f"{promql.sum_by(spec.group_by, good)} / {promql.sum_by(spec.group_by, total)}"
    return [
        _panel(
            "timeseries", f"{slo.name}: {sli.alias} percentiles",
            f"p50, p90 and p99 of {hist.metric} (histogram_quantile over its buckets), with the SLO "
            "threshold of "
            f"{threshold}s as a dashed red line. Interpolated within buckets, so only a guide. When p99 "
            "crosses "
            "the line, look at queueing and KV-cache saturation and at the traffic mix (long prompts).",
            "s",
            quantiles,
            12,
            steps=(Step(None, GREEN), Step(sli.threshold_seconds, RED)), threshold_style="dashed", min=0.0,
        ),
        _panel(
            "timeseries", f"{slo.name}: share of events under {threshold}s",
            f"Share of {hist.metric} observations at or under the {threshold}s threshold (the SLI counted "
            f"exactly from the bucket le={promql.number(sli.bucket_bound)}). Under the dashed "
            f"{_percent(slo.objective_ratio)} "
            "objective line the budget burns: check saturation and recent changes.",
            "percentunit",
            [Target(share, _group_legend(spec, "under threshold"))],
            12,
            steps=(Step(None, RED), Step(slo.objective_ratio, GREEN)), threshold_style="dashed",
        ),
    ]


def traffic_panels(spec: ServiceSpec) -> list[Panel]:
    base = spec.base_window_seconds
    by = [cv.SLO_LABEL, *spec.group_by]
    panels = [
        _panel(
            "timeseries", "Events per second by SLO",
            f"Events each SLO's SLI counts per second ({cv.request_rate(base)}): requests, or token gaps for "
            "per-token latency SLOs. A sudden drop to zero means the server stopped or its metrics are no "
            "longer "
            "scraped; a spike explains a rise in latency or errors - shed load or add capacity.",
            "reqps",
            [Target(promql.sum_by(by, _recorded(spec, None, cv.request_rate(base))),
                    f"{{{{{cv.SLO_LABEL}}}}} " + _group_legend(spec))],
            12,
        )
    ]
    server = spec.preset.server
    if server.prompt_tokens and server.generation_tokens:
        panels.append(_panel(
            "timeseries", "Tokens per second",
            f"Prompt tokens read ({server.prompt_tokens}) and tokens generated "
            f"({server.generation_tokens}) per "
            "second. Long prompts raise time to first token; if latency SLOs are red while tokens/s is at "
            "its "
            "usual peak, the service needs more capacity.",
            "suffix: tok/s",
            [Target(promql.sum_by(spec.group_by, _rate(_raw(spec, server.prompt_tokens))),
                    _group_legend(spec, "prompt")),
             Target(promql.sum_by(spec.group_by, _rate(_raw(spec, server.generation_tokens))),
                    _group_legend(spec, "generation"))],
            12,
        ))
    return panels


def error_panels(spec: ServiceSpec) -> list[Panel]:
    base = spec.base_window_seconds
    by = [cv.SLO_LABEL, *spec.group_by]
    panels = [
        _panel(
            "timeseries", "Failed events per second by SLO",
            f"Events each SLO's SLI counts as bad, per second ({cv.error_rate(base)}). When it rises, the "
            "breakdowns next to it show whether the server fails, aborts or answers too slowly; roll back a "
            "change that lines up.",
            "reqps",
            [Target(promql.sum_by(by, _recorded(spec, None, cv.error_rate(base))),
                    f"{{{{{cv.SLO_LABEL}}}}} " + _group_legend(spec))],
            12,
        )
    ]
    server = spec.preset.server
    for breakdown in server.breakdowns:
        labels = [breakdown.label, *(g for g in spec.group_by if g not in breakdown.lacks)]
        panels.append(_panel(
            "timeseries", breakdown.title,
            f"{breakdown.metric} per second by {breakdown.label}. Red flags: 5xx, error or abort values "
            "growing - "
            "check the server logs and recent deploys; many aborts can also mean clients time out on slow "
            "answers.",
            "reqps",
            [Target(promql.sum_by(labels, _rate(_raw(spec, breakdown.metric, breakdown.lacks))),
                    " ".join(f"{label}={{{{{label}}}}}" for label in labels))],
            12,
        ))
    return panels


def saturation_panels(spec: ServiceSpec) -> list[Panel]:
    server = spec.preset.server
    panels = []
    pairs = (("running", server.running), ("waiting", server.waiting))
    queue = [(name, metric) for name, metric in pairs if metric]
    if queue:
        panels.append(_panel(
            "timeseries", "Requests running and waiting",
            "Requests being processed (" + ", ".join(m for n, m in queue) + ") summed over replicas. A "
            "waiting "
            "queue that keeps growing means the server is saturated: time to first token rises next - add "
            "replicas or shed load.",
            "short",
            [Target(promql.sum_by(spec.group_by, _raw(spec, metric)), _group_legend(spec, name))
             for name, metric in queue],
            12, min=0.0,
        ))
    if server.kv_cache_usage:
        panels.append(_panel(
            "timeseries", "KV-cache usage",
            f"Share of the KV cache in use ({server.kv_cache_usage}), the fullest replica. Near 100% the "
            "server "
            "preempts or queues requests and latency climbs: add replicas, lower max concurrency or shorten "
            "contexts.",
            "percentunit",
            [Target(_max_by(spec.group_by, _raw(spec, server.kv_cache_usage)), _group_legend(spec, "max"))],
            12,
            steps=(Step(None, GREEN), Step(0.9, ORANGE), Step(0.98, RED)), threshold_style="dashed",
            min=0.0, max=1.0,
        ))
    return panels


def gpu_panels(spec: ServiceSpec) -> list[Panel]:
    """The GPUs behind the service: utilization, health and, with a price, the cost per good token."""
    assert spec.gpu is not None
    sel = spec.gpu.selector
    svc = {cv.SERVICE_LABEL: spec.service}
    panels = [
        _panel("timeseries", "GPU utilization",
               "Average and lowest DCGM_FI_DEV_GPU_UTIL across the pool's GPUs. A pool that idles below its "
               "target wastes money; one GPU far below the rest in a training job is a straggler: check its "
               "clocks, temperature and XIDs.",
               "percent",
               [Target(f"avg({promql.selector('DCGM_FI_DEV_GPU_UTIL', sel)})", "average"),
                Target(f"min({promql.selector('DCGM_FI_DEV_GPU_UTIL', sel)})", "lowest GPU")],
               12, min=0.0, max=100.0),
        _panel("timeseries", "Unhealthy GPUs and critical XIDs",
               "GPUs the exporter marks unhealthy (forge_gpu_healthy == 0) and critical XIDs in the last 5 "
               "minutes. Any non-zero value is a GPU to drain: see the GpuUnhealthy and GpuXidCritical alerts.",
               "short",
               [Target(f"count({promql.selector(cv.GPU_HEALTHY, sel)} == 0) or vector(0)", "unhealthy GPUs"),
                Target(f"sum(increase({promql.selector('DCGM_FI_DEV_XID_ERRORS', sel, [_critical(spec)])}"
                       f"[{RATE_INTERVAL}])) or vector(0)", "critical XIDs")],
               12, min=0.0),
    ]
    if spec.gpu.price_per_gpu_hour is not None:
        panels.append(_panel(
            "timeseries", "Cost per million good tokens",
            f"GPU cost ({promql.number(spec.gpu.price_per_gpu_hour)} per GPU-hour x GPUs in the pool) over the "
            "last hour divided by the tokens of requests that met every latency SLO (a lower bound: generated "
            "tokens x (1 - the sum of the latency SLOs' error ratios)), per million. Rising means fewer good "
            "tokens for the same GPUs: look at latency SLOs and utilization.",
            "currencyUSD",
            [Target(promql.selector(cv.COST_PER_MILLION_GOOD_TOKENS, svc), "per million good tokens")],
            12, min=0.0))
        panels.append(_panel(
            "stat", "GPUs in the pool",
            "Number of GPUs reporting DCGM_FI_DEV_GPU_UTIL under the pool's selector. A drop means GPUs "
            "fell out (lost, drained, exporter down).",
            "short", [Target(promql.selector(cv.GPU_COUNT, svc), "GPUs", instant=True)], 12))
    return panels


def _critical(spec: ServiceSpec) -> str:
    assert spec.gpu is not None
    return "err_code=~" + promql.quote("|".join(str(c) for c in spec.gpu.critical_xids))


def _max_by(labels: Sequence[str], expr: str) -> str:
    return f"max {promql.by_clause(labels)} ({expr})" if labels else f"max({expr})"


def _variables(spec: ServiceSpec) -> tuple[Variable, ...]:
    ds = Variable(DATASOURCE_VAR, "Data source", "datasource", DATASOURCE_TYPE,
                  "Prometheus that evaluates the forge-slo rules of this service")
    source = promql.selector(cv.request_rate(spec.base_window_seconds), {cv.SERVICE_LABEL: spec.service})
    groups = tuple(
        Variable(label, label, "query", f"label_values({source}, {label})",
                 f"Values of {label} seen by the SLIs of {spec.service}")
        for label in spec.group_by
    )
    return (ds, *groups)


def service_dashboard(spec: ServiceSpec) -> Dashboard:
    """One service: a row per SLO, then traffic, errors and saturation."""
    sections: list[tuple[str, Sequence[Panel]]] = [
        (_slo_title(spec, slo), slo_panels(spec, slo)) for slo in spec.slos]
    sections.append(("Traffic", traffic_panels(spec)))
    sections.append(("Errors", error_panels(spec)))
    saturation = saturation_panels(spec)
    if saturation:
        sections.append(("Saturation", saturation))
    if spec.gpu is not None:
        sections.append(("GPU fleet", gpu_panels(spec)))
    description = spec.description or f"SLOs of {spec.service} ({spec.preset.title})"
    return Dashboard(
        uid=dashboard_uid(spec.service),
        title=f"forge-slo / {spec.service}",
        description=f"{description.rstrip('.')}. {GENERATED_MARK}; do not edit, change the spec and compile again.",
        tags=(TAG, f"service:{spec.service}"),
        variables=_variables(spec),
        panels=_layout(sections),
        links=(Link("SLO overview", dashboard_url(OVERVIEW_UID), "Every SLO of every service"),),
    )


# Overview -------------------------------------------------------------------------------------------------


def overview_dashboard(specs: Sequence[ServiceSpec]) -> Dashboard:
    """Every SLO of every service in one table, each row linking to its service dashboard."""
    services = sorted(s.service for s in specs)
    match = [promql.regex_matcher(cv.SERVICE_LABEL, promql.any_of_regex(services))] if services else []
    by = [cv.SERVICE_LABEL, cv.SLO_LABEL]

    def series(name: str) -> str:
        return promql.selector(name, extra=match)

    def with_link(expr: str) -> str:
        for service in services:
            expr = (f"label_replace({expr}, {promql.quote(DASHBOARD_LINK_LABEL)}, "
                    f"{promql.quote(dashboard_url(dashboard_uid(service)))}, "
                    f"{promql.quote(cv.SERVICE_LABEL)}, "
                    f"{promql.quote(re.escape(service))})")
        return expr

    alerts = promql.selector("ALERTS", {"alertstate": "firing"}, match)
    queries = [
        (f"100 * max {promql.by_clause(by)} ({series(cv.OBJECTIVE)})", "Objective (%)", ()),
        (f"100 * (1 - max {promql.by_clause(by)} ({series(cv.PERIOD_ERROR_RATIO)}))",
         "SLI over period (%)", ()),
        (f"100 * min {promql.by_clause(by)} ({series(cv.ERROR_BUDGET_REMAINING)})", "Budget remaining (%)",
         (Step(None, RED), Step(0.0, ORANGE), Step(25.0, GREEN))),
        (f"max {promql.by_clause(by)} ({series(cv.PERIOD_BURN_RATE)})", "Period burn rate (x)",
         (Step(None, GREEN), Step(0.75, ORANGE), Step(1.0, RED))),
        (f"count {promql.by_clause(by)} ({alerts})"
         f" or 0 * group {promql.by_clause(by)} ({series(cv.OBJECTIVE)})",
         "Alerts firing", (Step(None, GREEN), Step(1.0, RED))),
    ]
    refs = "ABCDE"
    targets = tuple(Target(with_link(expr), ref_id=refs[i], instant=True, table=True)
                    for i, (expr, _, _) in enumerate(queries))
    columns = (
        Column(cv.SERVICE_LABEL, "Service"),
        Column(cv.SLO_LABEL, "SLO"),
        *(Column(f"Value #{refs[i]}", title, steps) for i, (_, title, steps) in enumerate(queries)),
        Column(DASHBOARD_LINK_LABEL, "Dashboard"),
    )
    slo_count = sum(len(s.slos) for s in specs)
    table = Panel(
        id=1, kind="table", title="SLOs of every service",
        description=(
            "One row per SLO: its objective, the SLI over the SLO period so far, the error budget "
            "remaining, the "
            "period burn rate (1 spends exactly the budget) and the alerts firing. With group_by the worst "
            "group "
            "is shown. Red budget or burn rate: the SLO is breached for the period - open the service "
            "dashboard "
            "(click the row) and find what burns; red alerts: follow the alert's action. Values are "
            "percentages "
            "except the burn rate and the alert count."),
        unit="none",
        targets=targets,
        grid=GridPos(0, 0, GRID_WIDTH, max(8, 4 + slo_count)),
        columns=columns,
        data_links=(Link("Open the service dashboard",
                         f"${{__data.fields.{DASHBOARD_LINK_LABEL}}}?${{__url_time_range}}&${{{DATASOURCE_VAR}:queryparam}}"),),
    )
    return Dashboard(
        uid=OVERVIEW_UID,
        title="forge-slo / SLO overview",
        description=f"Every SLO of every service. {GENERATED_MARK}; do not edit, change the specs and compile again.",
        tags=(TAG,),
        variables=(Variable(DATASOURCE_VAR, "Data source", "datasource", DATASOURCE_TYPE,
                            "Prometheus that evaluates the forge-slo rules"),),
        panels=(table,),
        links=tuple(Link(s, dashboard_url(dashboard_uid(s)), f"SLO dashboard of {s}") for s in services),
    )


# Artifacts and queries ------------------------------------------------------------------------------------


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    """Grafana's JSON model of a dashboard."""
    from forge_slo.compile import grafana_sdk

    return grafana_sdk.to_json(dashboard)


def serialise(document: Mapping[str, Any]) -> str:
    """Sorted-key JSON, indented down to the panel fields and compact below, one value per line there.

    ``json.dumps(indent=2)`` runs in pure Python and cost more than building the dashboards; below the
    fourth level the C encoder writes each value on one line, which still diffs well.
    """
    return _pretty(document, 0) + "\n"


_COMPACT = json.JSONEncoder(sort_keys=True, separators=(", ", ": "))


def _pretty(value: Any, depth: int) -> str:
    if depth >= 4 or not isinstance(value, dict | list) or not value:
        return _COMPACT.encode(value)
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {_pretty(value[k], depth + 1)}" for k in sorted(value)]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    return "[\n" + ",\n".join(f"{inner}{_pretty(v, depth + 1)}" for v in value) + f"\n{pad}]"


def produce(specs: Sequence[ServiceSpec], options: CompileOptions) -> Produced:
    """``<service>.json`` for every service and ``overview.json``."""
    ordered = sorted(specs, key=lambda s: s.service)
    files = {f"{spec.service}.json": serialise(dashboard_json(service_dashboard(spec))) for spec in ordered}
    files["overview.json"] = serialise(dashboard_json(overview_dashboard(ordered)))
    return Produced(files)


PRODUCER = Producer(name="dashboards", folder="grafana", description="Grafana dashboards (one per service and "
                    "an overview)", produce=produce)
