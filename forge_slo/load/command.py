"""``forge-slo load`` and ``forge-slo demo``: their flags, and the one function each runs.

Importing this module is cheap (no Locust, no gevent): the run happens in a child process
(:mod:`forge_slo.load.engine`), so the CLI's own process is never monkey-patched.
"""

from __future__ import annotations

import argparse

from forge_slo.durations import duration_flag
from forge_slo.errors import UsageError
from forge_slo.load.demo import DEMO_DEFAULT_DURATION, DEMO_DEFAULT_RATE, run_demo
from forge_slo.load.launch import run_load, run_worker
from forge_slo.load.options import PROGRESS_MODES, add_load_arguments, options_from_namespace, positive_number

DESCRIPTION = (
    "Load-test an OpenAI-compatible server with Locust: streaming chat or text completions (or embeddings), "
    "open-loop arrivals (--rate, Poisson by default) or closed-loop streams (--concurrency), a sweep of either, "
    "or a search for the highest load at which every SLO of --spec holds (--find-max). Every request's "
    "TTFT, TPOT, inter-token gaps and end-to-end latency go to DIR/records.jsonl; DIR/summary.json and "
    "DIR/report.html hold per-stage percentiles, errors by kind, SLO attainment against --spec, goodput and the "
    "server's own metrics. Subcommands: 'compare RUN_A RUN_B' (two runs side by side) and 'manifests' "
    "(Kubernetes manifests of a master and a set of workers for a run)."
)
EPILOG = ("exit codes: 0 every SLO of the spec held (or no spec), 1 an SLO was missed or the run failed, "
          "2 bad input (flags, spec, dataset), 130 interrupted (the summary covers what ran).")


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every ``forge-slo load`` flag to ``parser``, and its subcommands (``compare``, ``manifests``)."""
    add_load_arguments(parser)
    if parser.description is None:
        parser.description = DESCRIPTION
    if parser.epilog is None:
        parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="load_command", metavar="{compare,manifests}")
    from forge_slo.load.compare import build_compare_parser
    from forge_slo.load.k8s import build_manifests_parser

    build_compare_parser(sub.add_parser("compare", help="compare two load runs: a table and overlaid charts"))
    build_manifests_parser(sub.add_parser("manifests", help="write Kubernetes manifests for a distributed run"))
    return parser


def main_from_args(args: argparse.Namespace) -> int:
    """Run a load test from parsed flags (or a worker, or a subcommand); 0 (SLOs held) or 1 (missed); raises
    ForgeError on bad input."""
    command = getattr(args, "load_command", None)
    if command == "compare":
        from forge_slo.load.compare import compare_from_args

        return compare_from_args(args)
    if command == "manifests":
        from forge_slo.load.k8s import manifests_from_args

        return manifests_from_args(args)
    if args.worker:
        if not args.master_host:
            raise UsageError("--worker: --master-host HOST (the master's address) is required")
        return run_worker(str(args.master_host), int(args.master_port))
    return run_load(options_from_namespace(args, require_out=True))


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
    parser.add_argument("--duration", type=duration_flag(), default=DEMO_DEFAULT_DURATION, metavar="D",
                        help=f"how long to send (default {DEMO_DEFAULT_DURATION})")
    parser.add_argument("--rate", type=_rate, default=DEMO_DEFAULT_RATE, metavar="R",
                        help=f"requests per second (default {DEMO_DEFAULT_RATE:g})")
    parser.add_argument("--spec", metavar="FILE",
                        help="spec to judge (default slo_specs/chat.yaml if present, else the built-in copy)")
    parser.add_argument("--fault", choices=("none", "slow", "errors"), default="none",
                        help="make the simulator misbehave: slow (+600 ms TTFT) or errors (5%% HTTP 500), "
                             "to see a failing verdict (default none)")
    parser.add_argument("--workers", type=int, default=0, metavar="N", help="Locust worker processes (default 0)")
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto", help="live display (default auto)")
    if parser.description is None:
        parser.description = DEMO_DESCRIPTION
    if parser.epilog is None:
        parser.epilog = EPILOG
    return parser


def _rate(text: str) -> float:
    try:
        return positive_number("--rate", text)
    except UsageError as exc:  # as argparse's own error (exit 2), which names the flag
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--rate: ")) from None


def demo_from_args(args: argparse.Namespace) -> int:
    return run_demo(out=str(args.out), duration_s=float(args.duration), rate=float(args.rate), spec=args.spec,
                    fault=str(args.fault), workers=int(args.workers), progress=str(args.progress))
