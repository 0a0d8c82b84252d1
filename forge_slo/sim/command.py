"""The simulator's flags, shared by ``forge-slo simulate`` and ``python -m forge_slo.sim``."""

from __future__ import annotations

import argparse

from forge_slo.durations import duration_flag
from forge_slo.errors import UsageError
from forge_slo.runtime.net import DEFAULT_HOST
from forge_slo.runtime.serving import READ_TIMEOUT_S
from forge_slo.sim.answers import DEFAULT_PRESET, SIM_PRESETS

DESCRIPTION = (
    "An OpenAI-compatible LLM inference simulator that behaves like an inference server without a GPU: "
    "continuous batching with a FIFO queue, configurable TTFT and time per output token, the Prometheus metrics "
    "of vLLM, SGLang, TGI or Triton (names, labels, buckets and counting quirks of the chosen --preset), fault "
    "injection and OpenTelemetry spans."
)

EPILOG = """\
endpoints:
  POST /v1/chat/completions, POST /v1/completions   OpenAI wire format, streaming (SSE) or not
  GET  /v1/models, /health (503 during an outage), /metrics (the preset's series and buckets)
  GET|POST|DELETE /admin/faults[/ID]                inject latency, errors, stalls, outages
  GET  /debug/stats[?reset=1]                      the simulator's own scheduling lag

examples:
  forge-slo simulate --port 8000
  forge-slo simulate --port 8000 --preset tgi
  forge-slo simulate --port 0 --config sim.yaml --ready-file /tmp/sim.json
  curl -X POST localhost:8000/admin/faults -d '{"kind": "outage", "duration_s": 30}'

The fault API changes what the server does: beyond 127.0.0.1 (--host 0.0.0.0) it needs an admin token.

exit codes: 0 stopped by a signal, 1 could not serve (port in use), 2 bad config file or flag (including
  --host beyond 127.0.0.1 without an admin token).
"""


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (default: 8000)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to bind (default: {DEFAULT_HOST}, this machine only; any other address "
                             "needs an admin token)")
    parser.add_argument("--config", metavar="FILE",
                        help="simulator YAML config (models, faults, tracing); without it one model, sim-llama, "
                             "with default timings")
    parser.add_argument("--admin-token", metavar="TOKEN",
                        help="require 'Authorization: Bearer TOKEN' on /admin "
                             "(also $FORGE_SLO_SIM_ADMIN_TOKEN or the config's admin_token); visible ASCII")
    parser.add_argument("--read-timeout", type=duration_flag(), default=READ_TIMEOUT_S, metavar="DURATION",
                        help="close a connection whose request line and headers, or body, do not arrive within "
                             f"this time; also the keep-alive idle limit (default: {READ_TIMEOUT_S:g}s)")
    parser.add_argument("--ready-file", metavar="FILE", help="write {host, port, pid} as JSON here once listening")
    parser.add_argument("--preset", choices=SIM_PRESETS,
                        help="the server whose metrics (names, labels, buckets, counting) and answers the simulator "
                             f"takes (default: the config's preset, else {DEFAULT_PRESET})")
    return parser


def main_from_args(args: argparse.Namespace) -> int:
    from forge_slo.runtime.serving import exit_now
    from forge_slo.sim.server import run_simulator

    if not 0 <= args.port < 65536:
        raise UsageError(f"--port: {args.port} is not a port number (1-65535, or 0 for any free port)")
    code = run_simulator(args.port, args.host, args.config, admin_token=args.admin_token,
                         ready_file=args.ready_file, read_timeout_s=args.read_timeout, preset=args.preset)
    exit_now(code)  # stopped cleanly: streams in flight need no interpreter finalization
