"""Every recording-rule name, label key and metric prefix forge-slo emits, in one place.

Rules, alerts, promtool tests, dashboards, canary queries and chaos probes all read these names from here,
so they cannot drift apart.
"""

from __future__ import annotations

from forge_slo.durations import format_duration

# Labels forge-slo adds to every series it records.
SERVICE_LABEL = "forge_slo_service"
SLO_LABEL = "forge_slo_name"
# Labels on alerts.
SEVERITY_LABEL = "forge_slo_severity"
LONG_WINDOW_LABEL = "forge_slo_long_window"
SHORT_WINDOW_LABEL = "forge_slo_short_window"
# Labels on the info series.
OBJECTIVE_LABEL = "forge_slo_objective"
PERIOD_LABEL = "forge_slo_period"
SLI_KIND_LABEL = "forge_slo_sli"

RULE_PREFIX = "forge_slo"

# Metadata recordings, one series per SLO (service and SLO labels plus the spec's labels).
OBJECTIVE = f"{RULE_PREFIX}:objective:ratio"
ERROR_BUDGET = f"{RULE_PREFIX}:error_budget:ratio"
INFO = f"{RULE_PREFIX}:info"
# Derived recordings, one series per SLO and group_by value.
PERIOD_ERROR_RATIO = f"{RULE_PREFIX}:period_error:ratio"
CURRENT_BURN_RATE = f"{RULE_PREFIX}:burn_rate:ratio"
PERIOD_BURN_RATE = f"{RULE_PREFIX}:period_burn_rate:ratio"
ERROR_BUDGET_REMAINING = f"{RULE_PREFIX}:error_budget_remaining:ratio"

# Prefixes of the metrics forge-slo's own programs export: the load generator's client-side view, the
# training job of the chaos experiments, and the GPU exporter's own health of itself.
LOAD_METRIC_PREFIX = "forge_load_"
TRAIN_METRIC_PREFIX = "forge_train_"
GPU_EXPORTER_METRIC_PREFIX = "forge_gpu_exporter_"


def error_ratio(window_seconds: float) -> str:
    """Share of failed requests over a window, e.g. ``forge_slo:sli_error:ratio_rate5m``."""
    return f"{RULE_PREFIX}:sli_error:ratio_rate{format_duration(window_seconds)}"


def request_rate(window_seconds: float) -> str:
    """Requests (events) per second counted by the SLI over a window."""
    return f"{RULE_PREFIX}:sli_requests:rate{format_duration(window_seconds)}"


def error_rate(window_seconds: float) -> str:
    """Failed requests (bad events) per second over a window; recorded for the base window only."""
    return f"{RULE_PREFIX}:sli_errors:rate{format_duration(window_seconds)}"


def burn_alert_name(service: str, slo: str) -> str:
    """Name of an SLO's burn-rate alerts (all severities and windows share it; labels tell them apart)."""
    return camel(service) + camel(slo) + "BudgetBurn"


def absent_alert_name(service: str, slo: str) -> str:
    """Name of the alert raised when an SLO's metrics are missing."""
    return camel(service) + camel(slo) + "SLIAbsent"


def camel(name: str) -> str:
    """``gateway-errors`` -> ``GatewayErrors``; keeps only characters valid in an alert name."""
    parts = [p for p in "".join(c if c.isalnum() else " " for c in name).split() if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts)
    if not out or out[0].isdigit():
        out = "Slo" + out
    return out


# GPU fleet alerts, compiled when a spec has a `gpu:` section (labels: the spec's plus dcgm-exporter's).
GPU_XID_ALERT = "GpuXidCritical"
GPU_UNHEALTHY_ALERT = "GpuUnhealthy"
GPU_ECC_ALERT = "GpuEccDoubleBitErrors"
GPU_THERMAL_ALERT = "GpuThermalThrottling"
# Series exported by forge-slo's GPU exporter beyond dcgm-exporter's names.
GPU_HEALTHY = "forge_gpu_healthy"
# Fleet cost recordings, one series per service with a `gpu:` section.
GPU_COUNT = f"{RULE_PREFIX}:gpus:count"
GPU_COST_RATE = f"{RULE_PREFIX}:gpu_cost_dollars:rate"
GOOD_TOKENS_RATE = f"{RULE_PREFIX}:good_tokens:rate"
COST_PER_MILLION_GOOD_TOKENS = f"{RULE_PREFIX}:cost_per_million_good_tokens:dollars"
