"""``forge-slo load`` and ``forge-slo demo``: flags, the run, the verdict table and the exit code.

Importing this module is cheap (no Locust, no gevent): the run happens in a child process
(:mod:`forge_slo.load.engine`), so the CLI's own process is never monkey-patched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from forge_slo.errors import RunnerError, UsageError
from forge_slo.load.options import LoadOptions, add_load_arguments, options_from_namespace
from forge_slo.runtime.text import table

DESCRIPTION = (
    "Load-test an OpenAI-compatible server with Locust: streaming chat or text completions, open-loop arrivals "
    "(--rate, Poisson by default) or closed-loop streams (--concurrency), or a sweep of either. Every request's "
    "TTFT, TPOT, inter-token gaps and end-to-end latency go to DIR/records.jsonl; DIR/summary.json and "
    "DIR/report.html hold per-stage percentiles, errors by kind, SLO attainment against --spec and goodput."
)
EPILOG = ("exit codes: 0 every SLO of the spec held (or no spec), 1 an SLO was missed or the run failed, "
          "2 bad input (flags, spec, dataset), 130 interrupted (the summary covers what ran).")
OUTPUT_FILES = ("records.jsonl", "run.json", "summary.json", "report.html")
EXIT_INTERRUPTED = 130


def _load_dests() -> list[str]:
    probe = argparse.ArgumentParser(add_help=False)
    add_load_arguments(probe)
    return [a.dest for a in probe._actions if a.dest not in ("help", "workers", "progress")]


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every ``forge-slo load`` flag to ``parser``."""
    add_load_arguments(parser)
    if parser.description is None:
        parser.description = DESCRIPTION
    if parser.epilog is None:
        parser.epilog = EPILOG
    return parser


def main_from_args(args: argparse.Namespace) -> int:
    """Run a load test from parsed flags; returns 0 (SLOs held) or 1 (missed), raises ForgeError on bad input."""
    options = options_from_namespace(args)
    workers = int(getattr(args, "workers", 0) or 0)
    if not 0 <= workers <= 256:
        raise UsageError(f"--workers: {workers} is not between 0 and 256")
    flags = {dest: getattr(args, dest, None) for dest in _load_dests()}
    return run_load(options, flags, workers, str(getattr(args, "progress", "auto")))


def run_load(options: LoadOptions, flags: dict[str, Any], workers: int, progress: str) -> int:
    from forge_slo.load.judge import criteria_from_spec, select_spec
    from forge_slo.load.outputs import rebuild_outputs

    spec = criteria_from_spec(select_spec(options.spec_path, options.service)) if options.spec_path else None
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
    plan = {"flags": {**flags, "target": flags.get("target") or options.target, "out": str(out)},
            "workers": workers, "progress": progress}
    bound_s = 60.0 + len(options.stages) * (options.duration_s + options.timeout_s + 40.0)
    code, interrupted = _run_engine(plan, bound_s)
    summary_path = out / "summary.json"
    summary: dict[str, Any] | None = None
    if summary_path.exists():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    else:
        summary = rebuild_outputs(out, spec, {"target": options.target, "endpoint": options.endpoint,
                                              "model": options.model, "api": options.api, "interrupted": True})
    if summary is None:
        raise RunnerError(f"the load run failed (engine exit code {code}) and recorded no requests")
    print(format_verdict(summary))
    print(f"wrote {out / 'records.jsonl'}, {summary_path}, {out / 'report.html'}")
    if interrupted or summary.get("interrupted"):
        return EXIT_INTERRUPTED
    if code != 0:
        raise RunnerError(f"the load run failed (engine exit code {code}); the summary covers what ran")
    if summary.get("verdict") == "fail":
        return 1
    stages = summary.get("stages") or []
    if stages and sum(int(s.get("requests", 0)) for s in stages) > 0 and \
            sum(int(s.get("succeeded", 0)) for s in stages) == 0:
        # Without a spec there is no SLO to miss, but a target that served nothing is no success either.
        print("no request succeeded: the target served none of the load", file=sys.stderr)
        return 1
    return 0


def _run_engine(plan: dict[str, Any], bound_s: float) -> tuple[int, bool]:
    """Run the engine process, forwarding SIGINT/SIGTERM to it; returns (exit code, interrupted)."""
    from forge_slo.load.engine import child_env

    proc = subprocess.Popen([sys.executable, "-m", "forge_slo.load.engine"], stdin=subprocess.PIPE,
                            env=child_env(), start_new_session=True)
    assert proc.stdin is not None
    lifeline = proc.stdin  # kept open while this process lives: the engine ends when it closes, however
    try:
        with contextlib.suppress(BrokenPipeError):  # an engine that died at once: its exit code tells
            lifeline.write(json.dumps({**plan, "lifeline": True}).encode() + b"\n")
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

    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: the child still stops on its own bound
        previous.clear()
    deadline = time.monotonic() + bound_s
    try:
        while True:
            try:
                return proc.wait(timeout=1.0), bool(received)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    proc.send_signal(signal.SIGINT)
                    try:
                        return proc.wait(timeout=30), True
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        return proc.wait(), True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.2f}s"


def format_verdict(summary: dict[str, Any]) -> str:
    """The table printed at the end of a run: per stage figures, then every SLO's attainment."""
    lines = []
    head = ("stage", "requests", "failed", "req/s", "tok/s", "TTFT p50", "TTFT p99", "TPOT p99", "ITL p99",
            "e2e p99", "goodput/s")
    rows: list[tuple[str, ...]] = [head]
    for s in summary.get("stages", []):
        lat = s["latency"]
        rows.append((s["name"], str(s["requests"]), str(s["failed"]), f"{s['requests_per_s']:.2f}",
                     f"{s['output_tokens_per_s']:.0f}", _ms(lat["ttft_s"]["p50"]), _ms(lat["ttft_s"]["p99"]),
                     _ms(lat["tpot_s"]["p99"]), _ms(lat["itl_s"]["p99"]), _ms(lat["e2e_s"]["p99"]),
                     f"{s['goodput_requests_per_s']:.2f}"))
    lines += table(rows[0], rows[1:])
    errors = [(s["name"], s["errors"]["by_kind"]) for s in summary.get("stages", []) if s["errors"]["by_kind"]]
    for name, kinds in errors:
        lines.append(f"errors in {name}: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    spec = summary.get("spec")
    if spec:
        lines.append("")
        lines.append(f"SLOs of {spec['service']} ({spec['source']}):")
        rows = [("stage", "SLO", "objective", "attained", "verdict")]
        for s in summary.get("stages", []):
            for slo in s["slos"]:
                if not slo["judged"]:
                    rows.append((s["name"], slo["name"], f"{slo['objective_percent']:g}%", "-",
                                 "not judged client-side"))
                    continue
                what = "availability" if slo["kind"] == "availability" else \
                    f"{slo['metric']} <= {slo['threshold_s']:g}s"
                att = slo["attainment_percent"]
                rows.append((s["name"], slo["name"], f"{what} for {slo['objective_percent']:g}%",
                             "-" if att is None else f"{att:.2f}% of {slo['events']}",
                             "PASS" if slo["met"] else "FAIL"))
        lines += table(rows[0], rows[1:])
    verdict = summary.get("verdict")
    if summary.get("interrupted"):
        lines.append("interrupted: the figures cover what ran until then")
    if summary.get("stopped_early"):
        lines.append(f"sweep stopped early: {summary['stopped_early']}")
    if verdict == "pass":
        lines.append("verdict: PASS (every judged SLO held)")
    elif verdict == "fail":
        lines.append("verdict: FAIL (an SLO was missed)")
    else:
        lines.append("verdict: none (no --spec given)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# forge-slo demo

DEMO_DESCRIPTION = (
    "Start the built-in simulator on a free loopback port, load it for about 15 seconds and judge the run "
    "against the example spec (slo_specs/chat.yaml when it is in the current directory, else the same spec "
    "built in): prints the verdict table and writes DIR/report.html. Nothing to install or configure."
)


def build_demo_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``forge-slo demo`` flags to ``parser``."""
    parser.add_argument("--out", default="forge-slo-demo", metavar="DIR",
                        help="where to write records, summary and report (default ./forge-slo-demo)")
    parser.add_argument("--duration", default="15s", metavar="D", help="how long to send (default 15s)")
    parser.add_argument("--rate", default="4", metavar="R", help="requests per second (default 4)")
    parser.add_argument("--spec", metavar="FILE",
                        help="spec to judge (default slo_specs/chat.yaml if present, else the built-in copy)")
    parser.add_argument("--fault", choices=("none", "slow", "errors"), default="none",
                        help="make the simulator misbehave: slow (+600 ms TTFT) or errors (5%% HTTP 500), "
                             "to see a failing verdict (default none)")
    parser.add_argument("--workers", type=int, default=0, metavar="N", help="Locust worker processes (default 0)")
    parser.add_argument("--progress", choices=("auto", "rich", "plain", "off"), default="auto",
                        help="live display (default auto)")
    if parser.description is None:
        parser.description = DEMO_DESCRIPTION
    if parser.epilog is None:
        parser.epilog = EPILOG
    return parser


def demo_from_args(args: argparse.Namespace) -> int:
    from forge_slo.load.demo import run_demo

    return run_demo(out=str(args.out), duration=str(args.duration), rate=str(args.rate), spec=args.spec,
                    fault=str(args.fault), workers=int(args.workers), progress=str(args.progress))
