"""On call at a glance, on real parts: the simulator scraped by a real Prometheus with the compiled rules, a
real Alertmanager loaded with the compiled routing and a webhook receiver, the status page served by
`forge-slo ui` and looked at in Debian's chromium driven by Playwright. One outage is injected; the page shows
it and Alertmanager routes it."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prom_fixture import PrometheusHandle, free_port, prometheus_available, start_prometheus

from forge_slo import conventions as cv
from forge_slo.sim import SimProcess
from forge_slo.sources.prometheus import PrometheusClient
from tests.conftest import GOLDEN, run_cli

CHAT = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: chat
preset: vllm
group_by: [model_name]
period: 10m
alerting:
  page:
    for: 0s
    windows: [{long: 30s, short: 10s, factor: 14.4}]
    annotations: {runbook_url: "https://runbooks.example/chat"}
  ticket:
    for: 10s
    windows: [{long: 2m, short: 5s, factor: 3}]
  min_events: 5
  absent_for: 1m
budget_policy:
  freeze_releases: {below_percent: 25}
slos:
  - name: ttft
    objective: 99
    sli: {latency: {metric: ttft, threshold: 0.25}}
  - name: availability
    objective: 99
    sli: {availability: {}}
"""
# A second service that stays healthy and sorts before chat by name.
ASSISTANT = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: assistant
preset: vllm
period: 10m
alerting:
  page: {windows: [{long: 30s, short: 10s, factor: 14.4}]}
  ticket: {windows: [{long: 2m, short: 5s, factor: 3}]}
slos:
  - name: ttft
    objective: 99
    sli: {latency: {metric: ttft, threshold: 0.25}}
"""
# A service whose rules were never loaded into Prometheus: the page must say "no data", not 0 or blank.
UNLOADED = ASSISTANT.replace("service: assistant", "service: batch")
MODEL = "e2e-model"
SIM = {"seed": 11, "models": [{
    "name": MODEL, "max_num_seqs": 32, "prefill_base_s": 0.01, "prefill_per_token_s": 0.0, "itl_s": 0.005,
    "itl_distribution": "fixed", "batch_slowdown": 0.0, "output_tokens": {"distribution": "fixed", "value": 4}}]}
OUTAGE_S = 45
BUDGET = 0.01
AVAILABILITY = {cv.SERVICE_LABEL: "chat", cv.SLO_LABEL: "availability", "model_name": MODEL}
CHROMIUM = os.environ.get("FORGE_SLO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]


def alertmanager_bin() -> str:
    for name in ("prometheus-alertmanager", "alertmanager"):  # Debian's name, then upstream's
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail("Alertmanager is not installed: scripts/test.sh installs Debian's prometheus-alertmanager")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {timeout:g}s")


# ------------------------------------------------------------------------------------------- real parts


@dataclass
class Sink:
    """A webhook receiver on 127.0.0.1: every notification Alertmanager posts, with the path it posted to."""

    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> str:
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def to(self, receiver: str) -> list[dict[str, Any]]:
        return [body for path, body in list(self.received) if path == f"/{receiver}"]


def routing_for_test(compiled: Path, sink_url: str) -> dict[str, Any]:
    """The compiled configuration as a user completes it: each receiver posts to the sink. The waits shrink
    from minutes to seconds so the test is quick; routes, grouping and inhibition stay as compiled."""
    config = yaml.safe_load(compiled.read_text())
    for receiver in config["receivers"]:
        receiver["webhook_configs"] = [{"url": f"{sink_url}/{receiver['name']}", "send_resolved": True}]
    for route in config["route"]["routes"]:
        route.update({"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"})
    return config


def start_alertmanager(tmp: Path, config: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = open(tmp / "alertmanager.log", "wb")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([alertmanager_bin(), f"--config.file={path}", f"--storage.path={tmp / 'am-data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "alertmanager.log").read_text()
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 20, "Alertmanager ready")
    return proc, url


@dataclass
class Ui:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_ui(tmp: Path, specs: list[Path], prometheus: str, *flags: str) -> Ui:
    ready = tmp / f"ui-{free_port()}.json"
    log = ready.with_suffix(".log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "forge_slo", "ui", *map(str, specs), "--prometheus", prometheus, "--port", "0",
             "--ready-file", str(ready), *flags], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, 20, "the page listening")
    except AssertionError:
        process.kill()
        raise
    assert process.poll() is None, log.read_text()
    return Ui(process, f"http://127.0.0.1:{json.loads(ready.read_text())['port']}", log)


class Traffic:
    """About ``rate`` chat completions per second to the simulator, in a thread, bounded in count and time."""

    def __init__(self, url: str, rate: float = 10.0, max_requests: int = 3000, max_seconds: float = 240.0) -> None:
        self.url, self.rate, self.max_requests, self.max_seconds = url, rate, max_requests, max_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        with httpx.Client(timeout=5) as client:
            for _ in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                started = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    client.post(f"{self.url}/v1/chat/completions", json=body)
                self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class Stack:
    sim: SimProcess
    prometheus: PrometheusHandle
    alertmanager: str
    sink: Sink
    ui: Ui
    specs: list[Path]
    outage_ends: float
    ticket_while_paged: dict[str, Any]


def firing(client: PrometheusClient, severity: str) -> bool:
    return any(a.state == "firing" and a.labels.get(cv.SEVERITY_LABEL) == severity
               and all(a.labels.get(k) == v for k, v in AVAILABILITY.items()) for a in client.alerts())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Everything running, traffic flowing, and an outage under way: the page has fired and Alertmanager holds
    the ticket of the same SLO inhibited."""
    if not prometheus_available():
        pytest.fail("prometheus is not installed: scripts/test.sh installs Debian's prometheus package")
    tmp = tmp_path_factory.mktemp("oncall")
    specs = [tmp / "chat.yaml", tmp / "assistant.yaml"]
    specs[0].write_text(CHAT)
    specs[1].write_text(ASSISTANT)
    unloaded = tmp / "unloaded" / "batch.yaml"
    unloaded.parent.mkdir()
    unloaded.write_text(UNLOADED)
    compiled = run_cli("compile", *map(str, specs), "--out", str(tmp / "out"))
    assert compiled.returncode == 0, compiled.stderr
    routing = tmp / "out" / "alertmanager" / "alertmanager.yaml"
    checked = subprocess.run(["amtool", "check-config", str(routing)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    sink = Sink()
    parts: list[Callable[[], object]] = [sink.stop]
    try:
        am_proc, am_url = start_alertmanager(tmp, routing_for_test(routing, sink.start()))
        parts.append(lambda: (am_proc.terminate(), am_proc.wait(10)))
        sim = SimProcess(SIM)
        sim.start()
        parts.append(sim.stop)
        prom = start_prometheus(tmp, [f"127.0.0.1:{sim.port}"], rule_files=[tmp / "out/prometheus/*.rules.yaml"],
                                interval="1s", alertmanagers=[am_url.removeprefix("http://")])
        parts.append(prom.stop)
        ui = start_ui(tmp, [*specs, unloaded], prom.url, "--refresh", "2s")
        parts.append(ui.stop)
        traffic = Traffic(sim.url).start()
        parts.append(traffic.stop)
        with PrometheusClient(prom.url) as client:
            rate = f"{cv.request_rate(5)}{{forge_slo_name=\"availability\"}}"
            wait_until(lambda: any(s.value > 5 for s in client.query(rate)), 30, "traffic in the recordings")
            time.sleep(5)
            response = httpx.post(f"{sim.url}/admin/faults", json={"kind": "outage", "duration_s": OUTAGE_S})
            assert response.status_code == 201, response.text
            outage_ends = time.monotonic() + OUTAGE_S
            wait_until(lambda: firing(client, "page") and firing(client, "ticket"), 30, "the page and the ticket")

        def ticket_held() -> dict[str, Any] | None:
            alerts = httpx.get(f"{am_url}/api/v2/alerts", timeout=5,
                               params={"filter": f'{cv.SEVERITY_LABEL}="ticket"'}).json()
            return next((a for a in alerts if a["labels"].get(cv.SLO_LABEL) == "availability"), None)

        wait_until(lambda: ticket_held() is not None, 15, "the ticket reaching Alertmanager")
        time.sleep(3)  # several group intervals: an uninhibited ticket would have been sent by now
        held = ticket_held()
        assert held is not None
        yield Stack(sim, prom, am_url, sink, ui, specs, outage_ends, held)
    finally:
        for stop in reversed(parts):
            stop()


# ------------------------------------------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, with a fresh profile; driven by Playwright (no browser of its own)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="forge-slo-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS[1:],
            viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $FORGE_SLO_SCREENSHOTS to keep them, else the test's temporary folder."""
    folder = Path(os.environ.get("FORGE_SLO_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def as_of(page: Any) -> float:
    return float(page.locator("time.as-of").get_attribute("data-unix"))


def recorded(client: PrometheusClient, name: str, at: float) -> float:
    [sample] = [s for s in client.query(name, at=at) if all(s.labels.get(k) == v for k, v in AVAILABILITY.items())]
    return sample.value


def shoot(page: Any, folder: Path, name: str) -> None:
    """Desktop and phone screenshots; on the phone nothing may be wider than the screen."""
    for width, height, tag in ((1280, 900, "desktop"), (390, 844, "phone")):
        page.set_viewport_size({"width": width, "height": height})
        page.reload()
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name} overflows at {width}px"
        path = folder / f"{name}-{tag}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
    page.set_viewport_size({"width": 1280, "height": 900})


# Read in one step, so that a refresh of the page cannot fall between reading its time and its numbers.
LIST_SNAPSHOT = """() => {
  const row = document.querySelector("tr.slo-row");
  return {at: document.querySelector("time.as-of").dataset.unix,
          keys: [...document.querySelectorAll("tr.slo-row")].map(r => r.dataset.key),
          budgets: [...document.querySelectorAll("tr.slo-row td.budget")].map(c => c.innerText),
          budget: row.querySelector("td.budget .v").innerText, attained: row.querySelector("td.attained .v").innerText,
          burn: row.querySelector('.burn[data-window="30s"] .v').innerText,
          alerts: row.querySelector("td.alerts").innerText, scripts: document.querySelectorAll("script").length};
}"""
SLO_SNAPSHOT = """() => {
  const end = document.querySelector("figure.burn-down circle.end-point");
  return {at: document.querySelector("time.as-of").dataset.unix, title: document.querySelector("h2").innerText,
          value: end.dataset.value, cx: end.getAttribute("cx"), cy: end.getAttribute("cy"),
          label: document.querySelector("figure.burn-down text.end-label").textContent,
          points: document.querySelector("figure.burn-down polyline").getAttribute("points"),
          thresholds: document.querySelector("figure.error-ratio").textContent,
          history: document.querySelector("table.history").innerText,
          runbook: document.querySelector("ul.links a[href^=https]").getAttribute("href")};
}"""


def test_the_burning_slo_is_first_with_the_numbers_of_the_rules(stack: Stack, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page()
    folder = screenshot_dir(tmp_path)
    response = page.goto(f"{stack.ui.url}/")
    assert response is not None and response.status == 200
    seen = page.evaluate(LIST_SNAPSHOT)
    assert seen["scripts"] == 0  # server-rendered, no script
    # Worst first: the SLO paging, then the one whose recordings do not exist, then the healthy ones.
    assert seen["keys"][:2] == [f"chat/availability/model_name={MODEL}", "batch/ttft"], seen["keys"]
    assert sorted(seen["keys"][2:]) == ["assistant/ttft", f"chat/ttft/model_name={MODEL}"], seen["keys"]
    assert seen["budgets"][1] == "no data"
    assert "page firing 30s/10s" in seen["alerts"]
    assert "Releases frozen by the budget policy: chat" in page.locator(".banner.freeze").inner_text()

    # Every number on the row is the recording rule's value at the instant the page names.
    at = float(seen["at"])
    with PrometheusClient(stack.prometheus.url) as client:
        remaining = recorded(client, cv.ERROR_BUDGET_REMAINING, at)
        ratio = recorded(client, cv.PERIOD_ERROR_RATIO, at)
        burn = recorded(client, cv.error_ratio(30), at) / BUDGET
    assert remaining < 0.25  # burning: below the policy's freeze
    assert seen["budget"] == f"{remaining * 100:,.2f}%"
    assert seen["attained"] == f"{(1 - ratio) * 100:,.2f}%"
    assert seen["burn"] == f"{burn:,.2f}×"
    shoot(page, folder, "list")

    # Filtered and sorted from the URL a person gets by typing in the filter box and clicking a column.
    page.goto(f"{stack.ui.url}/?q=assistant")
    assert page.input_value("input[name=q]") == "assistant"
    assert page.locator("tr.slo-row").evaluate_all("rows => rows.map(r => r.dataset.key)") == ["assistant/ttft"]
    page.goto(f"{stack.ui.url}/")
    page.click("th >> text=Service")
    assert page.locator("tr.slo-row").first.get_attribute("data-key") == "assistant/ttft"

    # The SLO's own page: the burn-down ends on the recorded budget left, where its line ends.
    page.goto(f"{stack.ui.url}/")
    page.locator("tr.slo-row").first.locator("td.slo a").click()
    seen = page.evaluate(SLO_SNAPSHOT)
    assert seen["title"] == "chat / availability"
    with PrometheusClient(stack.prometheus.url) as client:
        remaining = recorded(client, cv.ERROR_BUDGET_REMAINING, float(seen["at"]))
    assert float(seen["value"]) == remaining
    assert seen["label"] == f"now {remaining * 100:,.2f}%"
    points = seen["points"].split()
    first_x, first_y = map(float, points[0].split(","))
    last_x, last_y = map(float, points[-1].split(","))
    assert (last_x, last_y) == pytest.approx((float(seen["cx"]), float(seen["cy"])), abs=0.2)
    assert first_x < last_x and first_y < last_y  # from a full budget at the start down to what is left
    assert "page 30s/10s: 14.4×" in seen["thresholds"] and "ticket 2m/5s: 3×" in seen["thresholds"]
    assert "still firing" in seen["history"]
    assert seen["runbook"] == "https://runbooks.example/chat"
    shoot(page, folder, "slo")

    # It refreshes itself (every 2s here).
    before = as_of(page)
    with page.expect_navigation(timeout=15_000):
        pass
    assert as_of(page) > before
    page.close()


def test_alertmanager_gets_one_page_no_ticket_and_the_resolve(stack: Stack) -> None:
    held = stack.ticket_while_paged
    assert held["status"]["state"] == "suppressed" and held["status"]["inhibitedBy"], held
    # The outage ends by itself; the page resolves once the 10s short window is clean.
    wait_until(lambda: any(n["status"] == "resolved" for n in stack.sink.to("chat-page")),
               max(0.0, stack.outage_ends - time.monotonic()) + 60, "the resolve notification")
    time.sleep(3)  # room for a stray notification to arrive
    pages = stack.sink.to("chat-page")
    assert [n["status"] for n in pages] == ["firing", "resolved"], pages
    firing_page = pages[0]
    assert firing_page["groupLabels"] == {"alertname": "ChatAvailabilityBudgetBurn", cv.SERVICE_LABEL: "chat",
                                          cv.SLO_LABEL: "availability"}
    [alert] = firing_page["alerts"]
    assert alert["labels"][cv.SEVERITY_LABEL] == "page" and alert["labels"]["model_name"] == MODEL
    assert stack.sink.to("chat-ticket") == [], "the ticket of a paged SLO must stay inhibited"
    assert {path for path, _ in stack.sink.received} == {"/chat-page"}


def test_compiled_routing_of_the_examples_passes_amtool() -> None:
    result = subprocess.run(["amtool", "check-config", str(GOLDEN / "alertmanager" / "alertmanager.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 inhibit rules" in result.stdout and "9 receivers" in result.stdout


# ------------------------------------------------------------------------------- no Prometheus, tokens, stop


def test_unreachable_prometheus_is_a_banner_and_every_number_says_no_data(browser: Any, tmp_path: Path) -> None:
    spec = tmp_path / "chat.yaml"
    spec.write_text(CHAT)
    ui = start_ui(tmp_path, [spec], f"http://127.0.0.1:{free_port()}", "--token", "s3cret-token")
    try:
        assert httpx.get(f"{ui.url}/healthz", timeout=10).status_code == 200
        denied = httpx.get(f"{ui.url}/", timeout=10)
        assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
        assert "ChatAvailability" not in denied.text
        assert httpx.get(f"{ui.url}/", headers={"Authorization": "Bearer s3cret-token"}, timeout=10).status_code == 503

        page = browser.new_page()
        page.goto(f"{ui.url}/slo/chat/availability")
        page.fill("input[name=token]", "wrong")
        page.click("button[type=submit]")
        assert "Wrong token" in page.inner_text("body")
        page.fill("input[name=token]", "s3cret-token")
        page.click("button[type=submit]")
        assert page.url.endswith("/slo/chat/availability")  # back where the person was going
        page.goto(f"{ui.url}/")
        banner = page.locator(".banner.error").inner_text()
        assert "Prometheus cannot be read" in banner and "Prometheus is unreachable" in banner
        assert page.locator("td.budget").all_inner_texts() == ["no data", "no data"]
        assert page.locator("td.attained").all_inner_texts() == ["no data", "no data"]
        page.close()
    finally:
        assert ui.stop() == 0
    assert "Traceback" not in ui.log.read_text()


def test_sigterm_stops_the_page_within_seconds_while_prometheus_hangs(tmp_path: Path) -> None:
    spec = tmp_path / "chat.yaml"
    spec.write_text(CHAT)
    with socket.socket() as hung:  # accepts connections and never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        ui = start_ui(tmp_path, [spec], f"http://127.0.0.1:{hung.getsockname()[1]}", "--prometheus-timeout", "60s")
        def ask() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the page is cut off by the stop
                httpx.get(f"{ui.url}/", timeout=30)

        waiting = threading.Thread(target=ask, daemon=True)
        try:
            waiting.start()
            time.sleep(1.0)  # the page is waiting on Prometheus
            started = time.monotonic()
            ui.process.send_signal(signal.SIGTERM)
            code = ui.process.wait(timeout=10)
            elapsed = time.monotonic() - started
        finally:
            ui.stop()
    assert code == 0 and elapsed < 6, (code, elapsed, ui.log.read_text())  # 2 s required; room for a loaded CI


@pytest.mark.parametrize(("flags", "message"), [
    (["--port", "70000"], "--port: 70000 is not a port number"),
    (["--token", "two words"], "--token: the token holds whitespace"),
    (["--grafana-url", "grafana:3000"], "--grafana-url: 'grafana:3000' must start with http:// or https://"),
    (["--refresh", "often"], "argument --refresh: 'often' is not a duration"),
])
def test_ui_refuses_bad_flags_with_exit_2(tmp_path: Path, flags: list[str], message: str) -> None:
    spec = tmp_path / "chat.yaml"
    spec.write_text(CHAT)
    result = run_cli("ui", str(spec), "--prometheus", "http://127.0.0.1:9", *flags)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
