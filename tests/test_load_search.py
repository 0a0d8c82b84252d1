"""The capacity search (``forge-slo load --find-max``): its plan driven by verdicts of the tests' own, the confidence
of a stage's verdict, and a real search against a simulator whose capacity is known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from forge_slo.load.judge import held_confidence, longer_helps, stage_verdict
from forge_slo.load.options import SearchOptions, Stage
from forge_slo.load.search import HELD, MISSED, CapacitySearch, FixedPlan, StageResult
from forge_slo.sim import SimProcess

ROOT = Path(__file__).resolve().parents[1]


def search(capacity: float, *, start: float = 1.0, max_load: float = 10000.0, resolution: float = 0.05,
           max_stages: int = 20) -> tuple[CapacitySearch, list[float]]:
    """Run the plan against a server that holds every load up to ``capacity``; the plan and the loads tried."""
    plan = CapacitySearch(SearchOptions("rate", start, max_load, resolution=resolution, max_stages=max_stages))
    tried = []
    while (stage := plan.next_stage()) is not None:
        tried.append(stage.value)
        plan.record(StageResult(stage, verdict=HELD if stage.value <= capacity else MISSED))
    return plan, tried


@pytest.mark.parametrize("capacity", [1.3, 7.0, 13.7, 100.0, 950.0])
def test_the_search_brackets_the_capacity_within_its_resolution(capacity: float) -> None:
    plan, tried = search(capacity, resolution=0.05)
    assert plan.held is not None and plan.failed is not None
    assert plan.held <= capacity < plan.failed
    assert (plan.failed - plan.held) <= 0.05 * plan.held * 1.02  # 3 significant digits of the stage values
    # A linear sweep of the same resolution (steps of the final bracket) needs capacity / step stages.
    assert len(tried) < capacity / (plan.failed - plan.held)
    assert len(set(tried)) == len(tried)  # never the same load twice


def test_a_first_stage_that_fails_shrinks_and_concurrency_stays_whole() -> None:
    plan, tried = search(0.3, start=4.0, resolution=0.1)
    assert tried[:4] == [4.0, 2.0, 1.0, 0.5] and plan.held is not None and plan.held <= 0.3
    opts = SearchOptions(mode="concurrency", start=1, max_load=4096, resolution=0.05)
    conc = CapacitySearch(opts)
    values = []
    while (stage := conc.next_stage()) is not None:
        values.append(stage.value)
        conc.record(StageResult(stage, verdict=HELD if stage.value <= 37 else MISSED))
    assert all(v == int(v) for v in values) and (conc.held, conc.failed) == (37, 38)


def test_the_search_stops_at_max_load_and_after_max_stages() -> None:
    plan, tried = search(10**6, max_load=50.0)
    assert tried[-1] == 50.0 and "every load up to --max-load 50 held" in plan.reason
    plan, tried = search(13.7, max_stages=4)
    assert len(tried) == 4 and "--max-stages 4" in plan.reason


def test_a_sweep_stops_at_the_first_stage_that_missed() -> None:
    plan = FixedPlan((Stage("rate", 1), Stage("rate", 2), Stage("rate", 4)), stop_on_fail=True)
    first = plan.next_stage()
    assert first is not None
    plan.record(StageResult(first))
    second = plan.next_stage()
    assert second is not None
    plan.record(StageResult(second, missed=("ttft",)))
    assert plan.next_stage() is None and plan.stopped_early == "stage rate=2 missed ttft"


def _row(name: str, good: float, events: float, objective: float) -> dict[str, object]:
    return {"name": name, "judged": True, "objective_percent": objective,
            "attainment_percent": 100 * good / events if events else None,
            "held_confidence": held_confidence(good, events, objective), "evidence_good": good,
            "evidence_events": events}


def test_a_verdict_is_as_sure_as_its_evidence() -> None:
    # More requests without a failure: surer that 95% of them will be good.
    assert held_confidence(20, 20, 95) < held_confidence(60, 60, 95) < held_confidence(200, 200, 95)
    assert held_confidence(60, 60, 95) > 0.95 > held_confidence(20, 20, 95)
    assert held_confidence(50, 100, 95) < 1e-6  # half of them bad: surely missed
    verdict, sure, names = stage_verdict([_row("ttft", 60, 60, 95), _row("availability", 60, 60, 99.9)])
    assert (verdict, names) == (HELD, ["availability"]) and sure < 0.5  # 99.9% needs thousands of requests
    verdict, sure, names = stage_verdict([_row("ttft", 30, 60, 95), _row("availability", 60, 60, 99)])
    assert (verdict, names) == (MISSED, ["ttft"]) and sure > 0.999
    # Sending longer helps a 95% objective with 20 good requests (60 would make it sure), not a 99.9% one.
    assert longer_helps([_row("ttft", 20, 20, 95)], 3.0, 0.95)
    assert not longer_helps([_row("availability", 20, 20, 99.9)], 3.0, 0.95)


NARROW_SEQS = 2
PREFILL_S, ITL_S, TOKENS = 0.05, 0.01, 20
CAPACITY = NARROW_SEQS / (PREFILL_S + (TOKENS - 1) * ITL_S)  # about 8.3 requests/s; above it the queue grows

SPEC = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: chat
preset: vllm
slos:
  - {name: ttft, objective: 90, sli: {latency: {metric: ttft, threshold: 0.25}}}
  - {name: availability, objective: 99, sli: {availability: {}}}
"""


def test_the_search_finds_the_capacity_of_a_simulator(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    config = {"seed": 11, "models": [{
        "name": "narrow", "max_num_seqs": NARROW_SEQS, "prefill_base_s": PREFILL_S, "prefill_per_token_s": 0.0,
        "itl_s": ITL_S, "itl_distribution": "fixed", "itl_stddev_s": 0.0, "batch_slowdown": 0.0,
        "output_tokens": {"distribution": "fixed", "value": TOKENS}}]}
    out = tmp_path / "out"
    with SimProcess(config) as sim:
        proc = subprocess.run(
            [sys.executable, "-m", "forge_slo.load", "--target", sim.url, "--model", "narrow", "--find-max", "rate",
             "--start", "2", "--resolution", "0.2", "--arrival", "constant", "--duration", "2.5s", "--warmup", "0.5s",
             "--output-tokens", str(TOKENS), "--spec", str(spec), "--out", str(out), "--progress", "off"],
            cwd=ROOT, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("capacity: "), proc.stdout  # the answer first
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    found = summary["search"]
    answer, above = found["answer"], found["above"]
    assert 0.75 * CAPACITY <= answer["value"] <= 1.15 * CAPACITY, found["tried"]
    assert above is not None and above["broke"][0]["name"] == "ttft"  # the queue breaks TTFT first
    assert answer["goodput_requests_per_s"] > 0.6 * answer["value"]
    # Stages far above the capacity end as soon as TTFT is clearly missed, not after their whole duration.
    far = [s for s in summary["stages"] if s["target"] >= 1.5 * CAPACITY]
    assert far and all(s["stopped_by"] == "clear_failure" for s in far), [(s["name"], s["stopped_by"]) for s in far]
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Capacity: <b>" in report and "Capacity search: served and goodput per stage tried" in report


@pytest.mark.parametrize(("args", "message"), [
    (["--find-max", "rate"], "--find-max: needs --spec"),
    (["--find-max", "rate", "--spec", "SPEC", "--confidence", "1.5"], "--confidence"),
    (["--find-max", "concurrency", "--spec", "SPEC", "--start", "1.5"], "whole numbers"),
    (["--rate", "1", "--resolution", "0.1"], "--resolution: only applies to --find-max"),
])
def test_bad_search_flags_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "forge_slo.load", "--target", "http://127.0.0.1:9", "--model", "m",
                           "--out", str(tmp_path / "o"), *[str(spec) if a == "SPEC" else a for a in args]],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

