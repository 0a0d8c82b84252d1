"""``forge-slo gameday run|schedule``: flags and entry point, shared by the CLI and ``python -m forge_slo.chaos``.

Importing this module is cheap (no chaoslib); the work happens in :mod:`forge_slo.chaos.gameday`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from forge_slo.durations import duration_flag
from forge_slo.errors import UsageError
from forge_slo.runtime.text import table

DESCRIPTION = ("Run chaos experiments (each through the real 'chaos run') and judge them against the SLOs: "
               "'run' executes a directory of experiments or a game-day file and writes a report; 'schedule' "
               "writes a Kubernetes CronJob and a systemd service and timer that run it on a schedule.")
EPILOG = ("Exit codes (run): 0 every hypothesis held (skipped experiments do not count), 1 a hypothesis deviated "
          "or an experiment failed, 2 bad input, 130 interrupted. Rollbacks run after a failure, an abort and "
          "Ctrl-C alike (--rollback-strategy always).")


def build_gameday_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``run`` and ``schedule`` to ``parser`` (the ``gameday`` subcommand's parser)."""
    sub = parser.add_subparsers(dest="gameday_command", metavar="run|schedule")
    run = sub.add_parser("run", help="run experiments and write a report", epilog=EPILOG,
                         description="Run each experiment with 'chaos run', keep its journal, and write "
                                     "DIR/report.md, DIR/report.html (plots inline), DIR/summary.json, "
                                     "DIR/journals/ and DIR/logs/. Experiments read their endpoints from "
                                     "FORGE_SLO_* environment variables (see experiments/).")
    run.add_argument("paths", nargs="+", metavar="PATH",
                     help="experiment files, directories of them (*.json, *.yaml; not nested) or a game-day file "
                          "(kind: GameDay, experiments: [...], env: {...})")
    run.add_argument("--report", required=True, metavar="DIR", help="where the report and journals go")
    run.add_argument("--timestamped", action="store_true",
                     help="write into DIR/<UTC time>/ (for scheduled runs that keep every report)")
    run.add_argument("--lab", action="store_true",
                     help="start a local lab first (Prometheus with the compiled rules, the simulator under "
                          "traffic, a fake GPU fleet, the training job) on 127.0.0.1 and point the experiments at it")
    run.add_argument("--lab-specs", metavar="DIR", help="specs the lab compiles (default: PATH/specs)")
    run.add_argument("--lab-fleet", metavar="FILE",
                     help="fake GPU fleet of the lab (default: PATH/fleets/chaos-xid79.yaml)")
    run.add_argument("--prometheus-bin", default="", metavar="FILE", help="Prometheus server for --lab")
    run.add_argument("--prometheus-url", default="", metavar="URL",
                     help="Prometheus for the report's budgets and plots (default $FORGE_SLO_PROMETHEUS_URL)")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="environment variable for the experiments (repeatable)")
    run.add_argument("--timeout", type=duration_flag(), default=900.0, metavar="DURATION",
                     help="per experiment; then it is interrupted (its rollbacks still run). Default 15m")
    run.add_argument("--rollback-strategy", default="always", choices=("always", "default", "deviated", "never"),
                     help="Chaos Toolkit's rollback strategy (default always: after failures and Ctrl-C too)")
    run.add_argument("--chaos-settings", metavar="FILE", help="Chaos Toolkit settings file for 'chaos run'")
    run.set_defaults(gameday_func=_run)

    sched = sub.add_parser("schedule", help="write a CronJob and a systemd service + timer for the game day",
                           description="Write OUT/<name>.cronjob.yaml (batch/v1 CronJob: experiments from a "
                                       "ConfigMap, reports to a PVC or emptyDir) and OUT/<name>.service plus "
                                       "OUT/<name>.timer (systemd). Both run 'forge-slo gameday run' on the cron "
                                       "schedule (UTC).")
    sched.add_argument("paths", nargs="+", metavar="PATH",
                       help="experiments for the systemd service (made absolute); the CronJob reads /experiments")
    sched.add_argument("--cron", required=True, help="5-field cron schedule in UTC, e.g. '0 3 * * 1'")
    sched.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    sched.add_argument("--name", default="forge-slo-gameday", help="CronJob and unit name")
    sched.add_argument("--image", default="forge-slo:latest", help="container image with forge-slo[chaos]")
    sched.add_argument("--namespace", default="default")
    sched.add_argument("--configmap", default="forge-slo-experiments", help="ConfigMap holding the experiments")
    sched.add_argument("--reports-pvc", default="", help="PersistentVolumeClaim for the reports (default emptyDir)")
    sched.add_argument("--service-account", default="", help="for experiments that use Kubernetes actions")
    sched.add_argument("--report-dir", default="", help="systemd: report directory (default ./gameday-reports)")
    sched.add_argument("--working-dir", default="", help="systemd: working directory (default: the current one)")
    sched.add_argument("--user", default="", help="systemd: run as this user (network faults need root)")
    sched.add_argument("--exec", dest="executable", default="",
                       help="systemd: the forge-slo executable (default: the one on PATH, absolute)")
    sched.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    sched.add_argument("--timeout-hours", type=float, default=2.0, help="longest a game day may run (default 2)")
    sched.set_defaults(gameday_func=_schedule)
    return parser


def gameday_from_args(args: argparse.Namespace) -> int:
    """Run the chosen subcommand; raises ForgeError subclasses for the CLI to map to exit codes."""
    func = getattr(args, "gameday_func", None)
    if func is None:
        raise UsageError("gameday: choose a subcommand: run or schedule (see --help)")
    code: int = func(args)
    return code


def _print(line: str) -> None:
    print(line, flush=True)


def _default_beside(paths: list[str], child: str) -> Path:
    first = Path(paths[0])
    base = first if first.is_dir() else first.parent
    return base / child


def _run(args: argparse.Namespace) -> int:
    from forge_slo.chaos.gameday import RunOptions, run_gameday
    from forge_slo.chaos.report import SUMMARY_COLUMNS, headline, summary_rows, write_report
    from forge_slo.chaos.schedule import parse_env

    env = parse_env(args.env)
    settings = Path(args.chaos_settings) if args.chaos_settings else None
    if settings is not None and not settings.is_file():
        raise UsageError(f"--chaos-settings: {settings}: no such file")
    report = Path(args.report)
    if args.timestamped:
        report = report / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report.mkdir(parents=True, exist_ok=True)
    lab = None
    try:
        if args.lab:
            from forge_slo.chaos.lab import start_lab

            specs = Path(args.lab_specs) if args.lab_specs else _default_beside(args.paths, "specs")
            fleet = Path(args.lab_fleet) if args.lab_fleet else _default_beside(args.paths, "fleets/chaos-xid79.yaml")
            if not specs.exists():
                raise UsageError(f"--lab: no specs at {specs} (give --lab-specs)")
            _print(f"lab   starting on 127.0.0.1 (specs {specs}, fleet {fleet})")
            started = time.monotonic()
            lab = start_lab(report / "lab", specs=[specs], fleet=fleet, prometheus_bin=args.prometheus_bin)
            env = {**lab.env(), **env}
            _print(f"lab   ready in {time.monotonic() - started:.0f}s: Prometheus {lab.prometheus_url}")
        options = RunOptions(rollback_strategy=args.rollback_strategy, timeout_s=args.timeout, settings=settings)
        result = run_gameday(args.paths, report, env=env, options=options,
                             prometheus_url=args.prometheus_url or env.get("FORGE_SLO_PROMETHEUS_URL", ""),
                             progress=_print)
        html_path = write_report(result, report)
    finally:
        if lab is not None:
            lab.stop()
            shutil.rmtree(report / "lab" / "tsdb", ignore_errors=True)  # the report keeps the lab's logs only
    rows = summary_rows(result)
    if rows:
        _print("")
        for line in table(SUMMARY_COLUMNS, rows, max_width=[48] * len(SUMMARY_COLUMNS)):
            _print(line)
    _print(f"\n{headline(result)}")
    _print(f"report: {html_path} and {report / 'report.md'}")
    if result.interrupted:
        print("interrupted: the running experiment played its rollbacks; the rest did not run", file=sys.stderr)
        return 130
    return 1 if result.deviated else 0


def _schedule(args: argparse.Namespace) -> int:
    from forge_slo.chaos.schedule import ScheduleOptions, parse_env, write_schedule

    executable = args.executable or shutil.which("forge-slo") or "forge-slo"
    options = ScheduleOptions(
        paths=tuple(str(Path(p).resolve()) for p in args.paths), cron=args.cron, name=args.name, image=args.image,
        namespace=args.namespace, configmap=args.configmap, reports_pvc=args.reports_pvc,
        service_account=args.service_account,
        report_dir=str(Path(args.report_dir or "gameday-reports").resolve()),
        working_dir=str(Path(args.working_dir or ".").resolve()), user=args.user, executable=executable,
        env=parse_env(args.env), timeout_hours=args.timeout_hours)
    for path in write_schedule(options, args.out):
        _print(f"wrote {path}")
    return 0
