"""One SLO, one number: for every preset, the same traffic judged three ways agrees.

The simulator speaks each server's metrics; a real Prometheus evaluates the rules compiled from one spec per
preset; `forge-slo load` sends the traffic and judges it from its records; `forge-slo canary` estimates the
share of bad requests from the same records. A fault of known size (a tenth of the requests failed by the
server) and jittery token timing (gaps of 60 ms on average, 40 ms spread: the issue's TPOT case) make every
SLO interesting. For each SLO, the share of bad events the client saw and the one the server's recording rules
computed agree within what sampling and the clock difference at a bucket bound allow, and the verdicts agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prom_fixture import PrometheusHandle, start_prometheus

from forge_slo import conventions as cv
from forge_slo.compile.rules import rules_document
from forge_slo.compile.yamlout import dump
from forge_slo.sim import SIM_PRESETS, SimProcess
from forge_slo.sources.prometheus import PrometheusClient
from forge_slo.spec import load_specs
from forge_slo.spec.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
MODEL = "m"
ERROR_RATE = 0.1
TOKENS = 12
SIM = {
    "seed": 5,
    "models": [{"name": MODEL, "max_num_seqs": 64, "prefill_base_s": 0.05, "prefill_per_token_s": 0.0002,
                "itl_s": 0.06, "itl_distribution": "lognormal", "itl_stddev_s": 0.04, "batch_slowdown": 0.0,
                "output_tokens": {"distribution": "fixed", "value": TOKENS}}],
    "faults": [{"kind": "errors", "rate": ERROR_RATE}],
}
# TTFT = 50 ms + 0.2 ms per prompt token, prompts of 0-1000 tokens: 50-250 ms, spread across the bounds below.
LOAD = ("--rate", "6", "--duration", "16s", "--warmup", "0s", "--prompt-tokens", "uniform:1:1000",
        "--output-tokens", str(TOKENS), "--timeout", "20s", "--progress", "off")
BASE_WINDOW_S = 10
# Thresholds that are bucket bounds of every preset having the alias, and that split the traffic.
THRESHOLDS = {"ttft": 0.1, "tpot": 0.1, "itl": 0.1, "e2e": 1.0}
TGI_E2E = 1.122274146401882  # TGI's geometric bound nearest 1 s
# Per-request TPOT at 95%: the mean of 11 jittery gaps is over 100 ms for about one request in a hundred (more
# when other work delays the simulator), so both verdicts stay clear of the objective; per-gap ITL at 99% is
# missed by far (about one gap in eight is over 100 ms).
OBJECTIVES = {"tpot": 95, "itl": 99}


def spec_text(preset: str) -> str:
    p = PRESETS[preset]
    slos = ["  - {name: availability, objective: 90, sli: {availability: {}}}"]
    for alias, threshold in THRESHOLDS.items():
        if alias in p.histograms:
            bound = TGI_E2E if (preset == "tgi" and alias == "e2e") else threshold
            objective = OBJECTIVES.get(alias, 80)
            slos.append(f"  - {{name: {alias}, objective: {objective}, sli: {{latency: {{metric: {alias}, "
                        f"threshold: {bound!r}}}}}}}")
    return (f"apiVersion: forge-slo/v1\nkind: ServiceSLO\nservice: agree-{preset}\npreset: {preset}\n"
            "period: 10m\nalerting:\n  page:\n    windows: [{long: 30s, short: 10s, factor: 2}]\n"
            "  ticket: {disabled: true}\n  min_events: 5\nslos:\n" + "\n".join(slos) + "\n")


@dataclass
class Run:
    spec: Path
    out: Path
    proc: subprocess.CompletedProcess[str]

    @property
    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / "summary.json").read_text(encoding="utf-8"))
        return data


@dataclass
class Stack:
    prom: PrometheusHandle
    runs: dict[str, Run]


def _load(preset: str, sim: SimProcess, tmp: Path) -> Run:
    spec, out = tmp / f"agree-{preset}.yaml", tmp / f"out-{preset}"
    proc = subprocess.run([sys.executable, "-m", "forge_slo.load", "--target", sim.url, "--model", MODEL,
                           "--spec", str(spec), "--out", str(out), *LOAD], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    return Run(spec, out, proc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("agreement")
    rules = []
    for preset in SIM_PRESETS:
        path = tmp / f"agree-{preset}.yaml"
        path.write_text(spec_text(preset))
        [spec] = load_specs([path])
        rules.append(tmp / f"agree-{preset}.rules.yaml")
        rules[-1].write_text(dump(rules_document(spec)))
    sims = {preset: SimProcess(SIM, preset=preset) for preset in SIM_PRESETS}
    try:
        for sim in sims.values():
            sim.start()
        prom = start_prometheus(tmp, [f"127.0.0.1:{sim.port}" for sim in sims.values()], rule_files=rules,
                                interval="1s")
        try:
            # Every series the SLIs read is scraped at least once before the traffic starts, so rate() sees it all.
            time.sleep(3)
            with ThreadPoolExecutor(len(sims)) as pool:
                runs = dict(zip(sims, pool.map(lambda item: _load(item[0], item[1], tmp), sims.items()),
                                strict=True))
            time.sleep(BASE_WINDOW_S + 4)  # the last requests pass through the base window
            yield Stack(prom, runs)
        finally:
            prom.stop()
    finally:
        for sim in sims.values():
            sim.stop()


def server_bad_ratio(stack: Stack, preset: str, slo: str) -> float:
    sel = f'{{{cv.SERVICE_LABEL}="agree-{preset}",{cv.SLO_LABEL}="{slo}"}}'
    with PrometheusClient(stack.prom.url) as client:
        samples = client.query(f"{cv.PERIOD_ERROR_RATIO}{sel}")
    assert len(samples) == 1, (preset, slo, samples)
    return samples[0].value


def client_slos(run: Run) -> dict[str, dict[str, Any]]:
    (stage,) = run.summary["stages"]
    return {s["name"]: s for s in stage["slos"]}


# Room for the two clocks: the client starts timing when it sends, the server when the request arrives, so a
# request within a few ms of a bound may land on either side; and for availability, a request in flight at
# the edges of the period window. TTFTs spread evenly over 50-250 ms put 0.5% of requests in each ms around
# the 100 ms bound: 0.1 is 20 ms of client-side delay, what a machine busy with other work adds (a wrong
# bound or a TTFT read at the wrong token is off by far more).
TOLERANCE = {"availability": 0.03, "ttft": 0.1, "tpot": 0.03, "itl": 0.04, "e2e": 0.06}


@pytest.mark.parametrize("preset", SIM_PRESETS)
def test_client_and_server_count_the_same_share_of_bad_events(stack: Stack, preset: str) -> None:
    run = stack.runs[preset]
    assert run.proc.returncode in (0, 1), run.proc.stdout + run.proc.stderr
    assert "Traceback" not in run.proc.stderr
    client = client_slos(run)
    figures = []
    for name, slo in client.items():
        assert slo["judged"], slo
        client_bad = 1 - slo["attainment_percent"] / 100
        server_bad = server_bad_ratio(stack, preset, name)
        figures.append((name, round(client_bad, 4), round(server_bad, 4)))
        assert abs(client_bad - server_bad) <= TOLERANCE[name], figures
    # The fault shows at its size on both sides.
    availability = next(f for f in figures if f[0] == "availability")
    assert availability[1] == pytest.approx(ERROR_RATE, abs=0.06) and availability[2] == pytest.approx(
        ERROR_RATE, abs=0.06), figures


@pytest.mark.parametrize("preset", [p for p in SIM_PRESETS if "tpot" in PRESETS[p].histograms])
def test_jittery_tpot_gets_the_same_verdict_from_the_load_test_and_the_rules(stack: Stack, preset: str) -> None:
    """Gaps of 60 ms, 40 ms spread: per request the TPOT averages them out (nearly all under 100 ms: 95% met),
    while about one gap in eight is over 100 ms (the per-gap ITL at 99% is missed). Client and rules agree."""
    client = client_slos(stack.runs[preset])
    for name in ("tpot", "itl"):
        budget = 1 - client[name]["objective_percent"] / 100
        server_met = server_bad_ratio(stack, preset, name) <= budget
        assert client[name]["met"] == server_met, (name, client[name], server_bad_ratio(stack, preset, name))
    assert client["tpot"]["met"] and not client["itl"]["met"], client


@pytest.mark.parametrize("preset", SIM_PRESETS)
def test_the_canary_judge_estimates_the_same_share(stack: Stack, preset: str) -> None:
    """The canary judge reads the same records (as both arms) and estimates each SLO's share of bad events in
    budget terms: the same figure the client and the server's rules give."""
    run = stack.runs[preset]
    records = str(run.out / "records.jsonl")
    proc = subprocess.run([sys.executable, "-m", "forge_slo.canary", "--spec", str(run.spec), "--baseline-records",
                           records, "--canary-records", records, "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode in (0, 1, 3) and "Traceback" not in proc.stderr, proc.stderr
    budgets = {m["name"].split(".")[0]: m["budget"] for m in json.loads(proc.stdout)["metrics"] if m.get("budget")}
    client = client_slos(run)
    assert set(budgets) == set(client), (budgets.keys(), client.keys())
    figures = []
    for name, budget in budgets.items():
        canary_bad = budget["canary"]["bad"] / budget["canary"]["requests"]
        client_bad = 1 - client[name]["attainment_percent"] / 100
        server_bad = server_bad_ratio(stack, preset, name)
        figures.append((name, round(canary_bad, 4), round(client_bad, 4), round(server_bad, 4)))
        assert abs(canary_bad - client_bad) <= TOLERANCE[name], figures
        assert abs(canary_bad - server_bad) <= TOLERANCE[name], figures
