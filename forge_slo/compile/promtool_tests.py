"""Generated ``promtool test rules`` unit tests: each alert fires when it should and stays quiet when not.

For every SLO the tests feed steady traffic whose burn rate sits just above and just below each alert
factor, traffic too thin to count (the minimum-events guard), and no data at all (the absent alert).
Preset SLIs are fed as the server's own raw series, so the SLI queries are tested too; ratio SLIs with
user PromQL are fed at the level of their recorded rates, since their raw series cannot be guessed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.compile.rules import (
    absent_alert,
    absent_labels,
    alert_labels,
    burn_alert_name,
    burn_annotations,
    slo_labels,
)
from forge_slo.durations import format_duration
from forge_slo.errors import ForgeError
from forge_slo.spec.model import SLO, AlertPolicy, AvailabilitySLI, BurnWindow, LatencySLI, ServiceSpec

TOTAL_PER_MINUTE = 6000.0  # requests per minute in the synthetic traffic


class CannotRender(ForgeError):
    """An annotation uses template functions the generator cannot predict."""


@dataclass(frozen=True)
class Series:
    """An input series: a counter growing by ``value`` a minute, or a gauge holding ``value``."""

    metric: str
    labels: dict[str, str]
    value: float
    gauge: bool = False

    def render(self, minutes: int) -> dict[str, str]:
        values = f"{_num(self.value)}+0x{minutes}" if self.gauge else f"0+{_num(self.value)}x{minutes}"
        return {"series": promql.selector(self.metric, self.labels), "values": values}


def _num(value: float) -> str:
    return promql.number(value)


def group_values(spec: ServiceSpec) -> dict[str, str]:
    """Test values for the group_by labels."""
    return {label: f"test-{label.replace('_', '-')}" for label in spec.group_by}


def input_series(spec: ServiceSpec, slo: SLO, total: float, errors: float) -> list[Series]:
    """Raw series whose SLI has ``total`` requests and ``errors`` failures per minute."""
    base = {**spec.selector, **group_values(spec)}
    sli = slo.sli
    if isinstance(sli, LatencySLI):
        metric = sli.histogram.metric
        le = promql.float_label_values(sli.bucket_bound)[-1]
        return [
            Series(f"{metric}_count", base, total),
            Series(f"{metric}_bucket", {**base, "le": le}, total - errors),
            Series(f"{metric}_bucket", {**base, "le": "+Inf"}, total),
        ]
    if isinstance(sli, AvailabilitySLI) and sli.counters.examples:
        rates = {"good": total - errors, "bad": errors, "total": total}
        return [Series(ex.metric, {**base, **dict(ex.labels)}, rates[ex.role]) for ex in sli.counters.examples]
    # Ratio SLIs: the recorded rates, since the user's raw series cannot be guessed.
    labels = {**slo_labels(spec, slo), **group_values(spec)}
    out = []
    for seconds in spec.windows_seconds():
        out.append(Series(cv.request_rate(seconds), labels, total / 60, gauge=True))
        out.append(Series(cv.error_ratio(seconds), labels, errors / total if total else 0.0, gauge=True))
    return out


_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")


def render_template(text: str, labels: dict[str, str], value: float) -> str:
    """What Prometheus makes of the few template forms forge-slo writes itself."""

    def one(match: re.Match[str]) -> str:
        body = match.group(1).strip()
        if body == "`{{`":
            return "{{"
        if body == "$value":
            return _go_float(value)
        fmt = re.fullmatch(r'\$value \| printf "%\.(\d)f"', body)
        if fmt:
            return f"{value:.{int(fmt.group(1))}f}"
        lab = re.fullmatch(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", body)
        if lab:
            return labels.get(lab.group(1), "")
        raise CannotRender(f"cannot predict the template {{{{{match.group(1)}}}}}")

    return _TEMPLATE.sub(one, text)


def _go_float(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _pretty_safe(burn: float) -> float:
    """Nudge a burn rate away from a rounding tie of its one-decimal rendering."""
    while abs((burn * 10) % 1 - 0.5) < 1e-3:
        burn *= 1.001
    return burn


def _windows(spec: ServiceSpec) -> list[tuple[AlertPolicy, BurnWindow]]:
    return [(p, w) for p in spec.policies for w in p.windows]


def _expected_burn_alerts(spec: ServiceSpec, slo: SLO, burn: float) -> list[dict[str, Any]]:
    expected = []
    groups = group_values(spec)
    for policy, window in _windows(spec):
        if burn > window.factor:
            labels = {**alert_labels(spec, slo, policy, window), **groups}
            annotations = {k: render_template(v, labels, burn)
                           for k, v in burn_annotations(spec, slo, policy, window).items()}
            expected.append({"exp_labels": dict(sorted(labels.items())),
                             "exp_annotations": dict(sorted(annotations.items()))})
    return expected


def slo_tests(spec: ServiceSpec, slo: SLO) -> list[dict[str, Any]]:
    if not spec.policies:
        return [_absent_test(spec, slo)]
    longest_for = max(p.for_seconds for p in spec.policies)
    eval_minutes = math.ceil(longest_for / 60) + 5
    minutes = eval_minutes + 5
    alertname = burn_alert_name(spec, slo)
    budget = slo.error_budget_ratio
    tests: list[dict[str, Any]] = []
    factors = sorted({w.factor for _, w in _windows(spec)}, reverse=True)
    for factor in factors:
        for side, scale in (("above", 1.1), ("below", 0.9)):
            burn = _pretty_safe(factor * scale)
            if any(math.isclose(burn, f, rel_tol=1e-6) for f in factors):
                burn *= 1.01
            errors = burn * budget * TOTAL_PER_MINUTE
            series = input_series(spec, slo, TOTAL_PER_MINUTE, errors)
            tests.append({
                "name": f"{spec.service}/{slo.name}: burn rate {burn:.2f}x, just {side} the {_num(factor)}x threshold",
                "interval": "1m",
                "input_series": [s.render(minutes) for s in series],
                "alert_rule_test": [{"eval_time": f"{eval_minutes}m", "alertname": alertname,
                                     "exp_alerts": _expected_burn_alerts(spec, slo, burn)}],
            })
    if spec.min_events > 0:
        # Every request fails, but the long windows hold fewer events than min_events.
        # Raw counters only hold `minutes` of data; recorded rates stand for a steady trickle over each window.
        gauge = input_series(spec, slo, 1.0, 1.0)[0].gauge
        longest = max(w.long_seconds for _, w in _windows(spec)) / 60
        trickle = spec.min_events / (2 * (longest if gauge else minutes))
        series = input_series(spec, slo, trickle, trickle)
        tests.append({
            "name": f"{spec.service}/{slo.name}: every request fails but traffic is below "
                    f"min_events ({_num(spec.min_events)}): nobody is paged",
            "interval": "1m",
            "input_series": [s.render(minutes) for s in series],
            "alert_rule_test": [{"eval_time": f"{eval_minutes}m", "alertname": alertname, "exp_alerts": []}],
        })
    tests.append(_absent_test(spec, slo))
    return tests


def _absent_test(spec: ServiceSpec, slo: SLO) -> dict[str, Any]:
    rule = absent_alert(spec, slo)
    eval_minutes = math.ceil(spec.absent_for_seconds / 60) + 2
    labels = absent_labels(spec, slo)
    return {
        "name": f"{spec.service}/{slo.name}: no metrics for {format_duration(spec.absent_for_seconds)} raises "
                f"{rule['alert']}",
        "interval": "1m",
        "input_series": [{"series": 'forge_slo_unrelated_series{job="promtool"}', "values": f"1+0x{eval_minutes}"}],
        "alert_rule_test": [{
            "eval_time": f"{eval_minutes}m",
            "alertname": rule["alert"],
            "exp_alerts": [{
                "exp_labels": labels,
                "exp_annotations": {k: render_template(v, labels, 1.0) for k, v in sorted(rule["annotations"].items())},
            }],
        }],
    }


def test_file(spec: ServiceSpec, rules_path: str) -> tuple[dict[str, Any], list[str]]:
    """The promtool test document for a service, and warnings about SLOs whose tests could not be made."""
    tests: list[dict[str, Any]] = []
    warnings: list[str] = []
    for slo in spec.slos:
        try:
            tests.extend(slo_tests(spec, slo))
        except CannotRender as exc:
            warnings.append(f"{spec.service}/{slo.name}: no promtool tests generated: {exc}")
    return {"rule_files": [rules_path], "evaluation_interval": "1m", "tests": tests}, warnings
