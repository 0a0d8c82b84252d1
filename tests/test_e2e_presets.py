"""The SLO loop for every preset, on real parts: the simulator speaking vLLM, SGLang, TGI and Triton, one real
Prometheus scraping all four every second with the rules compiled from one spec per preset, and bounded
traffic that meets a fault of known size: a fifth of the requests failed by the server and, separately,
requests shed because the queue is full. The recorded error ratios are the ones the traffic got back."""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prom_fixture import PrometheusHandle, start_prometheus

from forge_slo import conventions as cv
from forge_slo.compile import dashboards
from forge_slo.compile.producer import CompileOptions
from forge_slo.compile.rules import rules_document
from forge_slo.compile.yamlout import dump
from forge_slo.sim import SIM_PRESETS, SimProcess
from forge_slo.sim.answers import ANSWERS
from forge_slo.sources.prometheus import PrometheusClient
from forge_slo.spec import load_specs
from forge_slo.spec.presets import PRESETS, Histogram
from tests.dashboard_lint import panel_queries

MODEL = "e2e-model"
ERROR_RATE = 0.2
PREFILL_S = 0.15
# Two slots and one place in the queue: four clients keep it full, so some requests are shed.
SIM = {
    "seed": 11,
    "models": [{"name": MODEL, "max_num_seqs": 2, "max_queued_requests": 1, "prefill_base_s": PREFILL_S,
                "prefill_per_token_s": 0.0, "itl_s": 0.01, "itl_distribution": "fixed", "batch_slowdown": 0.0,
                "output_tokens": {"distribution": "fixed", "value": 4}}],
    "faults": [{"kind": "errors", "rate": ERROR_RATE}],
}
CLIENTS = 4
TRAFFIC_S = 25.0
BASE_WINDOW_S = 10


def _bound(histogram: Histogram, seconds: float, *, above: bool) -> float:
    """The bucket bound (in seconds) nearest ``seconds`` from above or from below: an exact threshold."""
    bounds = [b * histogram.unit_seconds for b in histogram.buckets]
    return min(b for b in bounds if b >= seconds) if above else max(b for b in bounds if b <= seconds)


def tight_alias(preset: str) -> str:
    return "ttft" if "ttft" in PRESETS[preset].histograms else "e2e"


def spec_text(preset: str) -> str:
    """Availability with shed requests counted (the default) and ignored; every latency alias the server has
    with a threshold no request reaches (1 s and up), and one (under the 150 ms prefill) every request misses."""
    p = PRESETS[preset]
    group = f"group_by: [{p.model_label}]\n" if p.model_label else ""
    slos = ["  - {name: availability, objective: 99, sli: {availability: {}}}"]
    if _sheds_apart(preset):  # vLLM's shed requests are among its 5xx: "ignore" is refused there
        slos.append("  - {name: availability-served, objective: 99, sli: {availability: {load_shedding: ignore}}}")
    for alias, histogram in p.histograms.items():
        slos.append(f"  - {{name: {alias}, objective: 99, sli: {{latency: {{metric: {alias}, "
                    f"threshold: {_bound(histogram, 1.0, above=True)!r}}}}}}}")
    tight = tight_alias(preset)
    slos.append(f"  - {{name: {tight}-tight, objective: 99, sli: {{latency: {{metric: {tight}, "
                f"threshold: {_bound(p.histograms[tight], 0.1, above=False)!r}}}}}}}")
    return (f"apiVersion: forge-slo/v1\nkind: ServiceSLO\nservice: e2e-{preset}\npreset: {preset}\n{group}"
            "period: 10m\nalerting:\n  page:\n    labels: {severity: critical}\n"
            "    windows: [{long: 30s, short: 10s, factor: 14.4}]\n  min_events: 5\n  absent_for: 1m\n"
            "slos:\n" + "\n".join(slos) + "\n")


@dataclass
class Traffic:
    """Bounded clients in threads: non-streaming chat requests until stopped, each answer sorted by status."""

    url: str
    preset: str
    clients: int = CLIENTS
    max_seconds: float = 60.0
    max_requests: int = 3000
    served: int = 0
    failed: int = 0
    shed: int = 0
    other: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor | None = None

    @property
    def sent(self) -> int:
        return self.served + self.failed + self.shed + len(self.other)

    def _client(self) -> None:
        answers = ANSWERS[self.preset]
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < deadline and self.sent < self.max_requests:
                try:
                    answer = str(client.post(f"{self.url}/v1/chat/completions", json=body).status_code)
                except httpx.HTTPError as e:
                    answer = repr(e)
                with self._lock:
                    if answer == "200":
                        self.served += 1
                    elif answer == str(answers.server_error):
                        self.failed += 1
                    elif answer == str(answers.shed):
                        self.shed += 1
                    else:
                        self.other.append(answer)
                self._stop.wait(0.03)

    def __enter__(self) -> Traffic:
        self._pool = ThreadPoolExecutor(self.clients)
        for _ in range(self.clients):
            self._pool.submit(self._client)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._pool is not None
        self._pool.shutdown(wait=True)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g}s"
        time.sleep(0.25)


def warm_up(sim: SimProcess, preset: str) -> None:
    """Before Prometheus scrapes: a served, a failed and a shed request, so every series the SLIs read exists
    (HTTP counters appear with their first request) and rate() sees every request of the measured traffic."""
    with Traffic(sim.url, preset, max_seconds=10) as traffic:
        wait_until(lambda: min(traffic.served, traffic.failed, traffic.shed) > 0, 10, f"{preset}: each outcome")


@dataclass
class Stack:
    prom: PrometheusHandle
    tmp: Path
    traffic: dict[str, Traffic]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e-presets")
    rules, specs = [], []
    for preset in SIM_PRESETS:
        path = tmp / f"e2e-{preset}.yaml"
        path.write_text(spec_text(preset))
        [spec] = load_specs([path])
        specs.append(spec)
        rules.append(tmp / f"e2e-{preset}.rules.yaml")
        rules[-1].write_text(dump(rules_document(spec)))
    for artifact in dashboards.PRODUCER.artifacts(specs, CompileOptions())[0]:
        (tmp / Path(artifact.path).name).write_text(artifact.content)
    sims = {preset: SimProcess(SIM, preset=preset) for preset in SIM_PRESETS}
    try:
        for preset, sim in sims.items():
            sim.start()
            warm_up(sim, preset)
        prom = start_prometheus(tmp, [f"127.0.0.1:{sim.port}" for sim in sims.values()], rule_files=rules,
                                interval="1s")
        try:
            recorded = [f"{cv.request_rate(BASE_WINDOW_S)}{_slo(preset, 'availability')}" for preset in SIM_PRESETS]
            wait_until(lambda: all(prom.query(expr) for expr in recorded), 30, "the SLI recordings")
            traffic = {preset: Traffic(sim.url, preset) for preset, sim in sims.items()}
            with contextlib.ExitStack() as running:
                for t in traffic.values():
                    running.enter_context(t)
                time.sleep(TRAFFIC_S)
            # Let the last requests pass through the base window before reading the period SLIs.
            time.sleep(BASE_WINDOW_S + 3)
            yield Stack(prom, tmp, traffic)
        finally:
            prom.stop()
    finally:
        for sim in sims.values():
            sim.stop()


def _slo(preset: str, name: str) -> str:
    # No model matcher: one model is served, and SGLang's availability has no model label (its HTTP counter
    # carries none, so the SLI is the server's).
    return f'{{{cv.SERVICE_LABEL}="e2e-{preset}",{cv.SLO_LABEL}="{name}"}}'


def period_ratio(stack: Stack, preset: str, slo: str) -> float:
    with PrometheusClient(stack.prom.url) as client:
        samples = client.query(f"{cv.PERIOD_ERROR_RATIO}{_slo(preset, slo)}")
    assert len(samples) == 1, (preset, slo, samples)
    return samples[0].value


@pytest.mark.parametrize("preset", SIM_PRESETS)
def test_an_availability_fault_shows_at_its_size(stack: Stack, preset: str) -> None:
    """Failed and shed requests, as the clients got them back, are the recorded error ratio: with shedding
    counted, (failed + shed) / all; with it ignored, failed / (served + failed)."""
    traffic = stack.traffic[preset]
    assert traffic.other == [], traffic.other[:5]
    assert traffic.served > 100 and traffic.failed > 20 and traffic.shed > 20, traffic
    counted = (traffic.failed + traffic.shed) / traffic.sent
    ignored = traffic.failed / (traffic.served + traffic.failed)
    # The fault fails a fifth of the requests that arrive (before any is shed), sampled.
    assert traffic.failed / traffic.sent == pytest.approx(ERROR_RATE, abs=0.05)
    assert period_ratio(stack, preset, "availability") == pytest.approx(counted, rel=0.1)
    if _sheds_apart(preset):
        assert period_ratio(stack, preset, "availability-served") == pytest.approx(ignored, rel=0.15)


def _sheds_apart(preset: str) -> bool:
    outcomes = PRESETS[preset].outcomes
    return outcomes is not None and outcomes.shed is not None


@pytest.mark.parametrize("preset", SIM_PRESETS)
def test_every_latency_sli_gets_the_servers_data(stack: Stack, preset: str) -> None:
    """Every latency histogram of the preset feeds its SLI: no served request reaches 1 s, and every one
    misses a threshold under the 150 ms prefill (which also proves the unit: Triton counts milliseconds)."""
    for alias in PRESETS[preset].histograms:
        ratio = period_ratio(stack, preset, alias)
        assert math.isfinite(ratio) and ratio < 0.05, (alias, ratio)
    tight = period_ratio(stack, preset, f"{tight_alias(preset)}-tight")
    assert tight > 0.95, tight


def test_every_dashboard_panel_returns_data(stack: Stack) -> None:
    """After the traffic, every query of every preset's dashboard and of the overview returns a series."""
    empty = []
    with PrometheusClient(stack.prom.url) as client:
        for name in [*(f"e2e-{preset}.json" for preset in SIM_PRESETS), "overview.json"]:
            queries = panel_queries(json.loads((stack.tmp / name).read_text()))
            assert queries, name
            empty += [f"{name}: {title}: {expr}" for title, expr in queries if not client.query(expr)]
    assert empty == [], "\n".join(empty)
