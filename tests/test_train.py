"""The training job: torchrun on loopback with 2 gloo ranks, its /metrics, and the watchdog's verdicts."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from forge_slo.chaos.training import actions, probes
from forge_slo.errors import RunnerError, UsageError
from forge_slo.train import names
from forge_slo.train.launch import JobOptions, check_worker_args, read_job, start_detached, stop_job
from forge_slo.train.watchdog import RankStatus, judge, parse_rank, scrape

HAS_TORCH = find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install 'forge-slo[train]')")


def run_train(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forge_slo.train", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_bus_bandwidth_is_algorithm_bandwidth_times_2_n_minus_1_over_n() -> None:
    assert names.bus_bandwidth(100.0, 2) == pytest.approx(100.0)
    assert names.bus_bandwidth(100.0, 8) == pytest.approx(175.0)
    assert names.bus_bandwidth(100.0, 1) == 0.0
    with pytest.raises(ValueError):
        names.bus_bandwidth(1.0, 0)


def rank(r: int, **kw: float | bool) -> RankStatus:
    base = {"steps": 100.0, "last_step_age_s": 0.1, "step_seconds": 0.03, "baseline_step_seconds": 0.03,
            "compute_seconds": 0.02, "busbw_bytes_per_second": 2e8, "baseline_busbw_bytes_per_second": 2e8,
            "baseline_ready": True}
    base.update(kw)
    return RankStatus(r, f"http://127.0.0.1:{29600 + r}/metrics", True, **base)  # type: ignore[arg-type]


def test_watchdog_verdicts() -> None:
    healthy = judge([rank(0), rank(1)], stall_after_s=5)
    assert healthy.healthy and not healthy.hung and healthy.busbw_ratio == pytest.approx(1.0)

    blocked = judge([rank(0, last_step_age_s=8.0, in_collective=True), rank(1, last_step_age_s=8.0)], stall_after_s=5)
    assert blocked.hung and blocked.stuck == (0, 1) and "in a collective" in blocked.summary()

    gone = judge([RankStatus(0, "u0", False, error="refused"), RankStatus(1, "u1", False, error="refused")])
    assert gone.hung and gone.unreachable == (0, 1)

    one_dead = judge([rank(0, last_step_age_s=12.0, in_collective=True), RankStatus(1, "u1", False)], stall_after_s=5)
    assert one_dead.hung and one_dead.unreachable == (1,)

    # A uniformly slow network: every rank is over its baseline, nobody in particular is waited on.
    slow_net = judge([rank(0, step_seconds=0.1, busbw_bytes_per_second=2e7),
                      rank(1, step_seconds=0.1, busbw_bytes_per_second=2e7)])
    assert slow_net.stragglers == (0, 1) and slow_net.waited_on is None
    assert slow_net.busbw_ratio == pytest.approx(0.1)

    # One rank's local work is slow: the others wait for it.
    local = judge([rank(0), rank(1, compute_seconds=0.2, step_seconds=0.21), rank(2)])
    assert local.stragglers == (0, 1, 2) or 1 in local.stragglers
    assert local.waited_on == 1 and "wait for rank 1" in local.summary()

    # Before the baseline is measured nothing is called a straggler by step time.
    early = judge([rank(0, baseline_ready=False, step_seconds=1.0), rank(1, baseline_ready=False, step_seconds=1.0)])
    assert early.healthy and math.isnan(early.busbw_ratio)


def test_parse_rank_reads_the_worker_series() -> None:
    now = 1_000_000.0
    text = (f'{names.STEPS}_total{{rank="0"}} 42\n{names.LAST_STEP_TIMESTAMP}{{rank="0"}} {now - 2}\n'
            f'{names.COLLECTIVE_IN_PROGRESS}{{rank="0"}} 1\n'
            f'{names.COLLECTIVE_STARTED_TIMESTAMP}{{rank="0"}} {now - 3}\n'
            f'{names.BUSBW}{{rank="0"}} 1.5e8\n{names.BASELINE_READY}{{rank="0"}} 1\n')
    status = parse_rank(0, "u", text, now)
    assert status.steps == 42 and status.last_step_age_s == pytest.approx(2)
    assert status.in_collective and status.collective_age_s == pytest.approx(3)
    assert status.busbw_bytes_per_second == 1.5e8 and status.baseline_ready
    with pytest.raises(ValueError, match="not a forge-slo training rank"):
        parse_rank(0, "u", "other_metric 1\n", now)


def test_scrape_reports_unreachable_ranks_without_raising() -> None:
    statuses = scrape(["http://127.0.0.1:9/metrics"], timeout_s=0.5)
    assert not statuses[0].reachable and statuses[0].error


def test_bad_input_gets_clear_messages_not_tracebacks(tmp_path: Path) -> None:
    cases = [
        (["launch", "--nproc", "0", "--state-dir", str(tmp_path)], "--nproc"),
        (["launch", "--state-dir", str(tmp_path), "--", "--tensor-elements", "0"], "--tensor-elements"),
        (["launch", "--state-dir", str(tmp_path), "--", "--no-such-flag"], "unrecognized arguments"),
        (["launch", "--state-dir", str(tmp_path), "--netns", "bad name!"], "network namespace name"),
        (["watch", "--nproc", "0"], "--nproc"),
        (["watch", "--stall-after", "10"], "add a unit"),
    ]
    for args, message in cases:
        proc = run_train(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = run_train("watch", "--metrics-port", "9", "--nproc", "1")
    assert proc.returncode == 1 and "do not answer" in proc.stdout
    with pytest.raises(UsageError, match="launcher's flags"):
        check_worker_args(["--metrics-port", "5"])
    with pytest.raises(RunnerError, match="no training job"):
        read_job(tmp_path / "nothing")
    with pytest.raises(UsageError, match="give state_dir"):
        probes.training_healthy()


@pytest.fixture
def job(tmp_path: Path) -> Iterator[Path]:
    """2 gloo ranks; rank 1's local work 6x slower than rank 0's (a straggler the others wait for)."""
    from forge_slo.runtime.process import free_port_range

    state = tmp_path / "job"
    options = JobOptions(state, 2, "127.0.0.1", free_port_range(2), None,
                         ("--max-seconds", "60", "--compute-seconds", "0.01", "--slow-rank", "1",
                          "--slow-factor", "6", "--baseline-steps", "10"))
    start_detached(options)
    try:
        yield state
    finally:
        stop_job(state)


@needs_torch
def test_two_gloo_ranks_on_loopback_export_metrics_and_the_watchdog_sees_hangs_and_stragglers(job: Path) -> None:
    # The slow rank is a straggler from the start ("healthy" never holds), so wait for steps and baselines.
    deadline = time.monotonic() + 60
    while True:
        ranks = scrape(read_job(job).metrics_urls())
        if all(r.reachable and r.baseline_ready for r in ranks):
            break
        assert time.monotonic() < deadline, f"ranks not ready: {ranks}\n{(job / 'job.log').read_text()[-2000:]}"
        time.sleep(0.3)
    steps_before = [r.steps for r in ranks]
    time.sleep(1.0)
    ranks = scrape(read_job(job).metrics_urls())
    assert all(r.steps > s for r, s in zip(ranks, steps_before, strict=True)), "the ranks stopped stepping"
    assert all(r.busbw_bytes_per_second > 0 for r in ranks)

    verdict = judge(ranks, stall_after_s=5)
    assert not verdict.hung and verdict.waited_on == 1 and 1 in verdict.stragglers, verdict.summary()
    assert probes.straggler_detected(str(job)) is True
    assert probes.bus_bandwidth_gbps(str(job)) > 0

    # SIGSTOP rank 1: rank 0 blocks in the all-reduce; the watchdog calls the job hung within its timeout.
    actions.pause_rank(str(job), 1)
    try:
        seconds = probes.wait_for_training_hang(str(job), stall_after_s=1.5, timeout_s=15, poll_s=0.2)
        assert seconds < 5
        ranks = scrape(read_job(job).metrics_urls())
        assert ranks[0].reachable and ranks[0].in_collective, "rank 0 should be blocked inside the all-reduce"
        assert probes.training_hung(str(job), stall_after_s=1.5) is True
    finally:
        actions.resume_rank(str(job), 1)
    # Resumed: progress again.
    deadline = time.monotonic() + 20
    while probes.training_hung(str(job), stall_after_s=1.5):
        assert time.monotonic() < deadline, "the job did not resume after SIGCONT"
        time.sleep(0.2)

    # SIGKILL rank 1: torchrun tears the job down; the watchdog sees every rank gone.
    actions.kill_rank(str(job), 1)
    assert probes.wait_for_training_hang(str(job), stall_after_s=1.5, timeout_s=20, poll_s=0.2) < 20
    # Resuming a killed rank (a pause's rollback after a kill) is no error; once its process is reaped there
    # is nothing left to resume.
    deadline = time.monotonic() + 10
    while actions.resume_rank(str(job), 1)["resumed"] != []:
        assert time.monotonic() < deadline, "the killed rank's process never went away"
        time.sleep(0.2)
