"""The ``forge-slo`` command: parse arguments, call one function, map errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forge_slo import __version__
from forge_slo.compile.pipeline import PRODUCERS, compile_specs, formats
from forge_slo.durations import duration_flag
from forge_slo.runtime.exits import run
from forge_slo.spec.model import ServiceSpec

if TYPE_CHECKING:
    from forge_slo.output import DirPlan

EPILOG = ("Exit codes: 0 success, 1 failure (stale output, an SLO missed, a canary failed, a runner error), "
          "2 bad input (spec, flags), 3 a source error or an inconclusive canary.")


@dataclass(frozen=True)
class RunnerCommand:
    """A subcommand that a runner package defines: its module holds the description, the flags and the run."""

    name: str
    help: str
    module: str
    description: str
    build: str
    run: str
    epilog: str | None = None   # the module's own epilog (else the common exit codes)
    raw: bool = False           # the description is pre-formatted

    def add_to(self, sub: Any) -> None:
        module = importlib.import_module(self.module)
        p = sub.add_parser(self.name, help=self.help, description=getattr(module, self.description),
                           epilog=getattr(module, self.epilog) if self.epilog else EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter if self.raw else argparse.HelpFormatter)
        getattr(module, self.build)(p)
        p.set_defaults(func=getattr(module, self.run))


# The runners' subcommands, in the order --help lists them. Their modules load when the parser is built.
RUNNER_COMMANDS = (
    RunnerCommand("simulate", "run the OpenAI-compatible inference simulator (vLLM, SGLang, TGI, Triton metrics)",
                  "forge_slo.sim.command", "DESCRIPTION", "build_parser", "main_from_args", "EPILOG", raw=True),
    RunnerCommand("load", "load-test an OpenAI-compatible server with Locust and judge it against a spec",
                  "forge_slo.load.command", "DESCRIPTION", "build_parser", "main_from_args", "EPILOG"),
    RunnerCommand("demo", "start the simulator, load it with the example spec and print the verdict",
                  "forge_slo.load.command", "DEMO_DESCRIPTION", "build_demo_parser", "demo_from_args", "EPILOG"),
    RunnerCommand("canary", "judge a canary against its baseline on the spec's SLIs",
                  "forge_slo.canary.command", "CANARY_DESCRIPTION", "build_canary_parser", "canary_from_args"),
    RunnerCommand("gate", "serve the canary judge to Argo Rollouts and Flagger (gate serve)",
                  "forge_slo.canary.command", "GATE_DESCRIPTION", "build_gate_parser", "gate_from_args"),
    RunnerCommand("gameday", "run chaos experiments as a game day and report, or schedule them",
                  "forge_slo.chaos.command", "DESCRIPTION", "build_gameday_parser", "gameday_from_args", "EPILOG"),
    RunnerCommand("ui", "serve the SLO status page: every SLO's budget, burn rates and alerts from Prometheus",
                  "forge_slo.oncall.command", "UI_DESCRIPTION", "build_ui_parser", "ui_from_args"),
    RunnerCommand("report", "write an error-budget report of a period (HTML, Markdown, JSON) for a service review",
                  "forge_slo.oncall.command", "REPORT_DESCRIPTION", "build_report_parser", "report_from_args"),
    RunnerCommand("gpu-exporter", "serve GPU metrics in dcgm-exporter's names (NVML, or a fake fleet)",
                  "forge_slo.telemetry.command", "DESCRIPTION", "build_parser", "main_from_args"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forge-slo",
        description="SLOs for LLM inference and training clusters: compile YAML specs into Prometheus rules, "
                    "burn-rate alerts and promtool tests, and judge real clusters against them.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"forge-slo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check spec files and report every problem",
                       description="Load and check spec files (forge-slo/v1; Sloth prometheus/v1 and "
                                   "PrometheusServiceLevel; OpenSLO v1, v1alpha and v2alpha; Pyrra "
                                   "ServiceLevelObjective). Prints one line per problem with file, line and field, "
                                   "and a warning for each field an import could not carry over.", epilog=EPILOG)
    p.add_argument("paths", nargs="+", metavar="PATH", help="spec files or directories (all *.yaml/*.yml in them)")
    _add_native_histograms(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("compile", help="compile specs into rules, alerts, promtool tests and dashboards",
                       description="Compile specs into one folder per output under DIR: "
                                   + "; ".join(f"{pr.folder}/: {pr.description}" for pr in PRODUCERS)
                                   + ". forge-slo writes and removes only files it generated (listed in each "
                                   "folder's .forge-slo-manifest) and never replaces a file it did not write; "
                                   "nothing is written when any spec is invalid.", epilog=EPILOG)
    p.add_argument("paths", nargs="+", metavar="PATH", help="spec files or directories")
    p.add_argument("--out", "-o", required=True, metavar="DIR", type=Path, help="output directory")
    choices = formats()
    p.add_argument("--format", default=next(iter(choices)), choices=tuple(choices),
                   help="; ".join(f"{name}: {text}" for name, text in choices.items())
                   + f" (default {next(iter(choices))})")
    for producer in PRODUCERS:
        p.add_argument(f"--{producer.folder}-out", metavar="DIR", type=Path, dest=_folder_dest(producer.folder),
                       help=f"write the {producer.description} here instead of DIR/{producer.folder}")
        if producer.optional:
            p.add_argument(f"--no-{producer.name}", action="append_const", const=producer.name, dest="skip",
                           help=f"skip the {producer.description}")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if DIR differs from what the specs compile to (for CI)")
    _add_rule_group_flags(p)
    _add_native_histograms(p)
    p.set_defaults(func=cmd_compile, skip=[])

    p = sub.add_parser("export", help="write specs in another SLO format (OpenSLO v1)",
                       description="Write the given specs as OpenSLO v1 documents (a Service and one SLO per SLO, "
                                   "with burn-rate alert policies; forge-slo.dev/* annotations keep what OpenSLO has "
                                   "no field for, so importing them back compiles to the same rules).", epilog=EPILOG)
    p.add_argument("paths", nargs="+", metavar="PATH", help="spec files or directories")
    p.add_argument("--format", default="openslo", choices=("openslo",), help="the format to write (openslo)")
    p.add_argument("--out", "-o", metavar="DIR", type=Path,
                   help="write DIR/<service>.openslo.yaml (default: all documents to standard output)")
    _add_native_histograms(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("prometheus-config", help="write a Prometheus config that scrapes targets and loads rules",
                       description="Write a prometheus.yml that scrapes the given targets and loads the rule files "
                                   "forge-slo compiled, e.g. to run the simulator, Prometheus and the SLO rules "
                                   "together.", epilog=EPILOG)
    p.add_argument("--scrape", nargs="+", required=True, metavar="HOST:PORT", help="targets to scrape")
    p.add_argument("--rules", required=True, metavar="DIR", type=Path,
                   help="the --out directory of forge-slo compile (or a directory of *.rules.yaml)")
    p.add_argument("--scrape-interval", type=duration_flag(), default=15.0, metavar="DURATION",
                   help="e.g. 5s, 2.5s (default 15s)")
    p.add_argument("--evaluation-interval", type=duration_flag(), metavar="DURATION",
                   help="rule evaluation interval (default: as scrape)")
    p.add_argument("--job", default="forge-slo", help="job label of the targets (default forge-slo)")
    p.add_argument("--out", "-o", type=Path, metavar="FILE", help="write here instead of standard output")
    p.set_defaults(func=cmd_prometheus_config)

    for command in RUNNER_COMMANDS:
        command.add_to(sub)
    return parser


def _add_native_histograms(p: argparse.ArgumentParser) -> None:
    p.add_argument("--native-histograms", action="store_true",
                   help="the Prometheus that evaluates the rules reads native histograms (2.40+ with "
                        "--enable-feature=native-histograms, or 3.x): compile SLIs on them (Pyrra's latencyNative)")


def _add_rule_group_flags(p: argparse.ArgumentParser) -> None:
    from forge_slo.compile.producer import DEFAULT_MAX_RULES_PER_GROUP

    p.add_argument("--max-rules-per-group", type=_count, default=DEFAULT_MAX_RULES_PER_GROUP, metavar="N",
                   help=f"split rule groups to at most N rules (default {DEFAULT_MAX_RULES_PER_GROUP}, Mimir's "
                        "default limit; 0: one group per SLO)")
    p.add_argument("--group-interval", type=duration_flag(), metavar="DURATION",
                   help="evaluation interval written on every rule group (default: the engine's global one)")
    p.add_argument("--group-limit", type=_count, metavar="N",
                   help="limit written on every rule group (alerts and series a rule may produce; 0: none)")
    p.add_argument("--group-query-offset", type=duration_flag(), metavar="DURATION",
                   help="query_offset written on every rule group (Prometheus 2.53+, Mimir): evaluate that far "
                        "in the past, for data that arrives late")


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def cmd_validate(args: argparse.Namespace) -> int:
    from forge_slo.spec import load_specs

    specs = load_specs(args.paths, native_histograms=args.native_histograms)
    _print_warnings(specs)
    for spec in specs:
        print(f"ok  {spec.service}: {len(spec.slos)} SLOs from {spec.source} ({spec.source_format})")
    return 0


def _print_warnings(specs: Sequence[ServiceSpec]) -> None:
    for spec in specs:
        for warning in spec.warnings:
            print(f"warning: {warning}", file=sys.stderr)


def _folder_dest(folder: str) -> str:
    return "out_" + folder.replace("-", "_")


def cmd_compile(args: argparse.Namespace) -> int:
    from forge_slo.compile.producer import CompileOptions, RuleGroups
    from forge_slo.output import stale_files, write_output
    from forge_slo.spec import load_specs

    specs = load_specs(args.paths, native_histograms=args.native_histograms)
    _print_warnings(specs)
    targets = {pr.folder: getattr(args, _folder_dest(pr.folder)) or args.out / pr.folder for pr in PRODUCERS
               if pr.name not in args.skip}
    root = os.path.abspath(args.out)
    folders = {name: os.path.relpath(os.path.abspath(path), root) for name, path in targets.items()}
    groups = RuleGroups(max_rules=args.max_rules_per_group, interval_seconds=args.group_interval,
                        limit=args.group_limit, query_offset_seconds=args.group_query_offset)
    result = compile_specs(specs, CompileOptions(format=args.format, folders=folders, groups=groups),
                           skip=args.skip)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.check:
        problems = stale_files(result.artifacts, targets)
        for problem in problems:
            print(f"stale: {problem}", file=sys.stderr)
        if problems:
            print("the output is out of date: run forge-slo compile again without --check", file=sys.stderr)
            return 1
        print(f"up to date ({len(result.artifacts)} files)")
        return 0
    plans = write_output(result.artifacts, targets)
    slos = sum(len(s.slos) for s in specs)
    print(f"compiled {len(specs)} services, {slos} SLOs into {len(result.artifacts)} files")
    _print_plans(plans)
    return 0


def _print_plans(plans: Iterable[DirPlan]) -> None:
    """Each file written, then each stale file of an earlier run removed."""
    for plan in plans:
        for rel in sorted(plan.files):
            print(f"  {plan.path / rel}")
        for rel in plan.stale:
            print(f"  removed {plan.path / rel} (no spec produces it any more)")


def cmd_export(args: argparse.Namespace) -> int:
    from forge_slo.compile.artifact import Artifact
    from forge_slo.compile.openslo_export import export_openslo
    from forge_slo.output import write_output
    from forge_slo.spec import load_specs

    specs = load_specs(args.paths, native_histograms=args.native_histograms)
    _print_warnings(specs)
    exported = export_openslo(specs)
    for warning in exported.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.out is None:
        sys.stdout.write("---\n".join(text for _, text in sorted(exported.files.items())))
        return 0
    artifacts = [Artifact(f"openslo/{name}", text) for name, text in sorted(exported.files.items())]
    plans = write_output(artifacts, {"openslo": args.out})
    print(f"exported {len(specs)} services as OpenSLO v1")
    _print_plans(plans)
    return 0


def cmd_prometheus_config(args: argparse.Namespace) -> int:
    from forge_slo.compile import yamlout
    from forge_slo.compile.prometheus_config import prometheus_config, rule_files_in

    config = prometheus_config(args.scrape, rule_files_in(args.rules), scrape_interval_s=args.scrape_interval,
                               evaluation_interval_s=args.evaluation_interval, job=args.job)
    text = yamlout.dump(config, "Written by forge-slo prometheus-config.")
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run(lambda: int(args.func(args)))
