"""SLO probes: burn rate, error budget, SLI value, latency percentiles and alerts, read from Prometheus.

Every probe reads the series that ``forge-slo compile`` records (names from :mod:`forge_slo.conventions`), so a
tolerance here means what the dashboards and alerts mean. Probes return plain numbers or booleans for
tolerances. With ``group_by`` in the spec, a probe returns the worst group (highest burn, lowest budget).
No data raises (the activity fails) rather than passing a tolerance by accident.

This module has no ``from __future__ import annotations``: Chaos Toolkit's discovery reads the annotations.
"""

import math
import time
from collections.abc import Mapping

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.chaos._common import base_url, finite, poll_until, window_seconds, window_text
from forge_slo.durations import parse_duration
from forge_slo.errors import RunnerError, UsageError
from forge_slo.sources.prometheus import Alert, PrometheusClient

__all__ = [
    "alert_firing",
    "burn_rate",
    "error_budget_consumed",
    "error_budget_remaining",
    "latency_percentile",
    "sli_value",
    "wait_for_alert",
    "wait_for_alert_resolved",
]


# Recording names are the prefix plus a window ("5m"): the prefixes, from the conventions themselves.
_ERROR_RATIO_PREFIX = cv.error_ratio(1.0).removesuffix("1s")
_ERROR_RATE_PREFIX = cv.error_rate(1.0).removesuffix("1s")
_REQUEST_RATE_PREFIX = cv.request_rate(1.0).removesuffix("1s")


def _client(prometheus_url: str) -> PrometheusClient:
    return PrometheusClient(base_url(prometheus_url, "prometheus_url"), timeout_s=10.0)


def _slo_matchers(service: str, slo: str) -> dict[str, str]:
    if not service or not slo:
        raise UsageError("service and slo are required (the names in the spec)")
    return {cv.SERVICE_LABEL: str(service), cv.SLO_LABEL: str(slo)}


def _name_matches(pattern: str) -> str:
    return f"__name__=~{promql.quote(pattern)}"


def _values(client: PrometheusClient, expr: str, what: str) -> list[float]:
    values = finite([s.value for s in client.query(expr)])
    if not values:
        raise RunnerError(f"no data for {what} ({expr}): are the rules compiled from the spec loaded, and does "
                          "the service have traffic?")
    return values


def _budget(client: PrometheusClient, sel: Mapping[str, str], service: str, slo: str) -> float:
    return max(_values(client, promql.selector(cv.ERROR_BUDGET, sel), f"the error budget of {service}/{slo}"))


def _error_ratio(client: PrometheusClient, service: str, slo: str, window: str) -> float:
    sel = _slo_matchers(service, slo)
    if not window:
        return max(_values(client, promql.selector(cv.PERIOD_ERROR_RATIO, sel), f"{service}/{slo} over its period"))
    seconds = window_seconds(window)
    name = cv.error_ratio(seconds)
    samples = client.query(promql.selector(name, sel))
    if not samples:
        known = sorted({s.labels.get("__name__", "") for s in client.query(
            promql.selector("", sel, [_name_matches(promql.any_of_regex([_ERROR_RATIO_PREFIX]) + ".+")]))})
        raise RunnerError(f"no {name} for {service}/{slo}: the window must be one of the spec's alert windows"
                          + (f" (recorded: {', '.join(known)})" if known else " (no windows are recorded at all)"))
    values = finite([s.value for s in samples])
    if not values:
        raise RunnerError(f"{name} for {service}/{slo} is NaN: no traffic in the last {window}")
    return max(values)


def burn_rate(prometheus_url: str, service: str, slo: str, window: str = "") -> float:
    """How fast the SLO burns its error budget (1 = exactly on budget): the error ratio over ``window`` (one of
    the spec's alert windows; empty: the shortest) divided by the error budget."""
    with _client(prometheus_url) as client:
        if not window:
            sel = _slo_matchers(service, slo)
            return max(_values(client, promql.selector(cv.CURRENT_BURN_RATE, sel), f"the burn rate of {service}/{slo}"))
        ratio = _error_ratio(client, service, slo, window)
        return ratio / _budget(client, _slo_matchers(service, slo), service, slo)


def error_budget_remaining(prometheus_url: str, service: str, slo: str) -> float:
    """Share of the period's error budget left (1 untouched, 0 spent, negative overspent), as recorded."""
    with _client(prometheus_url) as client:
        sel = _slo_matchers(service, slo)
        return min(_values(client, promql.selector(cv.ERROR_BUDGET_REMAINING, sel),
                           f"the error budget remaining of {service}/{slo}"))


def error_budget_consumed(prometheus_url: str, service: str, slo: str, window: str = "5m") -> float:
    """Share of the whole period's error budget burnt during the last ``window`` (0.01 = 1%).

    The SRE workbook's arithmetic: the traffic-weighted burn rate over the window times window / period. It
    reads the same base-window recordings the period SLI sums, so it does not depend on how much history
    Prometheus holds.
    """
    seconds = window_seconds(window)
    with _client(prometheus_url) as client:
        return budget_consumed_between(client, service, slo, time.time() - seconds, time.time())


def budget_consumed_between(client: PrometheusClient, service: str, slo: str, start: float, end: float) -> float:
    """The budget share burnt between two unix times (see :func:`error_budget_consumed`)."""
    sel = _slo_matchers(service, slo)
    seconds = max(1.0, math.ceil(end - start))
    info = client.query(promql.selector(cv.INFO, sel), at=end)
    if not info:
        raise RunnerError(f"no {cv.INFO} for {service}/{slo}: load the rules compiled from its spec")
    period = parse_duration(info[0].labels.get(cv.PERIOD_LABEL, "30d"))
    budget = _budget(client, sel, service, slo)
    rates = client.query(promql.selector("", sel, [_name_matches(promql.any_of_regex([_ERROR_RATE_PREFIX]) + ".+")]),
                         at=end)
    if not rates:
        raise RunnerError(f"no {_ERROR_RATE_PREFIX}<window> for {service}/{slo}: load the compiled rules")
    errors_name = rates[0].labels["__name__"]
    requests_name = _REQUEST_RATE_PREFIX + errors_name.removeprefix(_ERROR_RATE_PREFIX)
    window = window_text(f"{int(seconds)}s")
    expr = (f"sum_over_time({promql.selector(errors_name, sel)}[{window}])"
            f" / sum_over_time({promql.selector(requests_name, sel)}[{window}])")
    ratios = finite([s.value for s in client.query(expr, at=end)])
    if not ratios:
        return 0.0  # no traffic in the window burns nothing
    return max(ratios) / budget * seconds / period


def sli_value(prometheus_url: str, service: str, slo: str, window: str = "") -> float:
    """Share of good events (0..1) over ``window`` (one of the spec's alert windows), or over the whole period
    when ``window`` is empty."""
    with _client(prometheus_url) as client:
        return 1.0 - _error_ratio(client, service, slo, window)


def latency_percentile(prometheus_url: str, metric: str, quantile: float = 0.99, window: str = "1m",
                       selector: dict[str, str] | None = None) -> float:
    """A quantile (0..1) of a Prometheus histogram over ``window``, in the histogram's unit (seconds for
    vLLM's), e.g. ``metric: "vllm:time_to_first_token_seconds"``."""
    if not 0 < float(quantile) < 1:
        raise UsageError(f"quantile: {quantile!r}; use a number between 0 and 1, e.g. 0.99")
    name = str(metric).removesuffix("_bucket")
    if not promql.is_metric_name(name):
        raise UsageError(f"metric: {metric!r} is not a Prometheus metric name")
    for key in selector or {}:
        if not promql.is_label_name(key):
            raise UsageError(f"selector: {key!r} is not a label name")
    rate = promql.rate(promql.selector(f"{name}_bucket", selector or {}), window_text(window))
    expr = f"histogram_quantile({promql.number(float(quantile))}, sum by (le) ({rate}))"
    with _client(prometheus_url) as client:
        return max(_values(client, expr, f"the {quantile} quantile of {name} (no requests in {window}?)"))


def _matching(alerts: list[Alert], alert: str, service: str, slo: str, severity: str,
              labels: Mapping[str, str] | None) -> list[Alert]:
    want = {str(k): str(v) for k, v in (labels or {}).items()}
    if alert:
        want["alertname"] = str(alert)
    if service:
        want[cv.SERVICE_LABEL] = str(service)
    if slo:
        want[cv.SLO_LABEL] = str(slo)
    if severity:
        want[cv.SEVERITY_LABEL] = str(severity)
    if not want:
        raise UsageError("name the alert (alert) or its SLO (service, slo, severity) or give labels")
    return [a for a in alerts if a.state == "firing" and all(a.labels.get(k) == v for k, v in want.items())]


def alert_firing(prometheus_url: str, alert: str = "", service: str = "", slo: str = "", severity: str = "",
                 labels: dict[str, str] | None = None) -> bool:
    """Whether an alert is firing: by name (e.g. GpuXidCritical), by SLO (service, slo and severity page or
    ticket: the burn-rate alerts of that SLO whatever their name), and/or by labels."""
    with _client(prometheus_url) as client:
        return bool(_matching(client.alerts(), alert, service, slo, severity, labels))


def wait_for_alert(prometheus_url: str, alert: str = "", service: str = "", slo: str = "", severity: str = "",
                   labels: dict[str, str] | None = None, timeout_s: float = 120.0, poll_s: float = 1.0) -> float:
    """Seconds until the alert fires (selected as in :func:`alert_firing`); fails after ``timeout_s``."""
    with _client(prometheus_url) as client:
        seconds, _ = poll_until(lambda: _matching(client.alerts(), alert, service, slo, severity, labels) or None,
                                timeout_s=timeout_s, poll_s=poll_s,
                                what=f"alert {_describe(alert, service, slo, severity, labels)} firing")
    return round(seconds, 3)


def wait_for_alert_resolved(prometheus_url: str, alert: str = "", service: str = "", slo: str = "",
                            severity: str = "", labels: dict[str, str] | None = None, timeout_s: float = 120.0,
                            poll_s: float = 1.0) -> float:
    """Seconds until the alert stops firing; fails after ``timeout_s``."""
    with _client(prometheus_url) as client:
        seconds, _ = poll_until(
            lambda: True if not _matching(client.alerts(), alert, service, slo, severity, labels) else None,
            timeout_s=timeout_s, poll_s=poll_s,
            what=f"alert {_describe(alert, service, slo, severity, labels)} resolving")
    return round(seconds, 3)


def _describe(alert: str, service: str, slo: str, severity: str, labels: Mapping[str, str] | None) -> str:
    parts = [alert] if alert else []
    if service or slo:
        parts.append(f"{service}/{slo}")
    if severity:
        parts.append(severity)
    if labels:
        parts.append(",".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return " ".join(parts)
