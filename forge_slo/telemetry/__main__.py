"""``python -m forge_slo.telemetry``: the GPU exporter without the forge-slo CLI (same flags)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from forge_slo.errors import ForgeError
from forge_slo.telemetry.command import DESCRIPTION, build_parser, main_from_args


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forge_slo.telemetry", description=DESCRIPTION)
    build_parser(parser)
    args = parser.parse_args(argv)
    try:
        return main_from_args(args)
    except ForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
