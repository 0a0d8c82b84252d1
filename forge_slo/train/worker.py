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


class _Metrics:
    """This rank's series on its own registry (``/metrics``), labelled with the rank."""

    def __init__(self, rank: int, world: int, backend: str, device: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.rank = str(rank)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, [names.RANK_LABEL], registry=self.registry).labels(self.rank)

        self.steps = Counter(names.STEPS, "All-reduce steps completed.", [names.RANK_LABEL],
                             registry=self.registry).labels(self.rank)
        info = Gauge(names.INFO, "Backend and device of this rank.", [names.RANK_LABEL, "backend", "device"],
                     registry=self.registry)
        info.labels(self.rank, backend, device).set(1)
        gauge(names.WORLD_SIZE, "Ranks in the job.").set(world)
        self.heartbeat = gauge(names.LAST_STEP_TIMESTAMP, "Unix time this rank last finished a step (the heartbeat).")
        self.step = gauge(names.STEP_SECONDS, f"Mean duration of the last {RECENT_STEPS} steps.")
        self.base_step = gauge(names.BASELINE_STEP_SECONDS, "Median step duration after warm-up (NaN until measured).")
        self.compute = gauge(names.COMPUTE_SECONDS, "Local work of the last step, before its all-reduce.")
        self.coll = gauge(names.COLLECTIVE_SECONDS, "Duration of the last all-reduce.")
        self.in_coll = gauge(names.COLLECTIVE_IN_PROGRESS, "1 while this rank is inside an all-reduce.")
        self.coll_started = gauge(names.COLLECTIVE_STARTED_TIMESTAMP,
                                  "Unix time the current or last all-reduce started.")
        self.algbw = gauge(names.ALGBW, f"All-reduce algorithm bandwidth over the last {RECENT_STEPS} steps.")
        self.busbw = gauge(names.BUSBW,
                           f"All-reduce bus bandwidth (algbw x 2(n-1)/n) over the last {RECENT_STEPS} steps.")
        self.base_busbw = gauge(names.BASELINE_BUSBW, "Median bus bandwidth after warm-up (NaN until measured).")
        self.ready = gauge(names.BASELINE_READY, "1 once the baselines are measured.")
        self.base_step.set(math.nan)
        self.base_busbw.set(math.nan)
        self.ready.set(0)
        self.heartbeat.set(time.time())


class _Steps:
    """Step and all-reduce times: the recent ones (the gauges) and the baseline after warm-up."""

    def __init__(self, args: argparse.Namespace, nbytes: int, world: int, metrics: _Metrics) -> None:
        self.args, self.nbytes, self.world, self.metrics = args, nbytes, world, metrics
        self.recent_steps: deque[float] = deque(maxlen=RECENT_STEPS)
        self.recent_coll: deque[float] = deque(maxlen=RECENT_STEPS)
        self.base_steps: list[float] = []
        self.base_busbw: list[float] = []
        self.done = 0

    def record(self, step_s: float, compute_s: float, coll_s: float) -> None:
        """One finished step: update the gauges, and the baseline while it is being measured."""
        m = self.metrics
        self.done += 1
        self.recent_steps.append(step_s)
        self.recent_coll.append(coll_s)
        algbw = self.nbytes * len(self.recent_coll) / sum(self.recent_coll)
        m.steps.inc()
        m.heartbeat.set(time.time())
        m.step.set(sum(self.recent_steps) / len(self.recent_steps))
        m.compute.set(compute_s)
        m.coll.set(coll_s)
        m.algbw.set(algbw)
        m.busbw.set(names.bus_bandwidth(algbw, self.world))
        warmup, baseline = self.args.warmup_steps, self.args.baseline_steps
        if warmup < self.done <= warmup + baseline:
            self.base_steps.append(step_s)
            self.base_busbw.append(names.bus_bandwidth(self.nbytes / coll_s, self.world))
            if len(self.base_steps) == baseline:
                m.base_step.set(statistics.median(self.base_steps))
                m.base_busbw.set(statistics.median(self.base_busbw))
                m.ready.set(1)


def run(args: argparse.Namespace) -> int:
    # Typed as Any on purpose: torch is an optional extra, and mypy must pass where it is not installed.
    torch: Any = importlib.import_module("torch")
    dist: Any = importlib.import_module("torch.distributed")

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
    metrics = _Metrics(rank, world, backend, str(device))
    if not _serve_metrics(args, rank, metrics):
        return 1
    _write_rank_file(args, rank, world, backend)

    dist.init_process_group(backend, timeout=timedelta(seconds=args.collective_timeout_s))
    tensor = torch.ones(args.tensor_elements, dtype=torch.float32, device=device)
    steps = _Steps(args, tensor.numel() * tensor.element_size(), world, metrics)
    print(f"rank {rank}/{world}: {backend} on {device}, {steps.nbytes} bytes per all-reduce", file=sys.stderr,
          flush=True)
    compute_s = args.compute_seconds * (args.slow_factor if rank == args.slow_rank else 1.0)
    deadline = time.monotonic() + args.max_seconds
    try:
        while time.monotonic() < deadline and (args.steps == 0 or steps.done < args.steps):
            t0 = time.perf_counter()
            if compute_s:
                time.sleep(compute_s)
            t1 = time.perf_counter()
            metrics.coll_started.set(time.time())
            metrics.in_coll.set(1)
            dist.all_reduce(tensor)
            if use_cuda:
                torch.cuda.synchronize(device)
            t2 = time.perf_counter()
            metrics.in_coll.set(0)
            tensor.div_(world)
            steps.record(t2 - t0, t1 - t0, max(t2 - t1, 1e-9))
    except (RuntimeError, ValueError) as exc:  # a peer died or the collective timed out
        print(f"rank {rank}: collective failed after {steps.done} steps: "
              f"{str(exc).splitlines()[0] if str(exc) else exc}", file=sys.stderr, flush=True)
        return 1
    print(f"rank {rank}: finished {steps.done} steps", file=sys.stderr, flush=True)
    dist.destroy_process_group()
    return 0


def _serve_metrics(args: argparse.Namespace, rank: int, metrics: _Metrics) -> bool:
    """Serve ``/metrics`` on PORT+rank (when a port is given); False, with the reason printed, when it cannot."""
    from prometheus_client import start_http_server

    if not args.metrics_port:
        return True
    port = args.metrics_port + rank
    try:
        start_http_server(port, addr=args.metrics_host, registry=metrics.registry)
    except OSError as exc:
        print(f"rank {rank}: error: cannot serve /metrics on {args.metrics_host}:{port}: {exc}", file=sys.stderr)
        return False
    return True


def _write_rank_file(args: argparse.Namespace, rank: int, world: int, backend: str) -> None:
    """``rank-<r>.json`` in the state directory: how chaos actions and the watchdog find this rank."""
    if not args.state_dir:
        return
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    (state / f"rank-{rank}.json").write_text(json.dumps(
        {"rank": rank, "pid": os.getpid(), "world_size": world, "backend": backend,
         "metrics_url": f"http://{args.metrics_host}:{args.metrics_port + rank}/metrics"
         if args.metrics_port else None}, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
