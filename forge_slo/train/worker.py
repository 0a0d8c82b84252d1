"""One rank of the all-reduce training job, started by torchrun (``python -m forge_slo.train.worker``).

Each step does its local work (a sleep standing in for forward and backward passes), then all-reduces a
tensor, and exports the step time, a heartbeat and the bus bandwidth on ``http://HOST:PORT+rank/metrics``.
gloo on CPU, NCCL where CUDA GPUs exist. The loop is bounded by ``--steps`` and ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from forge_slo.train import names

RECENT_STEPS = 5


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The worker's flags (the launcher passes them through)."""
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: only --max-seconds)")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="stop after this long (default 600; the loop is always bounded)")
    parser.add_argument("--tensor-elements", type=int, default=262144,
                        help="float32 elements all-reduced per step (default 262144 = 1 MiB)")
    parser.add_argument("--compute-seconds", type=float, default=0.02,
                        help="local work per step before the all-reduce (default 0.02)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps before the baseline starts (default 5)")
    parser.add_argument("--baseline-steps", type=int, default=20,
                        help="steps whose median is the baseline step time and bus bandwidth (default 20)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics (default 127.0.0.1)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="rank r serves /metrics on this port + r (0: no metrics endpoint)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda (NCCL) when GPUs exist and auto, else cpu (gloo)")
    parser.add_argument("--collective-timeout-s", type=float, default=300.0,
                        help="the process group's timeout for a collective (default 300)")
    parser.add_argument("--slow-rank", type=int, default=-1, help="make this rank's local work slower (a straggler)")
    parser.add_argument("--slow-factor", type=float, default=1.0, help="how much slower (default 1)")
    parser.add_argument("--state-dir", default="", help="write rank-<r>.json (pid, port) here")
    return parser


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the flags, or None."""
    if args.steps < 0:
        return "--steps must be zero or more"
    if not 0 < args.max_seconds <= 7 * 86400:
        return "--max-seconds must be above 0 and at most a week"
    if args.tensor_elements < 1:
        return "--tensor-elements must be at least 1"
    if args.compute_seconds < 0:
        return "--compute-seconds must be zero or more"
    if not 0 <= args.metrics_port < 65536:
        return "--metrics-port must be a port number (0 for none)"
    if args.warmup_steps < 0 or args.baseline_steps < 1:
        return "--warmup-steps must be zero or more and --baseline-steps at least 1"
    if args.slow_factor <= 0:
        return "--slow-factor must be positive"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argparse.ArgumentParser(prog="python -m forge_slo.train.worker", description=__doc__))
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        print("error: the worker runs under torchrun (RANK and WORLD_SIZE are not set); "
              "start the job with: python -m forge_slo.train launch --nproc 2", file=sys.stderr)
        return 2
    return run(args)


def run(args: argparse.Namespace) -> int:  # noqa: C901 - one loop, kept in one place to read top to bottom
    # Typed as Any on purpose: torch is an optional extra, and mypy must pass where it is not installed.
    torch: Any = importlib.import_module("torch")
    dist: Any = importlib.import_module("torch.distributed")
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        print(f"rank {rank}: error: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    backend = "nccl" if use_cuda else "gloo"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    registry = CollectorRegistry()
    rank_label = {names.RANK_LABEL: str(rank)}

    def gauge(name: str, doc: str) -> Gauge:
        return Gauge(name, doc, [names.RANK_LABEL], registry=registry)

    steps = Counter(names.STEPS, "All-reduce steps completed.", [names.RANK_LABEL], registry=registry)
    g_world = gauge(names.WORLD_SIZE, "Ranks in the job.")
    g_info = Gauge(names.INFO, "Backend and device of this rank.", [names.RANK_LABEL, "backend", "device"],
                   registry=registry)
    g_heartbeat = gauge(names.LAST_STEP_TIMESTAMP, "Unix time this rank last finished a step (the heartbeat).")
    g_step = gauge(names.STEP_SECONDS, f"Mean duration of the last {RECENT_STEPS} steps.")
    g_base_step = gauge(names.BASELINE_STEP_SECONDS, "Median step duration after warm-up (NaN until measured).")
    g_compute = gauge(names.COMPUTE_SECONDS, "Local work of the last step, before its all-reduce.")
    g_coll = gauge(names.COLLECTIVE_SECONDS, "Duration of the last all-reduce.")
    g_in_coll = gauge(names.COLLECTIVE_IN_PROGRESS, "1 while this rank is inside an all-reduce.")
    g_coll_started = gauge(names.COLLECTIVE_STARTED_TIMESTAMP, "Unix time the current or last all-reduce started.")
    g_algbw = gauge(names.ALGBW, f"All-reduce algorithm bandwidth over the last {RECENT_STEPS} steps.")
    g_busbw = gauge(names.BUSBW, f"All-reduce bus bandwidth (algbw x 2(n-1)/n) over the last {RECENT_STEPS} steps.")
    g_base_busbw = gauge(names.BASELINE_BUSBW, "Median bus bandwidth after warm-up (NaN until measured).")
    g_ready = gauge(names.BASELINE_READY, "1 once the baselines are measured.")
    g_world.labels(**rank_label).set(world)
    g_info.labels(str(rank), backend, str(device)).set(1)
    for g in (g_base_step, g_base_busbw):
        g.labels(**rank_label).set(math.nan)
    g_ready.labels(**rank_label).set(0)
    g_heartbeat.labels(**rank_label).set(time.time())

    if args.metrics_port:
        port = args.metrics_port + rank
        try:
            start_http_server(port, addr=args.metrics_host, registry=registry)
        except OSError as exc:
            print(f"rank {rank}: error: cannot serve /metrics on {args.metrics_host}:{port}: {exc}", file=sys.stderr)
            return 1
    if args.state_dir:
        state = Path(args.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        (state / f"rank-{rank}.json").write_text(json.dumps(
            {"rank": rank, "pid": os.getpid(), "world_size": world, "backend": backend,
             "metrics_url": f"http://{args.metrics_host}:{args.metrics_port + rank}/metrics"
             if args.metrics_port else None}, sort_keys=True))

    dist.init_process_group(backend, timeout=timedelta(seconds=args.collective_timeout_s))
    tensor = torch.ones(args.tensor_elements, dtype=torch.float32, device=device)
    nbytes = tensor.numel() * tensor.element_size()
    compute_s = args.compute_seconds * (args.slow_factor if rank == args.slow_rank else 1.0)
    recent_steps: deque[float] = deque(maxlen=RECENT_STEPS)
    recent_coll: deque[float] = deque(maxlen=RECENT_STEPS)
    base_steps: list[float] = []
    base_busbw: list[float] = []
    deadline = time.monotonic() + args.max_seconds
    done = 0
    print(f"rank {rank}/{world}: {backend} on {device}, {nbytes} bytes per all-reduce", file=sys.stderr, flush=True)
    try:
        while time.monotonic() < deadline and (args.steps == 0 or done < args.steps):
            t0 = time.perf_counter()
            if compute_s:
                time.sleep(compute_s)
            t1 = time.perf_counter()
            g_coll_started.labels(**rank_label).set(time.time())
            g_in_coll.labels(**rank_label).set(1)
            dist.all_reduce(tensor)
            if use_cuda:
                torch.cuda.synchronize(device)
            t2 = time.perf_counter()
            g_in_coll.labels(**rank_label).set(0)
            tensor.div_(world)
            done += 1
            step_s, coll_s = t2 - t0, max(t2 - t1, 1e-9)
            recent_steps.append(step_s)
            recent_coll.append(coll_s)
            algbw = nbytes * len(recent_coll) / sum(recent_coll)
            busbw = names.bus_bandwidth(algbw, world)
            steps.labels(**rank_label).inc()
            g_heartbeat.labels(**rank_label).set(time.time())
            g_step.labels(**rank_label).set(sum(recent_steps) / len(recent_steps))
            g_compute.labels(**rank_label).set(t1 - t0)
            g_coll.labels(**rank_label).set(coll_s)
            g_algbw.labels(**rank_label).set(algbw)
            g_busbw.labels(**rank_label).set(busbw)
            if args.warmup_steps < done <= args.warmup_steps + args.baseline_steps:
                base_steps.append(step_s)
                base_busbw.append(names.bus_bandwidth(nbytes / coll_s, world))
                if len(base_steps) == args.baseline_steps:
                    g_base_step.labels(**rank_label).set(statistics.median(base_steps))
                    g_base_busbw.labels(**rank_label).set(statistics.median(base_busbw))
                    g_ready.labels(**rank_label).set(1)
    except (RuntimeError, ValueError) as exc:  # a peer died or the collective timed out
        print(f"rank {rank}: collective failed after {done} steps: {str(exc).splitlines()[0] if str(exc) else exc}",
              file=sys.stderr, flush=True)
        return 1
    print(f"rank {rank}: finished {done} steps", file=sys.stderr, flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
