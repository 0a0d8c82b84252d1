"""``python -m forge_slo.load [flags] | demo [flags] | locustfile``: ``forge-slo load`` and ``forge-slo demo``,
plus the path of the bundled locustfile for plain ``locust -f``."""

import sys

_args = sys.argv[1:]
if _args[:1] == ["locustfile"]:
    from forge_slo.load.engine import LOCUSTFILE

    print(LOCUSTFILE)
    raise SystemExit(0)

from forge_slo.cli import main  # noqa: E402 - the locustfile path above must not import the CLI

raise SystemExit(main(_args if _args[:1] == ["demo"] else ["load", *_args]))
