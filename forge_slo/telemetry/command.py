"""The GPU exporter's flags, shared by ``python -m forge_slo.telemetry`` and ``forge-slo gpu-exporter``.

Importing this module is cheap (no prometheus_client, no pynvml), so a CLI can add the flags eagerly.
"""

from __future__ import annotations

import argparse

from forge_slo.durations import duration_flag
from forge_slo.errors import UsageError
from forge_slo.runtime.auth import token_from
from forge_slo.runtime.net import DEFAULT_HOST
from forge_slo.runtime.serving import READ_TIMEOUT_S
from forge_slo.telemetry.metrics import ADMIN_TOKEN_ENV, DEFAULT_XID_CODES, HOSTNAME_LABELS

DESCRIPTION = (
    "Serve GPU metrics in dcgm-exporter's names and labels, read from NVML (nvidia-ml-py) once per interval, "
    "or from a fake fleet described in YAML (--fake-fleet) where no GPU exists. A fake fleet also takes "
    "faults at run time: POST /admin/faults with JSON such as {\"gpu\": 0, \"kind\": \"xid\", \"code\": 79}."
)


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the exporter's flags to ``parser`` (a top-level parser or a subcommand's) and return it."""
    parser.add_argument("--port", type=int, default=9400,
                        help="port to listen on (default 9400, as dcgm-exporter; 0: any free port)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for "
                             "Prometheus on other hosts or in a pod; with --fake-fleet that needs --admin-token)")
    parser.add_argument("--interval", type=duration_flag(), default=1.0, metavar="DURATION",
                        help="how often to read the GPUs, e.g. 500ms, 1s, 30s (default 1s); "
                             "scrapes between reads get the last reading")
    parser.add_argument("--fake-fleet", metavar="FILE",
                        help="serve a simulated fleet from this YAML file instead of NVML "
                             "(examples in experiments/fleets/); enables POST /admin/faults")
    parser.add_argument("--hostname-label", choices=HOSTNAME_LABELS, default="hostname",
                        help="spelling of the host label: 'hostname' (dcgm-exporter since its PR #655, "
                             "default) or 'Hostname' (older dcgm-exporter, and the dashboards built for it)")
    parser.add_argument("--hostname", metavar="NAME",
                        help="host label value (default: the fleet file's hostname, else $NODE_NAME, "
                             "else this machine's host name)")
    parser.add_argument("--xid-codes", type=_xid_codes, default=DEFAULT_XID_CODES, metavar="CODES",
                        help="XID codes whose DCGM_FI_DEV_XID_ERRORS series exist at 0 before the first "
                             "error, comma-separated, or 'none' (default: "
                             f"{','.join(str(c) for c in DEFAULT_XID_CODES)}; err_code=\"0\" always exists)")
    parser.add_argument("--admin-token", metavar="TOKEN",
                        help=f"require 'Authorization: Bearer TOKEN' on /admin (also ${ADMIN_TOKEN_ENV}); "
                             "required to serve a fake fleet beyond 127.0.0.1")
    parser.add_argument("--read-timeout", type=duration_flag(), default=READ_TIMEOUT_S, metavar="DURATION",
                        help=f"close a connection whose request does not arrive in full within this time "
                             f"(headers, then body; default {READ_TIMEOUT_S:g}s)")
    parser.add_argument("--collect-on-scrape", action="store_true",
                        help="read the GPUs on every scrape as a naive exporter would (for benchmarks only)")
    return parser


def main_from_args(args: argparse.Namespace) -> int:
    """Run the exporter from parsed flags until SIGINT/SIGTERM; raises ForgeError subclasses for the CLI."""
    from forge_slo.runtime.serving import exit_now
    from forge_slo.telemetry.exporter import ExporterOptions, run_exporter  # prometheus_client, http.server

    if not 0 <= args.port < 65536:
        raise UsageError(f"--port: {args.port} is not a port number (1-65535, or 0 for any free port)")
    options = ExporterOptions(
        port=args.port,
        host=args.host,
        interval_s=args.interval,
        fake_fleet=args.fake_fleet,
        hostname_label=args.hostname_label,
        hostname=args.hostname,
        xid_codes=tuple(args.xid_codes),
        admin_token=token_from("--admin-token", args.admin_token, ADMIN_TOKEN_ENV),
        collect_on_scrape=args.collect_on_scrape,
        read_timeout_s=args.read_timeout,
    )
    exit_now(run_exporter(options))  # stopped cleanly: scrapes in flight need no interpreter finalization



def _xid_codes(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return ()
    codes = set()
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 0 < int(part) < 1024:
            raise argparse.ArgumentTypeError(f"{part!r} is not an XID code (a whole number 1-1023)")
        codes.add(int(part))
    return tuple(sorted(codes))
