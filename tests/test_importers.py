"""Importers keep what the source says: Sloth (both forms), OpenSLO (v1, v1alpha, v2alpha) and Pyrra, checked on
the compiled rules (and, for the SLIs forge-slo writes itself, on promtool's evaluation of them); any mutation of
the peers' shapes loads or fails with a SpecError."""

from __future__ import annotations

import copy
import math
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_slo.compile.rules import rules_document
from forge_slo.errors import SpecErrors
from forge_slo.spec import load_specs
from forge_slo.spec.model import ServiceSpec
from tests.conftest import REPO, run_cli, run_promtool_tests
from tests.test_spec import write

# Hypothesis's report of a failure touches mypy_extensions.TypedDict, whose deprecation warning (an error here)
# would replace the falsifying example with an INTERNALERROR.
pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
Rule = dict[str, Any]


def rules_of(spec: ServiceSpec) -> list[Rule]:
    return [rule for group in rules_document(spec)["groups"] for rule in group["rules"]]


def alerts_of(spec: ServiceSpec, name: str) -> list[Rule]:
    return [rule for rule in rules_of(spec) if rule.get("alert") == name]


def check_rules(promtool: str, tmp_path: Path, spec: ServiceSpec) -> None:
    from forge_slo.compile.yamlout import dump

    path = tmp_path / f"{spec.service}.rules.yaml"
    path.write_text(dump(rules_document(spec)))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# Sloth ------------------------------------------------------------------------------------------------------

SLOTH = textwrap.dedent("""\
    version: "prometheus/v1"
    service: "checkout"
    labels: {owner: "shop", repo: "acme/checkout"}
    slos:
      - name: "availability"
        objective: 99.9
        labels: {slo_kind: errors}
        sli:
          events:
            error_query: sum(rate(checkout_requests_total{code=~"5.."}[{{.window}}]))
            total_query: sum(rate(checkout_requests_total[{{.window}}]))
        alerting:
          name: CheckoutErrors
          labels: {category: "availability"}
          annotations: {runbook: "https://runbooks.example/checkout", summary: "Checkout fails"}
          page_alert:
            labels: {severity: critical}
            annotations: {dashboard: "https://grafana.example/d/checkout"}
          ticket_alert:
            disable: true
      - name: "latency"
        objective: 99
        sli:
          events:
            error_query: |
              sum(rate(checkout_seconds_count[{{.window}}])) - sum(rate(checkout_seconds_bucket{le="0.5"}[{{.window}}]))
            total_query: sum(rate(checkout_seconds_count[{{.window}}]))
        alerting:
          name: CheckoutSlow
          page_alert:
            labels: {severity: pager-latency}
          ticket_alert:
            labels: {severity: chat}
    """)


def test_sloth_keeps_each_slos_alert_labels_annotations_and_disable(tmp_path: Path, promtool: str) -> None:
    [spec] = load_specs([write(tmp_path, SLOTH)])
    errors, slow = alerts_of(spec, "CheckoutErrors"), alerts_of(spec, "CheckoutSlow")
    assert {a["labels"]["forge_slo_severity"] for a in errors} == {"page"}  # its ticket is disabled
    assert {a["labels"]["forge_slo_severity"] for a in slow} == {"page", "ticket"}
    for alert in errors:
        assert alert["labels"]["severity"] == "critical" and alert["labels"]["category"] == "availability"
        assert alert["annotations"]["runbook"] == "https://runbooks.example/checkout"
        assert alert["annotations"]["summary"] == "Checkout fails"
        assert alert["annotations"]["dashboard"] == "https://grafana.example/d/checkout"
    for alert in slow:  # nothing of the other SLO's alerting leaks in
        assert "category" not in alert["labels"] and "runbook" not in alert["annotations"]
        expected = "pager-latency" if alert["labels"]["forge_slo_severity"] == "page" else "chat"
        assert alert["labels"]["severity"] == expected
    [absent] = alerts_of(spec, "CheckoutErrorsSLIAbsent")  # with tickets disabled, it goes with the page
    assert (absent["labels"]["forge_slo_severity"], absent["labels"]["severity"]) == ("page", "critical")
    recordings = [r for r in rules_of(spec) if "record" in r]
    assert all("category" not in r["labels"] for r in recordings)  # alert labels go on alerts only
    assert all(r["labels"]["repo"] == "acme/checkout" for r in recordings)
    assert {r["labels"].get("slo_kind") for r in recordings if r["labels"]["forge_slo_name"] == "availability"} == \
        {"errors"}
    check_rules(promtool, tmp_path, spec)


def test_sloth_kubernetes_form_compiles_to_the_same_rules(tmp_path: Path) -> None:
    body = SLOTH.split("\n", 1)[1]
    camel = (body.replace("error_query", "errorQuery").replace("total_query", "totalQuery")
             .replace("page_alert", "pageAlert").replace("ticket_alert", "ticketAlert"))
    resource = ("apiVersion: sloth.slok.dev/v1\nkind: PrometheusServiceLevel\nmetadata: {name: checkout-slos}\n"
                "spec:\n" + textwrap.indent(camel, "  "))
    [plain] = load_specs([write(tmp_path, SLOTH, "plain.yaml")])
    [k8s] = load_specs([write(tmp_path, resource, "k8s.yaml")])
    assert rules_document(k8s) == rules_document(plain)
    assert any("metadata: not carried over" in w for w in k8s.warnings)


def test_sloth_with_every_alert_disabled_raises_none(tmp_path: Path, promtool: str) -> None:
    text = SLOTH.replace("labels: {severity: pager-latency}", "disable: true").replace(
        "labels: {severity: chat}", "disable: true")
    [spec] = load_specs([write(tmp_path, text)])
    names = {r["alert"] for r in rules_of(spec) if "alert" in r}
    assert names == {"CheckoutErrors", "CheckoutErrorsSLIAbsent"}  # no CheckoutSlow, no CheckoutSlowSLIAbsent
    out = tmp_path / "out"
    assert run_cli("compile", str(tmp_path / "spec.yaml"), "--out", str(out)).returncode == 0
    tests = subprocess.run([promtool, "test", "rules", "checkout.test.yaml"], cwd=out / "promtool-tests",
                           capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout[-2000:]


def test_sloth_raw_sli_is_an_average_of_ratios(tmp_path: Path, promtool: str) -> None:
    text = textwrap.dedent("""\
        version: "prometheus/v1"
        service: "wifi"
        slos:
          - name: "quality"
            objective: 95
            sli:
              raw:
                error_ratio_query: 1 - avg(avg_over_time(wifi_quality_ratio[{{.window}}]))
            alerting: {name: WifiQuality}
        """)
    [spec] = load_specs([write(tmp_path, text)])
    rules = {r["record"]: r["expr"] for r in rules_of(spec) if "record" in r}
    assert rules["forge_slo:sli_error:ratio_rate5m"] == \
        "(1 - avg(avg_over_time(wifi_quality_ratio[5m]))) / ((1 - avg(avg_over_time(wifi_quality_ratio[5m]))) * 0 + 1)"
    # Each evaluation weighs one: the period's ratio is the mean of the 5m ratios (between 10% and 30% here).
    labels = '{forge_slo_name="quality",forge_slo_service="wifi"}'
    mean = "avg_over_time(forge_slo:sli_error:ratio_rate5m[1h])"
    result = run_promtool_tests(promtool, rules_document(spec), [{
        "interval": "1m",
        "input_series": [{"series": "wifi_quality_ratio", "values": "0.9x30 0.7x29"}],
        "promql_expr_test": [{"expr": f"abs(forge_slo:period_error:ratio - {mean}) < bool 1e-9 and "
                                      f"{mean} > 0.15 and {mean} < 0.25",
                              "eval_time": "59m", "exp_samples": [{"labels": labels, "value": 1}]}],
    }], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]


def test_sloth_alert_windows_set_the_period_and_windows(tmp_path: Path) -> None:
    windows = textwrap.dedent("""\
        apiVersion: sloth.slok.dev/v1
        kind: AlertWindows
        spec:
          sloPeriod: 7d
          page:
            quick: {errorBudgetPercent: 8, shortWindow: 5m, longWindow: 1h}
            slow: {errorBudgetPercent: 12.5, shortWindow: 30m, longWindow: 6h}
          ticket:
            quick: {errorBudgetPercent: 20, shortWindow: 2h, longWindow: 1d}
            slow: {errorBudgetPercent: 42, shortWindow: 6h, longWindow: 3d}
        """)
    [spec] = load_specs([write(tmp_path, SLOTH), write(tmp_path, windows, "windows.yaml")])
    assert spec.period_seconds == 7 * 86400
    page, ticket = spec.page_and_ticket(spec.slos[1])
    assert [(w.long_seconds, w.short_seconds, w.factor) for w in page.windows] == [(3600, 300, 13.44),
                                                                                    (21600, 1800, 3.5)]
    assert [w.factor for w in ticket.windows] == [1.4, 0.98]
    result = run_cli("validate", str(tmp_path / "windows.yaml"))
    assert result.returncode == 2 and "holds no service spec" in result.stderr


# OpenSLO ----------------------------------------------------------------------------------------------------

SHARED = textwrap.dedent("""\
    - apiVersion: openslo/v1
      kind: Service
      metadata: {name: search, labels: {team: [discovery, sre]}}
      spec: {description: Product search}
    - apiVersion: openslo/v1
      kind: SLI
      metadata: {name: search-good}
      spec:
        ratioMetric:
          counter: true
          good:
            metricSource: {type: Prometheus, spec: {query: 'sum by (region) (search_requests_total{code!~"5.."})'}}
          total: {metricSource: {type: Prometheus, spec: {query: 'sum by (region) (search_requests_total)'}}}
    """)
SLOS = textwrap.dedent("""\
    apiVersion: openslo/v1
    kind: SLO
    metadata: {name: availability, displayName: Search availability}
    spec:
      service: search
      indicatorRef: search-good
      timeWindow: [{duration: 28d, isRolling: true}]
      budgetingMethod: Occurrences
      objectives: [{target: 0.995}]
    ---
    apiVersion: openslo.com/v2alpha
    kind: SLO
    metadata: {name: errors, labels: {tier: gold}}
    spec:
      serviceRef: search
      sli:
        spec:
          ratioMetric:
            bad: {dataSourceRef: prom, spec: {query: 'search_requests_total{code=~"5.."}'}}
            total: {dataSourceRef: prom, spec: {query: 'sum(rate(search_requests_total[{{.window}}]))'}}
      timeWindow: [{duration: 4w, isRolling: true}]
      budgetingMethod: Occurrences
      objectives: [{targetPercent: 99}]
    ---
    apiVersion: openslo.com/v2alpha
    kind: DataSource
    metadata: {name: prom}
    spec: {type: Prometheus, connectionDetails: {url: "http://prometheus:9090"}}
    """)


def test_openslo_documents_refer_across_files_lists_and_versions(tmp_path: Path, promtool: str) -> None:
    [spec] = load_specs([write(tmp_path, SHARED, "shared.yaml"), write(tmp_path, SLOS, "slos.yaml")])
    assert (spec.service, spec.period_seconds, spec.description) == ("search", 28 * 86400, "Product search")
    assert dict(spec.labels) == {"team": "discovery,sre"}
    assert [(s.name, s.objective_percent) for s in spec.slos] == [("availability", 99.5), ("errors", 99.0)]
    rules = {(r["record"], r["labels"]["forge_slo_name"]): r["expr"] for r in rules_of(spec) if "record" in r}
    # Counter expressions take their rate inside the sum; a query with a window is kept; a selector is summed.
    assert rules[("forge_slo:sli_requests:rate1h", "availability")] == \
        "sum by (region) (rate(search_requests_total[1h]))"
    assert rules[("forge_slo:sli_errors:rate5m", "errors")] == 'sum(rate(search_requests_total{code=~"5.."}[5m]))'
    assert rules[("forge_slo:sli_requests:rate5m", "errors")] == "sum(rate(search_requests_total[5m]))"
    assert any("displayName: not carried over" in w for w in spec.warnings)
    check_rules(promtool, tmp_path, spec)


@pytest.mark.parametrize("query, accepted", [
    ("'sum without (pod) (search_requests_total)'", True),
    ("'(sum(search_requests_total))'", True),
    ("'max(search_requests_total)'", False),
    ("'rate(search_requests_total[5m])'", False),
])
def test_openslo_counter_queries_are_rated_exactly_or_refused(tmp_path: Path, query: str, accepted: bool) -> None:
    text = SHARED.replace("'sum by (region) (search_requests_total)'", query)
    text += "- {apiVersion: openslo/v1, kind: SLO, metadata: {name: a}, spec: {service: search, " \
            "indicatorRef: search-good, objectives: [{target: 0.99}]}}\n"
    if accepted:
        load_specs([write(tmp_path, text)])
        return
    result = run_cli("validate", str(write(tmp_path, text)))
    assert result.returncode == 2
    assert "spec.ratioMetric.total.metricSource.spec.query: a counter query must be a series selector or a sum of " \
           "one" in result.stderr
    assert f"{tmp_path / 'spec.yaml'}:" in result.stderr


TIMESLICES = textwrap.dedent("""\
    apiVersion: openslo/v1
    kind: SLO
    metadata: {name: minutes}
    spec:
      service: shop
      indicator:
        metadata: {name: good-checkouts}
        spec:
          ratioMetric:
            counter: true
            good: {metricSource: {type: Prometheus, spec: {query: 'checkouts_total{result="ok"}'}}}
            total: {metricSource: {type: Prometheus, spec: {query: checkouts_total}}}
      timeWindow: [{duration: 1w, isRolling: true}]
      budgetingMethod: Timeslices
      objectives: [{target: 0.99, timeSliceTarget: 0.9, timeSliceWindow: 1m}]
    """)


def test_openslo_timeslices_count_good_and_bad_slices(tmp_path: Path, promtool: str) -> None:
    """Three one-minute slices at 50% good (under the 90% slice target) among thirty: an error ratio of 10%
    (30 slices in a 30m window; 31 where Prometheus 2 closes ranges at both ends)."""
    [spec] = load_specs([write(tmp_path, TIMESLICES)])
    labels = '{forge_slo_name="minutes",forge_slo_service="shop"}'
    # 4 requests/s, sampled every 15s; from 10m to 13m only half succeed (slices 11m, 12m and 13m are bad).
    result = run_promtool_tests(promtool, rules_document(spec), [{
        "interval": "15s",
        "input_series": [
            {"series": 'checkouts_total{result="ok"}', "values": "0+60x40 2430+30x11 2820+60x120"},
            {"series": 'checkouts_total{result="failed"}', "values": "0+0x40 30+30x11 360+0x120"},
        ],
        "promql_expr_test": [
            {"expr": "abs(forge_slo:sli_error:ratio_rate30m - 0.1) < bool 0.004", "eval_time": "40m",
             "exp_samples": [{"labels": labels, "value": 1}]},
            {"expr": "forge_slo:sli_error:ratio_rate5m", "eval_time": "40m",  # only good slices
             "exp_samples": [{"labels": f"forge_slo:sli_error:ratio_rate5m{labels}", "value": 0}]},
            # At 14m: three bad slices of five (of six where Prometheus 2 closes ranges at both ends).
            {"expr": "forge_slo:sli_error:ratio_rate5m >= bool 0.5 and forge_slo:sli_error:ratio_rate5m <= 0.6",
             "eval_time": "14m", "exp_samples": [{"labels": labels, "value": 1}]},
        ],
    }], tmp_path, evaluation_interval="1m")
    assert result.returncode == 0, result.stdout[-3000:]


def test_openslo_threshold_occurrences_count_evaluations(tmp_path: Path, promtool: str) -> None:
    """A threshold metric: every evaluation of every series is an event, bad on the wrong side of the value."""
    text = textwrap.dedent("""\
        apiVersion: openslo/v1alpha
        kind: SLO
        metadata: {name: render}
        spec:
          service: shop
          indicator:
            thresholdMetric: {source: prometheus, queryType: promql, query: 'page_render_ms{page="home"}'}
          timeWindows: [{unit: Day, count: 7, isRolling: true}]
          budgetingMethod: Occurrences
          objectives: [{op: lt, value: 1500, target: 0.95}]
        """)
    [spec] = load_specs([write(tmp_path, text)])
    labels = '{forge_slo_name="render",forge_slo_service="shop"}'
    result = run_promtool_tests(promtool, rules_document(spec), [{
        "interval": "1m",
        "input_series": [{"series": 'page_render_ms{page="home",instance="a"}', "values": "900x24 2000x5 900x20"},
                         {"series": 'page_render_ms{page="home",instance="b"}', "values": "900x50"}],
        # Six bad evaluations of one series of two over 30 minutes: 10% (6 of 31 each, where Prometheus 2
        # closes ranges at both ends).
        "promql_expr_test": [{"expr": "abs(forge_slo:sli_error:ratio_rate30m - 0.1) < bool 0.004",
                              "eval_time": "30m", "exp_samples": [{"labels": labels, "value": 1}]}],
    }], tmp_path, evaluation_interval="1m")
    assert result.returncode == 0, result.stdout[-3000:]


ALERTING = textwrap.dedent("""\
    - apiVersion: openslo/v1
      kind: SLO
      metadata: {name: checkout}
      spec:
        service: shop
        indicator:
          spec:
            ratioMetric:
              counter: true
              bad:
                metricSource:
                  type: Prometheus
                  spec: {query: 'checkouts_total{result="failed"}', dimensions: [region]}
              total: {metricSource: {type: Prometheus, spec: {query: checkouts_total}}}
        timeWindow: [{duration: 30d, isRolling: false, calendar: {startTime: "2024-01-01 00:00:00", timeZone: UTC}}]
        budgetingMethod: Occurrences
        objectives: [{target: 0.999}]
        alertPolicies:
          - alertPolicyRef: fast
          - kind: AlertPolicy
            metadata: {name: slow, labels: {team: [shop]}}
            spec:
              conditions:
                - conditionRef: slow-burn
                - kind: AlertCondition
                  metadata: {name: never}
                  spec: {severity: ticket, condition: {kind: burnrate, op: lte, threshold: 1, lookbackWindow: 1d}}
              notificationTargets: [{targetRef: shop-email}]
    - apiVersion: openslo/v1
      kind: AlertPolicy
      metadata: {name: fast, annotations: {runbook: "https://runbooks.example/checkout"}}
      spec:
        alertWhenBreaching: true
        conditions:
          - kind: AlertCondition
            metadata: {name: fast-burn}
            spec: {severity: critical, condition: {kind: burnrate, op: gt, threshold: 14.4, lookbackWindow: 1h,
                                                   alertAfter: 2m}}
    - apiVersion: openslo/v1
      kind: AlertCondition
      metadata: {name: slow-burn}
      spec: {severity: ticket, condition: {kind: burnrate, op: gt, threshold: 3, lookbackWindow: 1d, alertAfter: 1h}}
    """)


def test_openslo_burn_rate_conditions_become_the_slos_alerts(tmp_path: Path, promtool: str) -> None:
    [spec] = load_specs([write(tmp_path, ALERTING)])
    page, ticket = spec.page_and_ticket(spec.slos[0])
    assert [(w.long_seconds, w.short_seconds, w.factor) for w in page.windows] == [(3600, 300, 14.4)]
    assert (page.for_seconds, dict(page.labels), dict(page.annotations)) == \
        (120, {"severity": "critical"}, {"runbook": "https://runbooks.example/checkout"})
    assert [(w.long_seconds, w.short_seconds, w.factor) for w in ticket.windows] == [(86400, 7200, 3)]
    assert (ticket.for_seconds, dict(ticket.labels)) == (3600, {"team": "shop"})
    warnings = "\n".join(spec.warnings)
    for dropped in ("calendar: not carried over", "dimensions: not carried over", "notificationTargets: not "
                    "carried over", "op: not carried over: a condition that fires while the burn rate is lte"):
        assert dropped in warnings
    assert "a short window of 5m (1/12 of the lookback window)" in warnings
    check_rules(promtool, tmp_path, spec)
    result = run_cli("validate", str(tmp_path / "spec.yaml"))
    assert result.returncode == 0 and "warning:" in result.stderr and "calendar: not carried over" in result.stderr


# Pyrra ------------------------------------------------------------------------------------------------------

def pyrra(indicator: str, extra: str = "") -> str:
    return ("apiVersion: pyrra.dev/v1alpha1\nkind: ServiceLevelObjective\nmetadata: {name: api, namespace: web}\n"
            f"spec:\n  target: '99.5'\n  window: 2w\n{extra}  indicator:\n" + textwrap.indent(indicator, "    "))


def test_pyrra_indicators_and_grouping(tmp_path: Path, promtool: str) -> None:
    ratio = ("ratio:\n  errors: {metric: 'http_requests_total{code=~\"5..\"}'}\n"
             "  total: {metric: http_requests_total}\n  grouping: [handler]\n")
    [spec] = load_specs([write(tmp_path, pyrra(ratio))])
    assert (spec.service, spec.period_seconds, spec.group_by) == ("api", 14 * 86400, ("handler",))
    assert spec.slos[0].objective_percent == 99.5
    rules = {r["record"]: r["expr"] for r in rules_of(spec) if "record" in r}
    assert rules["forge_slo:sli_errors:rate5m"] == 'sum by (handler) (rate(http_requests_total{code=~"5.."}[5m]))'
    assert any("metadata.namespace: not carried over" in w for w in spec.warnings)
    check_rules(promtool, tmp_path, spec)

    latency = "latency:\n  success: {metric: 'rpc_seconds_bucket{le=\"0.25\"}'}\n  total: {metric: rpc_seconds_count}\n"
    [spec] = load_specs([write(tmp_path, pyrra(latency))])
    rules = {r["record"]: r["expr"] for r in rules_of(spec) if "record" in r}
    assert rules["forge_slo:sli_errors:rate5m"] == \
        '(sum(rate(rpc_seconds_count[5m]))) - (sum(rate(rpc_seconds_bucket{le="0.25"}[5m])))'

    gauge = "bool_gauge:\n  metric: probe_success{job=\"blackbox\"}\n  grouping: [instance]\n"
    [spec] = load_specs([write(tmp_path, pyrra(gauge))])
    labels = '{forge_slo_name="api",forge_slo_service="api",instance="a"}'
    # A probe failing 6 of 30 minutes: a 20% error ratio over 30 minutes (6 of 31 samples in Prometheus 2).
    result = run_promtool_tests(promtool, rules_document(spec), [{
        "interval": "1m",
        "input_series": [{"series": 'probe_success{job="blackbox",instance="a"}', "values": "1x24 0x5 1x20"}],
        "promql_expr_test": [{"expr": "abs(forge_slo:sli_error:ratio_rate30m - 0.2) < bool 0.007", "eval_time": "30m",
                              "exp_samples": [{"labels": labels, "value": 1}]}],
    }], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]


def test_pyrra_native_histogram_latency_needs_a_prometheus_that_reads_them(tmp_path: Path, promtool: str) -> None:
    native = "latencyNative:\n  latency: 200ms\n  total: {metric: 'rpc_duration_seconds{code=\"ok\"}'}\n" \
             "  grouping: [method]\n"
    path = write(tmp_path, pyrra(native))
    result = run_cli("compile", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert f"{path}:9: spec.indicator.latencyNative: a native-histogram latency SLI needs a Prometheus that " \
           "evaluates native histograms" in result.stderr and "--native-histograms" in result.stderr
    [spec] = load_specs([path], native_histograms=True)
    rules = {r["record"]: r["expr"] for r in rules_of(spec) if "record" in r}
    assert rules["forge_slo:sli_errors:rate5m"] == (
        'histogram_count(sum by (method) (rate(rpc_duration_seconds{code="ok"}[5m]))) * (1 - histogram_fraction(0, '
        '0.2, sum by (method) (rate(rpc_duration_seconds{code="ok"}[5m]))))')
    check_rules(promtool, tmp_path, spec)


def test_pyrra_alerting_fields(tmp_path: Path) -> None:
    ratio = "ratio:\n  errors: {metric: 'x_total{code=\"500\"}'}\n  total: {metric: x_total}\n"
    alerting = "  alerting:\n    name: ApiBudgetBurn\n    severities: {fastBurn: critical, mediumBurn: critical, " \
               "slowBurn: warning, longTermBurn: info}\n"
    [spec] = load_specs([write(tmp_path, pyrra(ratio, alerting))])
    page, ticket = spec.page_and_ticket(spec.slos[0])
    assert spec.slos[0].alert_name == "ApiBudgetBurn"
    assert (page.labels["severity"], ticket.labels["severity"]) == ("critical", "warning")
    assert any("longTermBurn: not carried over: longTermBurn differs from slowBurn" in w for w in spec.warnings)
    [spec] = load_specs([write(tmp_path, pyrra(ratio, "  alerting: {disabled: true}\n"))])
    assert not any("alert" in r for r in rules_of(spec))


def test_bad_imports_are_reported_with_file_line_and_field(tmp_path: Path) -> None:
    with pytest.raises(SpecErrors) as info:
        load_specs([write(tmp_path, pyrra("ratio: {errors: {metric: 'x_total'}}\n"))])
    assert "spec.indicator.ratio: missing required field 'total'" in str(info.value)
    result = run_cli("validate", str(write(tmp_path, TIMESLICES.replace("timeSliceTarget: 0.9, ", ""))))
    assert result.returncode == 2 and "spec.objectives[0]: Timeslices budgeting needs 'timeSliceTarget'" in \
        result.stderr and "Traceback" not in result.stderr
    # Found by fuzzing: a superscript digit before a month, and a plugin chain that is not a list.
    result = run_cli("validate", str(write(tmp_path, TIMESLICES.replace("duration: 1w", "duration: ²M"))))
    assert result.returncode == 2 and "spec.timeWindow[0].duration: '²M' is not a duration" in result.stderr
    result = run_cli("validate", str(write(tmp_path, SLOTH.replace("slos:\n", "slo_plugins: {chain: 1}\nslos:\n"))))
    assert result.returncode == 2 and "slo_plugins: Sloth plugins cannot be imported: a plugin is Go code" in \
        result.stderr and "Traceback" not in result.stderr


# Any mutation of the peers' shapes: a spec or a SpecError, never another exception -------------------------

PEER_FILES = sorted((REPO / "tests" / "data" / "peers").glob("*/*.y*ml"))
ODD = [None, True, 0, -1, 2**53 + 1, 1e308, math.nan, "", "x", "\x1b", "²M", "99999999999999M", "0s", "1d",
       "{{window}}", "{{.window}}", "sum(", 'x{a="b"}', "max(x)", "Prometheus", "Timeslices", "burnrate", [], {},
       [{"id": "p"}], {"chain": 1}]
odd_values = st.recursive(st.one_of(st.sampled_from(ODD), st.text(max_size=8)), lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


def _places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out.extend(_places(value, (*path, key)))
    return out


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_peer_specs_load_or_fail_with_a_spec_error(tmp_path_factory: pytest.TempPathFactory,
                                                           data: st.DataObject) -> None:
    from forge_slo.compile.openslo_export import export_openslo
    from forge_slo.compile.pipeline import compile_specs

    source = data.draw(st.sampled_from(PEER_FILES))
    docs = list(yaml.safe_load_all(source.read_text()))
    for _ in range(data.draw(st.integers(1, 3))):
        places = [p for d in range(len(docs)) for p in _places(docs[d], (d,))]
        where = data.draw(st.sampled_from(places))
        parent: Any = docs
        for key in where[:-1]:
            parent = parent[key]
        # A copy: ODD's lists and dicts are shared objects, and a later mutation inside one of them would
        # change ODD itself, so Hypothesis would draw differently when it replays an example.
        parent[where[-1]] = copy.deepcopy(data.draw(odd_values))
    path = tmp_path_factory.mktemp("mutated") / source.name
    path.write_text(yaml.safe_dump_all(docs))
    try:
        specs = load_specs([path], native_histograms=data.draw(st.booleans()))
    except SpecErrors as exc:
        assert all(e.file for e in exc.errors)
        return
    compile_specs(specs)
    export_openslo(specs)
