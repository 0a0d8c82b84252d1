"""``python -m forge_slo.telemetry``: the same as ``forge-slo gpu-exporter``."""

import sys

from forge_slo.cli import main

raise SystemExit(main(["gpu-exporter", *sys.argv[1:]]))
