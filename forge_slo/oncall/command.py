"""``forge-slo ui`` and ``forge-slo report``: flags, parsing at the edge, and the runs.

Importing this module is cheap (no aiohttp); the work imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from forge_slo.durations import duration_flag, format_duration
from forge_slo.errors import UsageError
from forge_slo.runtime.serving import READ_TIMEOUT_S

if TYPE_CHECKING:
    from forge_slo.spec.model import ServiceSpec

UI_DESCRIPTION = (
    "Serve an SLO status page read from Prometheus (the compiled recording rules and alerts): every SLO with "
    "its objective, attainment, error budget left, burn rate over each alert window and firing alerts, worst "
    "first, sortable and filterable; a page per SLO with the budget burn-down, the error ratio against the alert "
    "thresholds, each group and the alert history. Server-rendered HTML and inline SVG, no script; it refreshes "
    "itself, reads on a phone, and says when Prometheus or a recording has no data. Read-only."
)
REPORT_DESCRIPTION = (
    "Write an error-budget report of a period for a service review: per SLO attainment, budget consumed, the "
    "worst days, every page and ticket with its duration, and the change against the previous period. Pages and "
    "tickets come from the compiled alert conditions evaluated over the period on the recorded error ratios. "
    "With --out DIR: report.html (with charts), report.md and report.json; without: the Markdown on standard "
    "output."
)
TOKEN_ENV = "FORGE_SLO_UI_TOKEN"


def _specs(paths: list[str]) -> list[ServiceSpec]:
    from forge_slo.spec import load_specs

    for path in paths:
        if not Path(path).exists():
            raise UsageError(f"{path}: no such file or directory")
    specs = load_specs(paths)
    if not specs:
        raise UsageError(f"{', '.join(paths)} holds no service spec")
    names = [spec.service for spec in specs]
    if len(set(names)) != len(names):
        raise UsageError("two specs describe the same service")
    for spec in specs:
        for warning in spec.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return specs


def _prometheus(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--prometheus: {url!r} must start with http:// or https://")
    return url.rstrip("/")


def _add_prometheus(parser: argparse.ArgumentParser, timeout_s: float) -> None:
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="spec files or directories")
    parser.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    parser.add_argument("--prometheus-timeout", type=duration_flag(), default=timeout_s, metavar="DURATION",
                        help=f"timeout of each Prometheus query (default {format_duration(timeout_s)})")


# ------------------------------------------------------------------------------------------------------- ui

def build_ui_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _add_prometheus(parser, 5.0)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; beyond loopback, give a token)")
    parser.add_argument("--port", type=int, default=8090, help="port (default 8090; 0: any free port)")
    parser.add_argument("--token", metavar="TOKEN",
                        help=f"bearer token a client must send or sign in with, visible ASCII (also ${TOKEN_ENV})")
    parser.add_argument("--token-file", metavar="FILE", help="read the bearer token from this file")
    parser.add_argument("--refresh", type=duration_flag(), default=30.0, metavar="DURATION",
                        help="how often an open page reloads itself (default 30s)")
    parser.add_argument("--grafana-url", metavar="URL",
                        help="Grafana's base URL, to link each SLO to its compiled dashboard")
    parser.add_argument("--read-timeout", type=duration_flag(), default=READ_TIMEOUT_S, metavar="DURATION",
                        help="close a connection whose request does not arrive within this time "
                             f"(default {READ_TIMEOUT_S:g}s)")
    parser.add_argument("--ready-file", metavar="FILE",
                        help="write {\"host\", \"port\", \"pid\"} as JSON to FILE once listening")
    return parser


def _token(args: argparse.Namespace) -> str | None:
    """The token from --token, --token-file or the environment, validated; None when none is given."""
    from forge_slo.runtime.auth import token_from_flags

    return token_from_flags(args.token, args.token_file, TOKEN_ENV)


def ui_from_args(args: argparse.Namespace) -> int:
    """Run ``forge-slo ui`` until SIGINT/SIGTERM; bad input raises UsageError."""
    from forge_slo.runtime.serving import exit_now

    if not 0 <= args.port < 65536:
        raise UsageError(f"--port: {args.port} is not a port number (0-65535)")
    if args.grafana_url is not None and not args.grafana_url.startswith(("http://", "https://")):
        raise UsageError(f"--grafana-url: {args.grafana_url!r} must start with http:// or https://")
    prometheus = _prometheus(args.prometheus)
    token = _token(args)
    specs = _specs(args.specs)
    from forge_slo.oncall.server import UiOptions, serve

    options = UiOptions(specs=tuple(specs), prometheus_url=prometheus, prometheus_timeout_s=args.prometheus_timeout,
                        token=token, refresh_seconds=args.refresh, grafana_url=args.grafana_url,
                        read_timeout_s=args.read_timeout)
    # Stopped cleanly: reads abandoned in daemon threads need no interpreter finalization.
    exit_now(serve(options, host=args.host, port=args.port, ready_file=args.ready_file))


# --------------------------------------------------------------------------------------------------- report

def parse_time(text: str, now: float) -> float:
    """Unix seconds or an RFC 3339 time with a zone; ValueError with the reason."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{text!r} is neither Unix seconds nor an RFC 3339 time") from None
        if stamp.tzinfo is None:
            raise ValueError(f"{text!r} needs a time zone (e.g. 2025-01-02T00:00:00Z)") from None
        seconds = stamp.timestamp()
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r} must be a positive time")
    if seconds > now + 60:
        raise ValueError(f"{text!r} is in the future")
    return seconds


def build_report_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _add_prometheus(parser, 30.0)
    parser.add_argument("--period", type=duration_flag(), metavar="DURATION",
                        help="the report's period, e.g. 30d or 28d (default: the specs' period)")
    parser.add_argument("--end", metavar="TIME",
                        help="when the period ends: Unix seconds or RFC 3339, e.g. 2025-07-01T00:00:00Z "
                             "(default now)")
    parser.add_argument("--step", type=duration_flag(), default=60.0, metavar="DURATION",
                        help="how often the alert conditions are evaluated over the period (default 1m, as "
                             "Prometheus' usual rule interval); durations are known to this step")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write report.html, report.md and report.json here (default: Markdown on stdout)")
    return parser


def report_from_args(args: argparse.Namespace) -> int:
    """Write the report; an unreachable Prometheus is a SourceError (exit 3)."""
    now = time.time()
    end = now
    if args.end is not None:
        try:
            end = parse_time(args.end, now)
        except ValueError as exc:
            raise UsageError(f"--end: {exc}") from None
    prometheus = _prometheus(args.prometheus)
    specs = _specs(args.specs)
    from forge_slo.oncall.report import build_report, to_markdown, write_report
    from forge_slo.sources.prometheus import PrometheusClient

    with PrometheusClient(prometheus, timeout_s=args.prometheus_timeout) as client:
        report = build_report(client, specs, end=end, period_seconds=args.period, step_seconds=args.step)
    if args.out is None:
        sys.stdout.write(to_markdown(report))
        return 0
    for path in write_report(report, args.out):
        print(f"wrote {path}")
    return 0
