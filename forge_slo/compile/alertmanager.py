"""Alertmanager routing for the compiled alerts: ``alertmanager/alertmanager.yaml``.

One configuration for every service compiled together (Alertmanager reads one): per service, a route for
its pages and one for its tickets, each to a named receiver (``<service>-page``, ``<service>-ticket``),
grouped by alert name, service and SLO, so one SLO burning is one notification whatever its windows and
groups; and an inhibit rule that silences an SLO's burn-rate ticket while the page of the same SLO (and the
same ``group_by`` values) fires. Routes match ``forge_slo_service`` and ``forge_slo_severity``, which every
alert forge-slo compiles carries (burn rate, missing SLI, GPU), whatever labels the spec adds.

The receivers have no integrations: the file is valid as it stands (``amtool check-config``) and is meant to
be merged into a real configuration, or completed with ``pagerduty_configs``, ``slack_configs`` or
``webhook_configs``. Pure: specs in, text out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.compile import yamlout
from forge_slo.compile.artifact import GENERATED_MARK
from forge_slo.compile.producer import CompileOptions, Produced, Producer
from forge_slo.durations import format_duration
from forge_slo.spec.model import PAGE, SEVERITIES, TICKET, ServiceSpec

FILE = "alertmanager.yaml"
DEFAULT_RECEIVER = "forge-slo-default"
# One notification per SLO: its windows and its group_by values are details inside it.
GROUP_BY = ("alertname", cv.SERVICE_LABEL, cv.SLO_LABEL)


@dataclass(frozen=True)
class Timing:
    """How soon a new group is sent, how often changes to it are, and how often a still-firing one is repeated."""

    group_wait_seconds: float
    group_interval_seconds: float
    repeat_interval_seconds: float

    def fields(self) -> dict[str, str]:
        return {"group_wait": format_duration(self.group_wait_seconds),
                "group_interval": format_duration(self.group_interval_seconds),
                "repeat_interval": format_duration(self.repeat_interval_seconds)}


# A page wakes someone: sent within half a minute, repeated hourly while it burns. A ticket is read in working
# hours: batched for 5 minutes (a page that follows inhibits it before it goes out), repeated daily.
TIMINGS = {PAGE: Timing(30.0, 300.0, 3600.0), TICKET: Timing(300.0, 1800.0, 86400.0)}


def receiver_name(service: str, severity: str) -> str:
    return f"{service}-{severity}"


def _matcher(label: str, value: str) -> str:
    return f"{label}={promql.quote(value)}"


def service_routes(spec: ServiceSpec) -> list[dict[str, Any]]:
    """A route per severity for one service, pages first."""
    return [{
        "receiver": receiver_name(spec.service, severity),
        "matchers": [_matcher(cv.SERVICE_LABEL, spec.service), _matcher(cv.SEVERITY_LABEL, severity)],
        "group_by": list(GROUP_BY),
        **TIMINGS[severity].fields(),
    } for severity in SEVERITIES]


def inhibit_rule(spec: ServiceSpec) -> dict[str, Any]:
    """The ticket of an SLO (and group) is silent while its page fires: both are the same burn-rate alert
    (one name) at two severities, so equal names keep a GPU page from silencing a thermal ticket."""
    return {
        "source_matchers": [_matcher(cv.SERVICE_LABEL, spec.service), _matcher(cv.SEVERITY_LABEL, PAGE)],
        "target_matchers": [_matcher(cv.SERVICE_LABEL, spec.service), _matcher(cv.SEVERITY_LABEL, TICKET)],
        "equal": ["alertname", cv.SLO_LABEL, *spec.group_by],
    }


def configuration(specs: Sequence[ServiceSpec]) -> dict[str, Any]:
    """The whole Alertmanager configuration for ``specs`` (services in name order)."""
    ordered = sorted(specs, key=lambda s: s.service)
    return {
        "route": {
            "receiver": DEFAULT_RECEIVER,
            "group_by": list(GROUP_BY),
            "routes": [route for spec in ordered for route in service_routes(spec)],
        },
        "inhibit_rules": [inhibit_rule(spec) for spec in ordered],
        "receivers": [{"name": DEFAULT_RECEIVER}] + [{"name": receiver_name(spec.service, severity)}
                                                     for spec in ordered for severity in SEVERITIES],
    }


def _header(specs: Sequence[ServiceSpec]) -> str:
    sources = ", ".join(sorted({Path(spec.source).name for spec in specs}))
    return (f"{GENERATED_MARK} from {sources}: Alertmanager routing for the SLO alerts.\n"
            "Give each receiver its integrations (pagerduty_configs, slack_configs, webhook_configs), or merge the\n"
            "routes, inhibit_rules and receivers into your own configuration. Regenerate with forge-slo compile.")


def produce(specs: Sequence[ServiceSpec], options: CompileOptions) -> Produced:
    if not specs:
        return Produced()
    return Produced({FILE: yamlout.dump(configuration(specs), _header(specs))})


PRODUCER = Producer(
    name="alertmanager", folder="alertmanager",
    description="Alertmanager routes, receivers and inhibit rules for the alerts", produce=produce,
)
