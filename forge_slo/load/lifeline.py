"""The processes of a load run end with the process that started them, even when it dies by SIGKILL.

Two mechanisms, because each alone has a gap:

- on Linux, ``prctl(PR_SET_PDEATHSIG)`` makes the kernel signal a child the moment its parent exits;
- everywhere, a lifeline pipe: the parent holds the write end and never writes, the child watches the read
  end, which reaches end-of-file when every write end is closed, which the kernel does when the parent dies.
  It also covers a parent that died before the child could ask for the signal.

The CLI uses the engine's standard input as the lifeline (it writes the plan and keeps the pipe open);
the engine gives its Locust workers a pipe of their own, named by :data:`LIFELINE_ENV`.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

LIFELINE_ENV = "FORGE_SLO_LIFELINE_FD"
_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent exits; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def lifeline_from_env() -> int | None:
    """The lifeline's file descriptor that the parent passed in :data:`LIFELINE_ENV`, if any."""
    raw = os.environ.get(LIFELINE_ENV, "")
    return int(raw) if raw.isdigit() else None


def watch(fd: int, on_gone: Callable[[], object], wait_readable: Callable[[int], object]) -> None:
    """Wait (with ``wait_readable``, which must let other work run) until ``fd`` reaches end-of-file or
    fails, then call ``on_gone`` once. Bytes the parent writes, if any, are read and ignored."""
    os.set_blocking(fd, False)
    while True:
        wait_readable(fd)
        try:
            if not os.read(fd, 4096):
                break
        except BlockingIOError:  # woken without data: wait again
            continue
        except OSError:  # the descriptor is broken: the parent cannot be watched, so take it as gone
            break
    on_gone()
