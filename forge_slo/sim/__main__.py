"""``python -m forge_slo.sim``: the same as ``forge-slo simulate``."""

import sys

from forge_slo.cli import main

raise SystemExit(main(["simulate", *sys.argv[1:]]))
