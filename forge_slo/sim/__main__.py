"""``python -m forge_slo.sim``: run the simulator until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import sys

from forge_slo.errors import ForgeError

_EPILOG = """\
endpoints:
  POST /v1/chat/completions, POST /v1/completions   OpenAI wire format, streaming (SSE) or not
  GET  /v1/models, /health (503 during an outage), /metrics (vLLM's series and buckets)
  GET|POST|DELETE /admin/faults[/ID]                inject latency, errors, stalls, outages
  GET  /debug/stats[?reset=1]                      the simulator's own scheduling lag

examples:
  python -m forge_slo.sim --port 8000
  python -m forge_slo.sim --port 0 --config sim.yaml --ready-file /tmp/sim.json
  curl -X POST localhost:8000/admin/faults -d '{"kind": "outage", "duration_s": 30}'

exit codes: 0 stopped by a signal, 1 could not serve (port in use), 2 bad config file.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m forge_slo.sim",
        description="An OpenAI-compatible LLM inference simulator that behaves like a vLLM server (no GPU): "
        "continuous batching with a FIFO queue, configurable TTFT/ITL, vLLM's Prometheus metrics, "
        "fault injection and OpenTelemetry spans.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (default: 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="simulator YAML config (models, faults, tracing); "
        "without it one model, sim-llama, with default timings",
    )
    p.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' on /admin "
        "(also $FORGE_SLO_SIM_ADMIN_TOKEN or the config's admin_token)",
    )
    p.add_argument("--ready-file", metavar="FILE", help="write {host, port, pid} as JSON here once listening")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from forge_slo.sim.server import run_simulator

    try:
        return run_simulator(
            args.port, args.host, args.config, admin_token=args.admin_token, ready_file=args.ready_file
        )
    except ForgeError as e:
        print(f"forge-slo sim: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
