"""The whole loop on real parts: the simulator, a real Prometheus scraping it every second, rules and
dashboards compiled from a spec with short windows, bounded traffic, and an outage injected on demand."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from prom_fixture import PrometheusHandle, start_prometheus

from forge_slo import conventions as cv
from forge_slo.compile import dashboards
from forge_slo.compile.producer import CompileOptions
from forge_slo.compile.rules import rules_document
from forge_slo.compile.yamlout import dump
from forge_slo.sim import SimProcess
from forge_slo.sources.prometheus import PrometheusClient
from forge_slo.spec import load_specs
from tests.dashboard_lint import panel_queries

SPEC = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: e2e
preset: vllm
group_by: [model_name]
period: 10m
labels: {team: e2e}
alerting:
  page:
    labels: {severity: critical}
    for: 0s
    windows: [{long: 30s, short: 10s, factor: 14.4}]
  ticket:
    labels: {severity: warning}
    for: 0s
    windows: [{long: 2m, short: 20s, factor: 3}]
  min_events: 5
  absent_for: 1m
slos:
  - name: ttft
    objective: 99
    sli: {latency: {metric: ttft, threshold: 0.25}}
  - name: tpot
    objective: 99
    sli: {latency: {metric: tpot, threshold: 0.1}}
  - name: availability
    objective: 99
    sli: {availability: {}}
"""

SIM = {
    "seed": 7,
    "models": [{"name": "e2e-model", "max_num_seqs": 32, "prefill_base_s": 0.01, "prefill_per_token_s": 0.0,
                "itl_s": 0.005, "itl_distribution": "fixed", "batch_slowdown": 0.0,
                "output_tokens": {"distribution": "fixed", "value": 4}}],
}
BUDGET = 0.01


@dataclass
class Traffic:
    """A bounded request loop in a thread: about `rate` requests/s until stopped or `max_requests` sent."""

    url: str
    rate: float = 10.0
    max_requests: int = 2000
    max_seconds: float = 120.0
    ok: int = 0
    failed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        body = {"model": "e2e-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                "stream": True}
        with httpx.Client(timeout=5) as client:
            sent = 0
            while not self._stop.is_set() and sent < self.max_requests and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    with client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as response:
                        text = b"".join(response.iter_bytes())
                        if response.status_code == 200 and b"[DONE]" in text:
                            self.ok += 1
                        else:
                            self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                sent += 1
                self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimProcess, PrometheusHandle, Path]]:
    tmp = tmp_path_factory.mktemp("e2e")
    spec_path = tmp / "e2e.yaml"
    spec_path.write_text(SPEC)
    [spec] = load_specs([spec_path])
    rules = tmp / "e2e.rules.yaml"
    rules.write_text(dump(rules_document(spec)))
    for artifact in dashboards.PRODUCER.artifacts([spec], CompileOptions())[0]:
        (tmp / Path(artifact.path).name).write_text(artifact.content)
    with SimProcess(SIM) as sim:
        prom = start_prometheus(tmp, [f"127.0.0.1:{sim.port}"], rule_files=[rules], interval="1s")
        try:
            yield sim, prom, tmp
        finally:
            prom.stop()


def value(client: PrometheusClient, expr: str) -> float:
    samples = client.query(expr)
    assert len(samples) == 1, f"{expr}: {samples}"
    return samples[0].value


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout:g}s")


def page_alerts(client: PrometheusClient) -> list[str]:
    return sorted(a.labels.get("model_name", "") for a in client.alerts()
                  if a.state == "firing" and a.labels.get(cv.SEVERITY_LABEL) == "page"
                  and a.labels.get(cv.SLO_LABEL) == "availability")


def test_outage_pages_then_clears_and_recordings_match_traffic(
        stack: tuple[SimProcess, PrometheusHandle, Path]) -> None:
    sim, prom, tmp = stack
    avail = f'{{{cv.SERVICE_LABEL}="e2e",{cv.SLO_LABEL}="availability",model_name="e2e-model"}}'
    ttft = f'{{{cv.SERVICE_LABEL}="e2e",{cv.SLO_LABEL}="ttft",model_name="e2e-model"}}'
    with PrometheusClient(prom.url) as client:
        # The recordings exist (at zero) before the first request, so the period SLI sees all traffic.
        wait_until(lambda: client.query(f"{cv.request_rate(10)}{avail}") != [], 30, "the SLI recordings")
        with Traffic(sim.url, rate=10) as traffic:
            # Healthy traffic: no errors recorded, full budget, the TTFT SLI clean (TTFT 10 ms < 250 ms).
            time.sleep(12)
            assert value(client, f"{cv.error_ratio(10)}{avail}") == 0
            assert value(client, f"{cv.error_ratio(10)}{ttft}") == 0
            assert value(client, f"{cv.ERROR_BUDGET_REMAINING}{avail}") == 1
            requests_per_s = value(client, f"{cv.request_rate(10)}{avail}")
            assert 5 < requests_per_s < 13, requests_per_s  # the loop sends about 10/s
            assert page_alerts(client) == []

            # A 12-second outage: every request is answered 500.
            response = httpx.post(f"{sim.url}/admin/faults", json={"kind": "outage", "duration_s": 12})
            assert response.status_code == 201, response.text
            outage_started = time.monotonic()
            wait_until(lambda: page_alerts(client) == ["e2e-model"], 15, "the page alert")
            paged_after = time.monotonic() - outage_started
            # Inside the outage the short window sees only failures: error ratio 1, burn rate 1/budget.
            wait_until(lambda: value(client, f"{cv.error_ratio(10)}{avail}") == 1, 15, "an error ratio of 1")
            assert value(client, f"{cv.error_ratio(10)}{avail}") / BUDGET == pytest.approx(100)
            # The fault ends by itself; once the short window is clean the page clears.
            wait_until(lambda: page_alerts(client) == [], 40, "the page alert clearing")
        # Let the last requests pass through the 10s base window before reading the period SLI.
        time.sleep(12)
        assert paged_after < 10, paged_after
        # The period SLI matches what the traffic implies: failed / all requests sent. The first failures
        # of the outage fall before the 5xx series exists and are invisible to rate(), as on any Prometheus.
        expected = traffic.failed / (traffic.ok + traffic.failed)
        assert traffic.failed > 20 and traffic.ok > 50, (traffic.ok, traffic.failed)
        period = value(client, f"{cv.PERIOD_ERROR_RATIO}{avail}")
        assert period == pytest.approx(expected, rel=0.1), (period, expected)
        remaining = value(client, f"{cv.ERROR_BUDGET_REMAINING}{avail}")
        burn = value(client, f"{cv.PERIOD_BURN_RATE}{avail}")
        assert burn == pytest.approx(period / BUDGET, rel=1e-6, abs=1e-6)
        assert remaining == pytest.approx(1 - burn, rel=1e-6, abs=1e-6)
        assert remaining < 0  # an outage of this length overspends a 1% budget


# Panel titles that may legitimately return no series in this setting, with the reason. None so far: the
# alert panels fall back to `or vector(0)`, and the simulator exports every vLLM series the panels read.
EMPTY_OK: dict[str, str] = {}


def test_every_dashboard_panel_returns_data(stack: tuple[SimProcess, PrometheusHandle, Path]) -> None:
    """After the traffic of the previous test, every panel query returns at least one series."""
    _, prom, tmp = stack
    empty = []
    with PrometheusClient(prom.url) as client:
        for name in ("e2e.json", "overview.json"):
            dashboard = json.loads((tmp / name).read_text())
            queries = panel_queries(dashboard)
            assert queries, name
            for title, expr in queries:
                if not client.query(expr):
                    empty.append(f"{name}: {title}: {expr}")
    unexpected = [e for e in empty if not any(key in e for key in EMPTY_OK)]
    assert unexpected == [], "\n".join(unexpected)


def test_prometheus_config_with_decimal_intervals_loads_in_prometheus(tmp_path: Path, promtool: str) -> None:
    """Durations allow decimals (2.5s); Prometheus does not, so the configuration spells them its way."""
    from tests.conftest import run_cli

    spec = tmp_path / "e2e.yaml"
    spec.write_text(SPEC)
    assert run_cli("compile", str(spec), "--out", str(tmp_path / "out")).returncode == 0
    out = tmp_path / "prometheus.yml"
    made = run_cli("prometheus-config", "--scrape", "127.0.0.1:8000", "--rules", str(tmp_path / "out"),
                   "--scrape-interval", "2.5s", "--evaluation-interval", "1m30s", "--out", str(out))
    assert made.returncode == 0, made.stderr
    check = subprocess.run([promtool, "check", "config", str(out)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert yaml.safe_load(out.read_text())["global"] == {
        "scrape_interval": "2s500ms", "evaluation_interval": "1m30s", "scrape_timeout": "2s500ms"}
    bare = run_cli("prometheus-config", "--scrape", "127.0.0.1:8000", "--rules", str(tmp_path / "out"),
                   "--scrape-interval", "15")
    assert bare.returncode == 2 and "--scrape-interval" in bare.stderr and "add a unit" in bare.stderr
    assert "Traceback" not in bare.stderr
