"""A load run from the CLI's side: start the engine with its plan, wait for it, print the verdict, exit code.

Importing this module is cheap (no Locust, no gevent): the run happens in a child process
(:mod:`forge_slo.load.engine`), so the CLI's own process is never monkey-patched.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from forge_slo.errors import RunnerError, UsageError
from forge_slo.load.console import format_verdict
from forge_slo.load.judge import SpecInfo, judged_spec
from forge_slo.load.messages import EnginePlan
from forge_slo.load.options import LoadOptions
from forge_slo.runtime.process import child_env, python_module, stop_process

__all__ = ["format_verdict", "run_load", "run_worker"]

OUTPUT_FILES = ("records.jsonl", "run.json", "summary.json", "report.html", "server_metrics.jsonl")
EXIT_INTERRUPTED = 130
ENGINE_STOP_S = 30.0  # for an engine past its bound to write what it has after SIGINT


def run_load(options: LoadOptions) -> int:
    """Run a load test; 0 (SLOs held), 1 (missed, or nothing succeeded) or 130 (interrupted); ForgeError."""
    spec = judged_spec(options.spec_path, options.service)
    if options.check:
        from forge_slo.load.check import run_check

        run_check(options)  # a wrong model, endpoint, key or port: exit 2 now, nothing written
    out = _fresh_out(options)
    bound_s = 60.0 + options.stage_bound * (options.longest_stage_s + options.timeout_s + 40.0)
    if options.expect_workers:
        bound_s += options.worker_wait_s
    with _server_view(options, spec, out):
        code, interrupted = _run_engine(EnginePlan(options, spec, lifeline=True), bound_s)
    summary = _summary(out, options, spec)
    if summary is None:
        raise RunnerError(f"the load run failed (engine exit code {code}) and recorded no requests")
    print(format_verdict(summary))
    print(f"wrote {out / 'records.jsonl'}, {out / 'summary.json'}, {out / 'report.html'}")
    if interrupted or summary.get("interrupted"):
        return EXIT_INTERRUPTED
    if code != 0:
        raise RunnerError(f"the load run failed (engine exit code {code}); the summary covers what ran")
    return _verdict_code(summary)


@contextlib.contextmanager
def _server_view(options: LoadOptions, spec: SpecInfo | None, out: Path) -> Iterator[None]:
    """Read the server's metrics every second while the block runs (``--server-metrics``, ``--prometheus``)."""
    from forge_slo.load.server_view import SERVER_METRICS, PrometheusSource, ScrapeSource, ServerView, series_for

    series = series_for(options.server_preset or (spec.preset if spec is not None else "vllm"))
    source: ScrapeSource | PrometheusSource | None = None
    if options.prometheus_url:
        source = PrometheusSource(options.prometheus_url, options.prometheus_selector, series)
    elif options.server_metrics != "off":
        url = options.target + "/metrics" if options.server_metrics == "auto" else options.server_metrics
        source = ScrapeSource(url, series, [name for name, _ in options.model_mix])
    if source is None or series.preset == "custom":
        yield
        return
    view = ServerView(source, out / SERVER_METRICS).start()
    try:
        yield
    finally:
        view.stop()


def run_worker(master_host: str, master_port: int) -> int:
    """Be a Locust worker of a ``forge-slo load --master`` run until the master ends it; its exit code."""
    from forge_slo.load.engine import worker_command

    proc = subprocess.Popen(worker_command(master_port, master_host), env=child_env(), start_new_session=True,
                            stdin=subprocess.DEVNULL)
    print(f"worker: joining the master at {master_host}:{master_port}", flush=True)
    code, interrupted = _wait_engine(proc, None)
    return EXIT_INTERRUPTED if interrupted else code


def _fresh_out(options: LoadOptions) -> Path:
    """``--out``, emptied of a previous run's outputs."""
    assert options.out is not None
    out = Path(options.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        for old in out.glob("worker-*.log"):
            old.unlink()
    except OSError as exc:
        raise UsageError(f"--out: {out}: {exc.strerror or exc}") from None
    return out


def _summary(out: Path, options: LoadOptions, spec: SpecInfo | None) -> dict[str, Any] | None:
    """The run's summary.json, or one rebuilt from its records when the engine could not write it."""
    from forge_slo.load.outputs import rebuild_outputs

    path = out / "summary.json"
    if path.exists():
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return summary
    return rebuild_outputs(out, spec, {"target": options.target, "endpoint": options.endpoint,
                                       "model": options.model, "api": options.api, "interrupted": True})


def _verdict_code(summary: dict[str, Any]) -> int:
    if summary.get("verdict") == "fail":
        return 1
    stages = summary.get("stages") or []
    if stages and sum(int(s.get("requests", 0)) for s in stages) > 0 and \
            sum(int(s.get("succeeded", 0)) for s in stages) == 0:
        # Without a spec there is no SLO to miss, but a target that served nothing is no success either.
        print("no request succeeded: the target served none of the load", file=sys.stderr)
        return 1
    return 0


def _run_engine(plan: EnginePlan, bound_s: float) -> tuple[int, bool]:
    """Run the engine process, forwarding SIGINT/SIGTERM to it; returns (exit code, interrupted)."""
    proc = subprocess.Popen(python_module("forge_slo.load.engine"), stdin=subprocess.PIPE, env=child_env(),
                            start_new_session=True)
    assert proc.stdin is not None
    lifeline = proc.stdin  # kept open while this process lives: the engine ends when it closes, however
    try:
        with contextlib.suppress(BrokenPipeError):  # an engine that died at once: its exit code tells
            lifeline.write(plan.to_line())
            lifeline.flush()
        return _wait_engine(proc, bound_s)
    finally:
        with contextlib.suppress(OSError):  # the engine may be gone already
            lifeline.close()


def _wait_engine(proc: subprocess.Popen[bytes], bound_s: float | None) -> tuple[int, bool]:
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    with _signals_to(forward):
        try:
            return proc.wait(timeout=bound_s), bool(received)
        except subprocess.TimeoutExpired:  # past its bound: stop it as Ctrl-C would, so it writes what ran
            return stop_process(proc, ENGINE_STOP_S, signal.SIGINT), True


@contextlib.contextmanager
def _signals_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` inside the block (outside the main thread: nothing changes)."""
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: the child still stops on its own bound
        previous.clear()
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
