"""A spec's error-budget policy: parsed with clear errors, and enforced by the canary gate over real HTTP.

Two identical arms (a loopback target whose counters grow at a fixed rate, 2% of requests failing in both) are
scraped by a real Prometheus with the compiled rules. Against a 97.5% objective both arms burn the budget at
0.8x, under the judge's burn factor: the canary is no worse than the baseline and within its budget, so the
judge passes it; but the service has only about a fifth of its period's budget left, so its policy (freeze
below 25%) holds releases.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from loopback_http import loopback_http
from prom_fixture import prometheus_available, start_prometheus

from forge_slo import conventions as cv
from forge_slo.spec import load_specs
from tests.conftest import run_cli

FROZEN = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: frozen
preset: tgi
period: 10m
alerting:
  page: {windows: [{long: 30s, short: 10s, factor: 14.4}]}
  ticket: {windows: [{long: 1m, short: 10s, factor: 3}]}
budget_policy:
  freeze_releases:
    below_percent: 25
    slos: [availability]
slos:
  - name: availability
    objective: 97.5
    sli: {availability: {}}
"""
# The same service without a policy, under another name: the gate judges it on the same data.
FREE = (FROZEN.replace("service: frozen", "service: free").split("budget_policy:")[0]
        + FROZEN.split("slos: [availability]\n")[1])
RATE_PER_S = 200.0
ERROR_SHARE = 0.02
OVERRIDE = "alice: hotfix for INC-123"


def test_the_policy_is_parsed_into_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "frozen.yaml"
    path.write_text(FROZEN)
    [spec] = load_specs([path])
    assert spec.budget_policy is not None
    assert spec.budget_policy.freeze_below_ratio == 0.25 and spec.budget_policy.slos == ("availability",)
    path.write_text(FREE)
    assert load_specs([path])[0].budget_policy is None


@pytest.mark.parametrize(("policy", "message"), [
    ("budget_policy: {freeze_releases: {below_percent: 120}}",
     ":9: budget_policy.freeze_releases.below_percent: must be between 0 and 100, got 120"),
    ("budget_policy: {freeze_releases: {below_percent: 25%}}",
     ":9: budget_policy.freeze_releases.below_percent: must be a number"),
    ("budget_policy: {freeze_releases: {below_percent: 25, slos: [latency]}}",
     ":9: budget_policy.freeze_releases.slos[0]: no SLO 'latency' in this spec; its SLOs: availability"),
    ("budget_policy: {freeze_releases: {below_percent: 25, slos: []}}",
     "budget_policy.freeze_releases.slos: list at least one SLO"),
    ("budget_policy: {freeze: {below_percent: 25}}",
     ":9: budget_policy.freeze: unknown field; allowed: freeze_releases"),
])
def test_a_bad_policy_is_refused_naming_the_line_and_field(tmp_path: Path, policy: str, message: str) -> None:
    path = tmp_path / "frozen.yaml"
    path.write_text(FROZEN.split("budget_policy:")[0] + policy + "\nslos:" + FROZEN.split("\nslos:", 1)[1])
    result = run_cli("validate", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------ over real HTTP


def exposition(elapsed: float) -> str:
    lines = []
    for arm in ("baseline", "canary"):
        requests = RATE_PER_S * elapsed
        lines.append(f'tgi_request_success{{deployment="{arm}"}} {requests * (1 - ERROR_SHARE)}')
        lines.append(f'tgi_request_failure{{deployment="{arm}",err="generation"}} {requests * ERROR_SHARE}')
    return "\n".join(lines) + "\n"




@dataclass
class Gate:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    since: float


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    if not prometheus_available():
        pytest.fail("prometheus is not installed: scripts/test.sh installs Debian's prometheus package")
    tmp = tmp_path_factory.mktemp("policy")
    specs = tmp / "specs"
    specs.mkdir()
    (specs / "frozen.yaml").write_text(FROZEN)
    (specs / "free.yaml").write_text(FREE)
    compiled = run_cli("compile", str(specs), "--out", str(tmp / "out"))
    assert compiled.returncode == 0, compiled.stderr
    started = time.time()
    with loopback_http(lambda _path: (200, exposition(time.time() - started))) as url:
        prom = start_prometheus(tmp, [url.removeprefix("http://")], rule_files=[tmp / "out/prometheus/*.rules.yaml"],
                                interval="1s")
        ready = tmp / "gate.json"
        log = tmp / "gate.log"
        process: subprocess.Popen[bytes] | None = None
        try:
            # The freeze is in place: the recorded budget left is far below the policy's 25%.
            prom.wait_for(f'{cv.ERROR_BUDGET_REMAINING}{{forge_slo_service="frozen"}} < 0.25', timeout=40)
            prom.wait_for("count_over_time(up[1m]) >= 20", timeout=30)  # enough of both arms for the judge
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "forge_slo", "gate", "serve", "--spec", str(specs), "--prometheus",
                     prom.url, "--port", "0", "--insecure-no-auth", "--ready-file", str(ready)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while not ready.exists():
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            port = json.loads(ready.read_text())["port"]
            yield Gate(process, f"http://127.0.0.1:{port}", log, started)
        finally:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(10)
            prom.stop()


def argo(gate: Gate, service: str, **extra: str) -> httpx.Response:
    params = {"service": service, "baseline": "deployment=baseline", "canary": "deployment=canary",
              "since": f"{gate.since:.3f}", "window": "20s", "interval": "5s", **extra}
    return httpx.get(f"{gate.url}/v1/argo", params=params, timeout=30)


def flagger(gate: Gate, service: str, **extra: str) -> httpx.Response:
    metadata = {"service": service, "baseline": "deployment=baseline", "canary": "deployment=canary",
                "since": f"{gate.since:.3f}", "window": "20s", "interval": "5s", **extra}
    return httpx.post(f"{gate.url}/v1/flagger/confirm-promotion", timeout=30,
                      json={"name": "chat", "namespace": "prod", "phase": "Progressing", "metadata": metadata})


def test_the_gate_refuses_promotion_while_the_policy_holds(gate: Gate) -> None:
    # Without a policy the same canary passes: the judge finds it no worse than its baseline.
    free = argo(gate, "free").json()
    assert (free["verdict"], free["decision"]) == ("pass", "promote"), free["reason"]

    held = argo(gate, "frozen").json()
    assert (held["verdict"], held["decision"]) == ("inconclusive", "hold"), held["reason"]
    reason = held["reason"]
    assert reason.startswith("promotion held: release freeze: the budget policy of frozen freezes releases while an "
                             "SLO has less than 25% of its 10m error budget left: availability has "), reason
    assert "% left; promotion refused (send budget_override" in reason and "(the canary itself: " in reason
    assert flagger(gate, "frozen").status_code == 412


def test_an_explicit_override_lets_the_verdict_through_and_is_logged(gate: Gate) -> None:
    passed = argo(gate, "frozen", budget_override=OVERRIDE).json()
    assert (passed["verdict"], passed["decision"]) == ("pass", "promote"), passed["reason"]
    assert passed["reason"].startswith(f"budget policy overridden ({OVERRIDE}): release freeze:")
    promoted = flagger(gate, "frozen", budget_override=OVERRIDE)
    assert promoted.status_code == 200, promoted.text
    logged = [line for line in gate.log.read_text().splitlines() if "overridden by request" in line]
    assert len(logged) == 2 and all(f"budget_override: '{OVERRIDE}'" in line for line in logged), logged

    empty = argo(gate, "frozen", budget_override=" ")
    assert empty.status_code == 400 and empty.json()["field"] == "budget_override"
