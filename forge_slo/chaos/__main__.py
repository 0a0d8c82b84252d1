"""``python -m forge_slo.chaos``: ``gameday run|schedule`` (as ``forge-slo gameday``) and ``lab``."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from forge_slo.chaos.command import DESCRIPTION, EPILOG, build_gameday_parser, gameday_from_args
from forge_slo.durations import duration_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m forge_slo.chaos", description="Chaos experiments for forge-slo.")
    sub = parser.add_subparsers(dest="command", metavar="gameday|lab")
    gameday = sub.add_parser("gameday", help="run or schedule game days", description=DESCRIPTION, epilog=EPILOG)
    build_gameday_parser(gameday)
    lab = sub.add_parser("lab", help="run the local chaos lab until Ctrl-C and print its FORGE_SLO_* variables",
                         description="Start Prometheus (with the rules compiled from --specs), the simulator under "
                                     "traffic, a fake GPU fleet and the training job on 127.0.0.1, print the "
                                     "environment the experiments read, and keep them up until Ctrl-C or "
                                     "--duration. Then run experiments by hand: chaos run experiments/x.json")
    lab.add_argument("--specs", default="experiments/specs", help="specs to compile (default experiments/specs)")
    lab.add_argument("--fleet", default="experiments/fleets/chaos-xid79.yaml", help="fake GPU fleet")
    lab.add_argument("--dir", default="", help="working directory (default: a new one under /tmp)")
    lab.add_argument("--duration", type=duration_flag(maximum=86400.0), default=1800.0, metavar="DURATION",
                     help="stop after this long, e.g. 10m, 1h (default 30m, at most 1d)")
    lab.add_argument("--prometheus-bin", default="")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from forge_slo.runtime.exits import run

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "gameday":
        return run(lambda: gameday_from_args(args))
    if args.command == "lab":
        return run(lambda: run_lab(args))
    parser.print_help()
    return 2


def run_lab(args: argparse.Namespace) -> int:
    import tempfile

    from forge_slo.chaos.lab import start_lab

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="forge-slo-lab-"))
    lab = start_lab(workdir, specs=[Path(args.specs)], fleet=Path(args.fleet), prometheus_bin=args.prometheus_bin,
                    max_duration_s=args.duration)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        for key, value in sorted(lab.env().items()):
            print(f"export {key}={value}")
        print(f"# lab up in {workdir}; Ctrl-C stops it", flush=True)
        time.sleep(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        # A second signal (a supervisor forwarding SIGTERM, a second Ctrl-C) must not cut the cleanup short:
        # the lab's children run in sessions of their own and would outlive it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        lab.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
