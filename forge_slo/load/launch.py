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
from forge_slo.load.judge import SpecInfo, judged_spec
from forge_slo.load.messages import EnginePlan
from forge_slo.load.options import LoadOptions
from forge_slo.runtime.process import child_env, python_module, stop_process
from forge_slo.runtime.text import table

OUTPUT_FILES = ("records.jsonl", "run.json", "summary.json", "report.html")
EXIT_INTERRUPTED = 130
ENGINE_STOP_S = 30.0  # for an engine past its bound to write what it has after SIGINT


def run_load(options: LoadOptions) -> int:
    """Run a load test; 0 (SLOs held), 1 (missed, or nothing succeeded) or 130 (interrupted); ForgeError."""
    spec = judged_spec(options.spec_path, options.service)
    out = _fresh_out(options)
    bound_s = 60.0 + len(options.stages) * (options.duration_s + options.timeout_s + 40.0)
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


def _wait_engine(proc: subprocess.Popen[bytes], bound_s: float) -> tuple[int, bool]:
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


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.2f}s"


def format_verdict(summary: dict[str, Any]) -> str:
    """The table printed at the end of a run: per stage figures, then every SLO's attainment."""
    lines = _stage_lines(summary)
    spec = summary.get("spec")
    if spec:
        lines += ["", f"SLOs of {spec['service']} ({spec['source']}):", *_slo_lines(summary)]
    if summary.get("interrupted"):
        lines.append("interrupted: the figures cover what ran until then")
    if summary.get("stopped_early"):
        lines.append(f"sweep stopped early: {summary['stopped_early']}")
    from forge_slo.load.summary import saturation_note

    verdict = summary.get("verdict")
    if verdict == "pass":
        text = "verdict: PASS (every judged SLO held)"
    elif verdict == "fail":
        text = "verdict: FAIL (an SLO was missed)"
    else:
        text = "verdict: none (no --spec given)"
    lines.append(text + saturation_note(summary))
    return "\n".join(lines)


def _stage_lines(summary: dict[str, Any]) -> list[str]:
    head = ("stage", "requests", "failed", "sent/s", "served/s", "tok/s", "TTFT p50", "TTFT p99", "TPOT p99",
            "ITL p99", "e2e p99", "goodput/s", "load")
    rows: list[tuple[str, ...]] = []
    for s in summary.get("stages", []):
        lat = s["latency"]
        rows.append((s["name"], str(s["requests"]), str(s["failed"]), f"{s['sent_per_s']:.2f}",
                     f"{s['requests_per_s']:.2f}", f"{s['output_tokens_per_s']:.0f}", _ms(lat["ttft_s"]["p50"]),
                     _ms(lat["ttft_s"]["p99"]), _ms(lat["tpot_s"]["p99"]), _ms(lat["itl_s"]["p99"]),
                     _ms(lat["e2e_s"]["p99"]), f"{s['goodput_requests_per_s']:.2f}",
                     "saturated" if s.get("saturated") else "kept up"))
    lines = table(head, rows)
    for s in summary.get("stages", []):
        kinds = s["errors"]["by_kind"]
        if kinds:
            lines.append(f"errors in {s['name']}: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
        if s.get("saturated"):
            lines.append(f"{s['name']} saturated: " + "; ".join(s.get("saturation", [])))
    lines.append("sent/s: offered, over the sending window; served/s, tok/s, goodput/s: over first request sent "
                 "to last finished (drain included)")
    return lines


def _slo_lines(summary: dict[str, Any]) -> list[str]:
    rows: list[tuple[str, ...]] = []
    for s in summary.get("stages", []):
        for slo in s["slos"]:
            if not slo["judged"]:
                rows.append((s["name"], slo["name"], f"{slo['objective_percent']:g}%", "-", "not judged client-side"))
                continue
            what = "availability" if slo["kind"] == "availability" else f"{slo['metric']} <= {slo['threshold_s']:g}s"
            att = slo["attainment_percent"]
            rows.append((s["name"], slo["name"], f"{what} for {slo['objective_percent']:g}%",
                         "-" if att is None else f"{att:.2f}% of {slo['events']}", "PASS" if slo["met"] else "FAIL"))
    return table(("stage", "SLO", "objective", "attained", "verdict"), rows)
