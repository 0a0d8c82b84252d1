"""Process faults on this machine: kill or pause a named worker (by pid, pid file or command line).

Pausing is SIGSTOP; its rollback :func:`resume_process` (SIGCONT) with the same selector. A selector that
matches more than ``max_processes`` processes, this process or one of its ancestors, or PID 1 is refused.
On Kubernetes use chaostoolkit-kubernetes' pod and node actions instead (see experiments/kubernetes/).
"""

import os
import re
import signal as signals
import time
from pathlib import Path
from typing import Any

from forge_slo.errors import RunnerError, UsageError

__all__ = ["kill_process", "pause_process", "resume_process"]

MAX_PAUSE_S = 3600.0


def _signal(name: str) -> signals.Signals:
    try:
        return signals.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise UsageError(f"signal: {name!r} is not a signal name (e.g. SIGKILL, SIGTERM)") from None


def _protected() -> set[int]:
    """PID 1, this process and its ancestors: never signalled."""
    out = {1, os.getpid()}
    pid = os.getppid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def select_processes(pid: int = 0, pid_file: str = "", name: str = "", max_processes: int = 1) -> list[int]:
    """Pids chosen by exactly one of ``pid``, ``pid_file`` or ``name`` (a regex searched in the command line)."""
    given = [x for x in (pid, pid_file, name) if x]
    if len(given) != 1:
        raise UsageError("give exactly one of pid, pid_file or name (a regular expression over the command line)")
    if pid:
        pids = [int(pid)]
    elif pid_file:
        try:
            pids = [int(Path(pid_file).read_text().split()[0])]
        except (OSError, ValueError, IndexError) as exc:
            raise RunnerError(f"pid_file {pid_file}: cannot read a pid ({exc})") from None
    else:
        try:
            pattern = re.compile(name)
        except re.error as exc:
            raise UsageError(f"name: {name!r} is not a regular expression: {exc}") from None
        protected = _protected()
        pids = sorted(int(p.name) for p in Path("/proc").iterdir()
                      if p.name.isdigit() and int(p.name) not in protected and pattern.search(_cmdline(int(p.name))))
        if not pids:
            raise RunnerError(f"no process matches {name!r}")
    if len(pids) > max_processes:
        raise RunnerError(f"{len(pids)} processes match (pids {', '.join(map(str, pids[:10]))}); at most "
                          f"{max_processes} allowed: narrow the selector or raise max_processes")
    bad = sorted(set(pids) & _protected())
    if bad:
        raise RunnerError(f"refusing to signal pid {bad[0]}: PID 1, the chaos process itself or its parent")
    return pids


def _send(pids: list[int], sig: signals.Signals) -> list[int]:
    done = []
    for p in pids:
        try:
            os.kill(p, sig)
            done.append(p)
        except ProcessLookupError:
            continue
        except PermissionError:
            raise RunnerError(f"not allowed to signal pid {p} ({sig.name})") from None
    return done


def kill_process(pid: int = 0, pid_file: str = "", name: str = "", signal: str = "SIGKILL",
                 max_processes: int = 1) -> dict[str, Any]:
    """Send ``signal`` (default SIGKILL) to the selected processes; returns the pids signalled."""
    sig = _signal(signal)
    pids = select_processes(pid, pid_file, name, max_processes)
    done = _send(pids, sig)
    if not done:
        raise RunnerError(f"pids {pids} were already gone")
    return {"signal": sig.name, "pids": done}


def pause_process(pid: int = 0, pid_file: str = "", name: str = "", duration_s: float = 0,
                  max_processes: int = 1) -> dict[str, Any]:
    """SIGSTOP the selected processes; with ``duration_s`` > 0, SIGCONT them after that many seconds
    (blocking), else they stay paused until :func:`resume_process` (the rollback)."""
    if not 0 <= float(duration_s) <= MAX_PAUSE_S:
        raise UsageError(f"duration_s: {duration_s!r}; use 0 (until resumed) up to {MAX_PAUSE_S:g} seconds")
    pids = select_processes(pid, pid_file, name, max_processes)
    done = _send(pids, signals.SIGSTOP)
    if duration_s:
        try:
            time.sleep(float(duration_s))
        finally:
            _send(done, signals.SIGCONT)
    return {"paused": done, "resumed": bool(duration_s)}


def resume_process(pid: int = 0, pid_file: str = "", name: str = "", max_processes: int = 1) -> dict[str, Any]:
    """SIGCONT the selected processes (the rollback of :func:`pause_process`); none left is not an error."""
    try:
        pids = select_processes(pid, pid_file, name, max_processes)
    except RunnerError as exc:
        if "no process matches" in str(exc) or "cannot read a pid" in str(exc):
            return {"resumed": []}
        raise
    return {"resumed": _send(pids, signals.SIGCONT)}
