"""Generated ``promtool test rules`` unit tests: each alert fires when it should and stays quiet when not.

For every SLO the tests feed steady traffic whose burn rate sits just above and just below each alert
factor, traffic too thin to count (the minimum-events guard), and no data at all (the absent alert).
Preset SLIs are fed as the server's own raw series, so the SLI queries are tested too; ratio SLIs with
user PromQL are fed at the level of their recorded rates, since their raw series cannot be guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.compile import yamlout
from forge_slo.compile.artifact import header
from forge_slo.compile.producer import CompileOptions, Produced, Producer
from forge_slo.compile.rules import (
    CLOCK_EVENTS,
    ECC_DBE,
    GPU_UTIL,
    XID,
    absent_alert,
    absent_labels,
    alert_labels,
    burn_alert_name,
    burn_annotations,
    gpu_alert_labels,
    gpu_alerts,
    rules_file,
    slo_labels,
)
from forge_slo.compile.sli import grouped_by
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
    if isinstance(sli, AvailabilitySLI):
        return outcome_series(spec, sli, {"served": total - errors, "server_error": errors})
    # Ratio SLIs: the recorded rates, since the user's raw series cannot be guessed.
    labels = {**slo_labels(spec, slo), **{k: v for k, v in group_values(spec).items() if k in grouped_by(spec, slo)}}
    out = []
    for seconds in spec.windows_seconds():
        out.append(Series(cv.request_rate(seconds), labels, total / 60, gauge=True))
        out.append(Series(cv.error_ratio(seconds), labels, errors / total if total else 0.0, gauge=True))
    return out


def outcome_series(spec: ServiceSpec, sli: AvailabilitySLI, per_minute: dict[str, float]) -> list[Series]:
    """The series a server exports for requests of each outcome (per minute), echoes included: what the
    SLI must count and what it must leave alone, summed where two outcomes share a series."""
    base = {**spec.selector, **group_values(spec)}
    rates: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for outcome, rate in per_minute.items():
        for example in sli.counters.outcomes.examples.get(outcome, ()):
            own = {k: v for k, v in base.items() if k not in example.lacks}
            key = (example.metric, tuple(sorted({**own, **dict(example.labels)}.items())))
            rates[key] = rates.get(key, 0.0) + rate * example.per_request
    return [Series(metric, dict(labels), rate) for (metric, labels), rate in sorted(rates.items())]


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


def _windows(spec: ServiceSpec, slo: SLO) -> list[tuple[AlertPolicy, BurnWindow]]:
    return [(p, w) for p in spec.policies(slo) for w in p.windows]


def _expected_burn_alerts(spec: ServiceSpec, slo: SLO, burn: float) -> list[dict[str, Any]]:
    expected = []
    groups = {k: v for k, v in group_values(spec).items() if k in grouped_by(spec, slo)}
    for policy, window in _windows(spec, slo):
        if burn > window.factor:
            labels = {**alert_labels(spec, slo, policy, window), **groups}
            annotations = {k: render_template(v, labels, burn)
                           for k, v in burn_annotations(spec, slo, policy, window).items()}
            expected.append({"exp_labels": dict(sorted(labels.items())),
                             "exp_annotations": dict(sorted(annotations.items()))})
    return expected


def slo_tests(spec: ServiceSpec, slo: SLO) -> list[dict[str, Any]]:
    policies = spec.policies(slo)
    if not policies:
        return []  # no alerts to prove: the SLO raises none
    longest_for = max(p.for_seconds for p in policies)
    eval_minutes = math.ceil(longest_for / 60) + 5
    minutes = eval_minutes + 5
    alertname = burn_alert_name(spec, slo)
    budget = slo.error_budget_ratio
    tests: list[dict[str, Any]] = []
    factors = sorted({w.factor for _, w in _windows(spec, slo)}, reverse=True)
    highest = 1 / budget  # every request failing: no burn rate is higher
    for factor in factors:
        for side, scale in (("above", 1.1), ("below", 0.9)):
            burn = _pretty_safe(factor * scale)
            if any(math.isclose(burn, f, rel_tol=1e-6) for f in factors):
                burn *= 1.01
            if burn > highest:  # a factor lowered to fit a low objective: a total outage is "just above" it
                burn = highest
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
        longest = max(w.long_seconds for _, w in _windows(spec, slo)) / 60
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
    if spec.gpu is not None:
        try:
            tests.extend(gpu_tests(spec))
        except CannotRender as exc:
            warnings.append(f"{spec.service}/gpu: no promtool tests generated: {exc}")
    return {"rule_files": [rules_path], "evaluation_interval": "1m", "tests": tests}, warnings


# GPU fleet --------------------------------------------------------------------------------------------------

def _gpu_labels(spec: ServiceSpec, gpu: int) -> dict[str, str]:
    assert spec.gpu is not None
    return {**spec.gpu.selector, "gpu": str(gpu), "UUID": f"GPU-test-{gpu}", "hostname": "test-host",
            "modelName": "NVIDIA H100 80GB HBM3"}


def _expected_gpu_alert(spec: ServiceSpec, name: str, series_labels: dict[str, str]) -> dict[str, Any]:
    assert spec.gpu is not None
    rule = next(r for r in gpu_alerts(spec, spec.gpu) if r["alert"] == name)
    severity_policy = spec.page if rule["labels"][cv.SEVERITY_LABEL] == "page" else spec.ticket
    labels = {**series_labels, **gpu_alert_labels(spec, severity_policy)}
    return {"exp_labels": dict(sorted(labels.items())),
            "exp_annotations": {k: render_template(v, labels, 1.0) for k, v in sorted(rule["annotations"].items())}}


def gpu_tests(spec: ServiceSpec) -> list[dict[str, Any]]:
    """Each GPU alert fires for its fault, on the faulty GPU only, and stays quiet for a healthy fleet."""
    gpu = spec.gpu
    assert gpu is not None
    waits = [gpu.unhealthy_for_seconds, gpu.thermal_for_seconds]
    at = math.ceil(max(waits) / 60) + 8  # minutes
    n = at + 2
    xid_code = str(gpu.critical_xids[-1] if 79 not in gpu.critical_xids else 79)
    xid_pre = {**_gpu_labels(spec, 0), "err_code": xid_code}       # exists at 0, then the error
    xid_new = {**_gpu_labels(spec, 1), "err_code": str(gpu.critical_xids[0])}  # appears with the error
    benign = {**_gpu_labels(spec, 2), "err_code": "13"} if 13 not in gpu.critical_xids else None
    lost = {**_gpu_labels(spec, 1), "reason": "gpu_lost"}
    fine = {**_gpu_labels(spec, 0), "reason": "ok"}
    thermal = _gpu_labels(spec, 3)
    power_cap = _gpu_labels(spec, 4)
    step = at - 2
    series = [
        {"series": promql.selector(XID, xid_pre), "values": f"0x{step - 1} 1x{n - step}"},
        {"series": promql.selector(XID, xid_new), "values": f"_x{step - 1} {xid_new['err_code']}x{n - step}"},
        {"series": promql.selector(cv.GPU_HEALTHY, lost), "values": f"0x{n}"},
        {"series": promql.selector(cv.GPU_HEALTHY, fine), "values": f"1x{n}"},
        {"series": promql.selector(ECC_DBE, _gpu_labels(spec, 2)), "values": f"0x{step - 1} 2x{n - step}"},
        {"series": promql.selector(CLOCK_EVENTS[0], thermal), "values": f"32x{n}"},
        {"series": promql.selector(CLOCK_EVENTS[0], power_cap), "values": f"4x{n}"},
    ]
    if benign is not None:
        series.append({"series": promql.selector(XID, benign), "values": f"0x{step - 1} 1x{n - step}"})
    checks = [
        (cv.GPU_XID_ALERT, [_expected_gpu_alert(spec, cv.GPU_XID_ALERT, xid_pre),
                            _expected_gpu_alert(spec, cv.GPU_XID_ALERT, xid_new)]),
        (cv.GPU_UNHEALTHY_ALERT, [_expected_gpu_alert(spec, cv.GPU_UNHEALTHY_ALERT, lost)]),
        (cv.GPU_ECC_ALERT, [_expected_gpu_alert(spec, cv.GPU_ECC_ALERT, _gpu_labels(spec, 2))]),
        (cv.GPU_THERMAL_ALERT, [_expected_gpu_alert(spec, cv.GPU_THERMAL_ALERT, thermal)]),
    ]
    tests: list[dict[str, Any]] = [{
        "name": f"{spec.service}/gpu: XID {xid_code}, a lost GPU, ECC and thermal faults each raise their alert",
        "interval": "1m",
        "input_series": sorted(series, key=lambda s: s["series"]),
        "alert_rule_test": [{"eval_time": f"{at}m", "alertname": name, "exp_alerts": exp} for name, exp in checks],
    }, {
        "name": f"{spec.service}/gpu: a healthy fleet raises nothing",
        "interval": "1m",
        "input_series": [
            {"series": promql.selector(XID, {**_gpu_labels(spec, 0), "err_code": "0"}), "values": f"0x{n}"},
            {"series": promql.selector(XID, {**_gpu_labels(spec, 0), "err_code": xid_code}), "values": f"0x{n}"},
            {"series": promql.selector(cv.GPU_HEALTHY, fine), "values": f"1x{n}"},
            {"series": promql.selector(ECC_DBE, _gpu_labels(spec, 0)), "values": f"0x{n}"},
            {"series": promql.selector(CLOCK_EVENTS[0], _gpu_labels(spec, 0)), "values": f"0x{n}"},
        ],
        "alert_rule_test": [{"eval_time": f"{at}m", "alertname": name, "exp_alerts": []} for name, _ in checks],
    }]
    if gpu.price_per_gpu_hour is not None:
        tests.append(_cost_test(spec))
    return tests


def _cost_test(spec: ServiceSpec) -> dict[str, Any]:
    """Two GPUs and 1,000 generated tokens/s with every latency SLO met: the recorded cost is exact."""
    gpu = spec.gpu
    assert gpu is not None and gpu.price_per_gpu_hour is not None
    tokens_metric = spec.preset.server.generation_tokens
    assert tokens_metric is not None
    minutes = 75
    series = [{"series": promql.selector(GPU_UTIL, _gpu_labels(spec, i)), "values": f"90x{minutes}"}
              for i in range(2)]
    groups = group_values(spec)
    series.append({"series": promql.selector(tokens_metric, {**spec.selector, **groups}),
                   "values": f"0+60000x{minutes}"})
    for slo in spec.slos:
        if isinstance(slo.sli, LatencySLI):
            series.extend(s.render(minutes) for s in input_series(spec, slo, TOTAL_PER_MINUTE, 0.0))
    expected = 2 * gpu.price_per_gpu_hour / 3600 / 1000 * 1e6
    labels = promql.selector("", {cv.SERVICE_LABEL: spec.service, **spec.labels})
    return {
        "name": f"{spec.service}/gpu: 2 GPUs at {_num(gpu.price_per_gpu_hour)}/h serving 1,000 good tokens/s cost "
                f"{expected:.4g} per million good tokens",
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [{
            "expr": f"abs({cv.COST_PER_MILLION_GOOD_TOKENS} / {expected!r} - 1) < bool 1e-9",
            "eval_time": f"{minutes - 5}m",
            "exp_samples": [{"labels": labels, "value": 1}],
        }],
    }


def produce(specs: Sequence[ServiceSpec], options: CompileOptions) -> Produced:
    if options.format != "prometheus":
        return Produced(warnings=[f"promtool tests are not written for --format {options.format}: promtool reads "
                                  "plain rule files; compile with --format prometheus to run them"])
    produced = Produced()
    for spec in specs:
        rules_path = options.path_between(PRODUCER.folder, "prometheus", rules_file(spec))
        doc, warnings = test_file(spec, rules_path)
        produced.files[f"{spec.service}.test.yaml"] = yamlout.dump(doc, header(spec))
        produced.warnings.extend(warnings)
    return produced


PRODUCER = Producer(name="promtool-tests", folder="promtool-tests",
                    description="promtool unit tests that prove every alert", produce=produce)
