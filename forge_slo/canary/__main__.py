"""``python -m forge_slo.canary [flags]`` and ``python -m forge_slo.canary gate serve [flags]``: the same as
``forge-slo canary`` and ``forge-slo gate serve``."""

import sys

from forge_slo.cli import main

_args = sys.argv[1:]
raise SystemExit(main(_args if _args[:1] == ["gate"] else ["canary", *_args]))
