"""``python -m forge_slo.train``: launch, stop and watch the all-reduce job."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence

from forge_slo.durations import duration_flag
from forge_slo.errors import UsageError

EPILOG = "Exit codes: 0 success (watch: healthy), 1 failure (watch: hung or straggling), 2 bad input."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m forge_slo.train", epilog=EPILOG,
                                     description="An all-reduce training job for chaos experiments: torchrun on "
                                                 "loopback with N ranks, metrics on /metrics, and a watchdog.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("launch", help="run the job under torchrun (worker flags after --)", epilog=EPILOG,
                       description="Run the job: torchrun --nproc-per-node N on 127.0.0.1. Flags after -- go to "
                                   "every rank (see python -m forge_slo.train.worker --help), e.g. "
                                   "-- --max-seconds 120 --tensor-elements 262144.")
    p.add_argument("--nproc", type=int, default=2, help="ranks (default 2)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="loopback address for /metrics (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int, default=29600, help="rank r serves PORT+r (default 29600)")
    p.add_argument("--state-dir", required=True, help="directory for job.json, rank-<r>.json and job.log")
    p.add_argument("--netns", help="run the ranks inside this existing network namespace (needs root)")
    p.add_argument("--detach", action="store_true", help="start in the background and return")
    p.add_argument("worker_args", nargs=argparse.REMAINDER, help="-- then worker flags")
    p = sub.add_parser("stop", help="stop a job started with --detach", epilog=EPILOG)
    p.add_argument("--state-dir", required=True)
    p = sub.add_parser("watch", help="judge the job once: hung collective, stragglers, bus bandwidth",
                       epilog=EPILOG)
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=29600)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--stall-after", type=duration_flag(), default=10.0, metavar="DURATION",
                   help="hung when no rank finished a step for this long, e.g. 10s, 2.5s (default 10s)")
    p.add_argument("--straggler-factor", type=float, default=2.0,
                   help="straggling when a step takes this many times its baseline (default 2)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from forge_slo.runtime.exits import run

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("launch", "stop", "watch"):
        return run(lambda: _command(args))
    parser.print_help()
    return 2


def _command(args: argparse.Namespace) -> int:
    if args.command == "launch":
        from forge_slo.train.launch import main_launch

        worker_args = list(args.worker_args)
        if worker_args[:1] == ["--"]:
            worker_args = worker_args[1:]
        return main_launch(args.nproc, args.metrics_host, args.metrics_port, args.state_dir, args.netns,
                           worker_args, args.detach)
    if args.command == "stop":
        from forge_slo.train.launch import stop_job

        print("stopped" if stop_job(args.state_dir) else "no job was running")
        return 0
    return watch(args)


def watch(args: argparse.Namespace) -> int:
    from forge_slo.train.watchdog import metrics_urls
    from forge_slo.train.watchdog import watch as judge_job

    if args.nproc < 1 or args.straggler_factor <= 1:
        raise UsageError("--nproc must be at least 1 and --straggler-factor above 1")
    verdict = judge_job(metrics_urls(args.metrics_host, args.metrics_port, args.nproc),
                        stall_after_s=args.stall_after, straggler_factor=args.straggler_factor)
    if args.json:
        print(json.dumps({"at": time.time(), "healthy": verdict.healthy, "hung": verdict.hung,
                          "unreachable": list(verdict.unreachable), "stuck": list(verdict.stuck),
                          "stragglers": list(verdict.stragglers), "waited_on": verdict.waited_on,
                          "busbw_bytes_per_second": None if math.isnan(verdict.busbw_bytes_per_second)
                          else verdict.busbw_bytes_per_second, "reasons": list(verdict.reasons)}, sort_keys=True))
    else:
        print(verdict.summary())
    return 0 if verdict.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
