"""From errors to exit codes, one mapping for every entry point.

0 success; 1 failure (an SLO missed, a canary failed, a runner error); 2 bad input (specs, flags, files);
3 a data source could not be read (or a canary is inconclusive); 130 interrupted. A
:class:`~forge_slo.errors.ForgeError` prints its message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from forge_slo.errors import ForgeError, SpecErrors


def run(action: Callable[[], int]) -> int:
    """Run one command: a ForgeError becomes its message and exit code, Ctrl-C exit 130; a bug keeps its
    traceback. Every entry point (the CLI, ``python -m forge_slo.<package>``) goes through here."""
    try:
        return action()
    except SpecErrors as exc:
        for error in exc.errors:
            print(f"error: {error.render()}", file=sys.stderr)
        print(f"{len(exc.errors)} problem{'s' if len(exc.errors) != 1 else ''} found; nothing written",
              file=sys.stderr)
        return exc.exit_code
    except ForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
