"""A second rule engine: the compiled rules, unchanged, on VictoriaMetrics' vmalert beside Prometheus.

Both engines scrape one loopback target whose counters are a function of the wall clock, so each reads the same
data whenever it scrapes; both evaluate the same rule file. The SLI's error ratio steps from 2% to 40% part way.
Before the step and once the short windows hold only the new traffic, every recorded error ratio must agree
within 1%; the page alert must fire on both.

Two differences are measured and asserted within bounds (the README names them):

- vmalert writes recording-rule results back through remote write and does not read them within the same
  evaluation (its documented limitation), so a burn-rate alert sees the SLI one evaluation later than in
  Prometheus, which chains rules within a group;
- MetricsQL's ``rate`` does not extrapolate to the window's edges (it starts from the sample before the window),
  so right after a step a window's ratio can cross the threshold an evaluation later or earlier.
"""

from __future__ import annotations

import http.server
import math
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from forge_slo.compile.producer import RuleGroups
from forge_slo.compile.rules import rules_document
from forge_slo.compile.yamlout import dump
from forge_slo.spec import load_specs
from tests.prom_fixture import PrometheusHandle, prometheus_available, start_prometheus
from tests.vm_fixture import VictoriaMetricsHandle, start_victoria_metrics, victoria_metrics_available

SPEC = textwrap.dedent("""\
    apiVersion: forge-slo/v1
    kind: ServiceSLO
    service: vmcheck
    period: 1h
    alerting:
      min_events: 1
      page: {for: 0s, windows: [{long: 10s, short: 5s, factor: 10}]}
      ticket: {for: 0s, windows: [{long: 20s, short: 10s, factor: 4}]}
    slos:
      - name: requests
        objective: 99
        sli:
          ratio:
            errors: 'sum(rate(vmcheck_requests_total{code=~"5.."}[{{window}}]))'
            total: 'sum(rate(vmcheck_requests_total[{{window}}]))'
    """)
EVAL_S = 2.0  # the rule groups' interval, written into the rule file (--group-interval 2s)
SCRAPE = "1s"
PAGE_RATIO = 0.1  # factor 10 x budget 1%
RATIOS = ("forge_slo:sli_error:ratio_rate5s", "forge_slo:sli_error:ratio_rate10s",
          "forge_slo:sli_error:ratio_rate20s", "forge_slo:period_error:ratio")


class Traffic:
    """Counters of requests by status code, growing with the wall clock: 100 requests/s, 2% failing, then 40%."""

    def __init__(self) -> None:
        self.start = time.time()
        self.step_at: float | None = None

    def step(self) -> None:
        self.step_at = time.time()

    def body(self) -> str:
        now = time.time()
        before = (self.step_at or now) - self.start
        after = now - self.step_at if self.step_at is not None else 0.0
        failed = 2.0 * before + 40.0 * after
        total = 100.0 * (before + after)
        served = total - failed
        return "".join(f'vmcheck_requests_total{{code="{code}"}} {value!r}\n'
                       for code, value in (("200", served), ("500", failed * 0.75), ("503", failed * 0.25)))


@pytest.fixture()
def traffic_target() -> Iterator[tuple[str, Traffic]]:
    """``host:port`` serving the traffic's counters on /metrics, and sinking alert notifications (POST)."""
    traffic = Traffic()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            data = traffic.body().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", traffic
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _latest(query: Callable[[str], list[dict[str, Any]]], name: str) -> float | None:
    result = query(name)
    return float(result[0]["value"][1]) if result else None


def _wait(what: str, condition: Callable[[], bool], timeout: float, engines: tuple[Any, ...]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for engine in engines:
            if isinstance(engine, VictoriaMetricsHandle):
                engine.check_running()
        if condition():
            return
        time.sleep(0.25)
    raise TimeoutError(f"{what} did not happen within {timeout:g}s")


def _page_active_at(alerts: list[dict[str, Any]]) -> float | None:
    for alert in alerts:
        if alert["labels"].get("forge_slo_severity") == "page" and alert["state"] == "firing":
            return datetime.fromisoformat(alert["activeAt"][:26].rstrip("Z") + "+00:00").timestamp()
    return None


def _first_crossing(query: Callable[[str], list[dict[str, Any]]], since: float) -> float | None:
    """The first evaluation after ``since`` at which the engine's recorded page windows both passed the factor."""
    samples = {}
    for name in ("forge_slo:sli_error:ratio_rate10s", "forge_slo:sli_error:ratio_rate5s"):
        result = query(f"{name}[60s]")
        samples[name] = {round(float(t)): float(v) for t, v in result[0]["values"]} if result else {}
    times = sorted(t for t in samples["forge_slo:sli_error:ratio_rate10s"] if t >= since - 1)
    for t in times:
        if all(samples[n].get(t, 0.0) > PAGE_RATIO for n in samples):
            return float(t)
    return None


def _agree(prom: PrometheusHandle, vm: VictoriaMetricsHandle, names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    out = {}
    for name in names:
        p, v = _latest(prom.query, name), _latest(vm.query, name)
        assert p is not None and v is not None, f"{name}: Prometheus {p}, vmalert {v}"
        out[name] = (p, v)
        assert math.isclose(p, v, rel_tol=0.01), f"{name}: Prometheus {p:.6g}, vmalert {v:.6g} differ by more than 1%"
    return out


def test_rules_run_unchanged_on_vmalert(tmp_path: Path, traffic_target: tuple[str, Traffic]) -> None:
    if not prometheus_available() or not victoria_metrics_available():
        pytest.fail("prometheus, victoria-metrics or vmalert is missing: scripts/test.sh installs Debian's "
                    "'prometheus' and 'victoria-metrics' packages")
    target, traffic = traffic_target
    (tmp_path / "spec.yaml").write_text(SPEC)
    [spec] = load_specs([tmp_path / "spec.yaml"])
    rules = tmp_path / "vmcheck.rules.yaml"
    rules.write_text(dump(rules_document(spec, RuleGroups(interval_seconds=EVAL_S))))
    prom = start_prometheus(tmp_path, [target], [rules], interval=SCRAPE)
    try:
        vm = start_victoria_metrics(tmp_path, [target], [rules], interval=SCRAPE,
                                    notifier_url=f"http://{target}")
        try:
            _compare(prom, vm, traffic)
        finally:
            vm.stop()
    finally:
        prom.stop()


def _compare(prom: PrometheusHandle, vm: VictoriaMetricsHandle, traffic: Traffic) -> None:
    engines = (prom, vm)
    # Steady 2% errors: every window's ratio and the period's are exact on both engines. (VictoriaMetrics is
    # asked to make the new recorded series searchable at once, instead of in some 10s per layer of rules.)

    def recorded() -> bool:
        vm.flush()
        return all(_latest(e.query, n) is not None for e in engines for n in RATIOS)

    _wait("every ratio recorded by both engines", recorded, 40, engines)
    before = _agree(prom, vm, RATIOS)
    assert math.isclose(before["forge_slo:sli_error:ratio_rate5s"][0], 0.02, rel_tol=0.01)
    assert _page_active_at(prom.api("alerts")["alerts"]) is None and _page_active_at(vm.alerts()) is None

    traffic.step()
    assert traffic.step_at is not None
    fired: dict[str, float] = {}

    def both_paged() -> bool:
        for name, alerts in (("prometheus", lambda: prom.api("alerts")["alerts"]), ("vmalert", vm.alerts)):
            if name not in fired and (at := _page_active_at(alerts())) is not None:
                fired[name] = at
        return len(fired) == 2

    _wait("the page alert on both engines", both_paged, 40, engines)
    # Once the page windows hold only the new traffic, their ratios agree again (40%).
    _wait("10s of the new traffic", lambda: time.time() > traffic.step_at + 10 + 2 * EVAL_S + 1, 40, engines)
    after = _agree(prom, vm, RATIOS[:2])
    assert math.isclose(after["forge_slo:sli_error:ratio_rate5s"][0], 0.4, rel_tol=0.01)
    # The period's ratio mixes both phases, each engine over its own evaluations: close, not equal.
    mixed = {name: (_latest(prom.query, name), _latest(vm.query, name)) for name in RATIOS[2:]}

    # When the page fires, explained: each engine's recorded ratios crossed the threshold within an evaluation
    # (and a scrape) of the other's; Prometheus pages at that evaluation, vmalert at its next one.
    crossed = {"prometheus": _first_crossing(prom.query, traffic.step_at),
               "vmalert": _first_crossing(vm.query, traffic.step_at)}
    assert crossed["prometheus"] is not None and crossed["vmalert"] is not None, crossed
    lag = fired["vmalert"] - fired["prometheus"]
    print(f"page fired {lag:+.1f}s later on vmalert (evaluation interval {EVAL_S:g}s); ratios crossed "
          f"{crossed['vmalert'] - crossed['prometheus']:+.1f}s apart; vmalert paged "
          f"{fired['vmalert'] - crossed['vmalert']:.1f}s after its ratios crossed; before {before}; after {after}; "
          f"while mixed {mixed}")
    # Bounds with room for a loaded machine: a scrape and a second of jitter beyond the evaluation, and for
    # vmalert one more evaluation when its write-back is late.
    assert abs(crossed["vmalert"] - crossed["prometheus"]) <= EVAL_S + 2
    assert fired["prometheus"] - crossed["prometheus"] <= 1.5
    assert 0 <= fired["vmalert"] - crossed["vmalert"] <= 2 * EVAL_S + 1.5
