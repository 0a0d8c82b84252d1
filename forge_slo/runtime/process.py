"""Child processes, written once: start one with the environment it needs, wait until it is ready, stop it.

Every runner that starts a program (the simulator, the GPU exporter, Prometheus, Locust, the training job,
``chaos run``) goes through :class:`Child` or :func:`stop_process`, so a hung child is always terminated,
waited for and killed the same way, and its output always lands in a log the runner can show.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from forge_slo.errors import RunnerError

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
LOOPBACK = "127.0.0.1"


def child_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a forge-slo child: this copy of the package importable, output unbuffered."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def free_port(host: str = LOOPBACK) -> int:
    """A port free on ``host`` now (another program may take it before it is used: bind soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_range(count: int, host: str = LOOPBACK, attempts: int = 50) -> int:
    """A base port with ``count`` consecutive ports free above it."""
    for _ in range(attempts):
        base = free_port(host)
        if base + count >= 65536:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for i in range(count):
                    s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    s.bind((host, base + i))
            return base
        except OSError:
            continue
    raise RunnerError(f"no {count} consecutive free ports on {host}")


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """Ask ``proc`` to stop (SIGTERM by default), wait ``timeout_s``, then kill it; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


class Child:
    """One child process with its log file.

    ``ready_file``: a path the child writes (as JSON) once it serves; :meth:`start` waits for it and keeps
    its content in :attr:`ready`. ``own_session``: the child gets its own session, so a Ctrl-C at the
    terminal reaches only the parent, which then stops its children in order.
    """

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path | None = None,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None, ready_file: Path | None = None,
                 own_session: bool = False, stdin: int | IO[Any] | None = subprocess.DEVNULL) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else child_env()
        self.cwd = cwd
        self.ready_file = ready_file
        self.own_session = own_session
        self.stdin = stdin
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.log_path = log_path or self._temporary_log()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self.returncode: int | None = None

    def _temporary_log(self) -> Path:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"forge-slo-{self.name}-")
        return Path(self._tmp.name) / f"{self.name}.log"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RunnerError(f"the {self.name} is not running")
        return self.proc.pid

    def start(self, timeout_s: float = 30.0, ready: Callable[[], bool] | None = None) -> Child:
        """Start the child and wait until it is ready (its ready file, or ``ready()`` true), or fail with its log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=self.stdin,
                                         env=self.env, cwd=self.cwd, start_new_session=self.own_session)
        if self.ready_file is not None or ready is not None:
            self.wait_ready(timeout_s, ready)
        return self

    def wait_ready(self, timeout_s: float, ready: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.ready_file is not None and self.ready_file.exists():
                with contextlib.suppress(ValueError, OSError):
                    self.ready = json.loads(self.ready_file.read_text(encoding="utf-8"))
                    return
            elif ready is not None and ready():
                return
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                self.returncode = code
                raise RunnerError(f"the {self.name} exited with code {code} before it was ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RunnerError(f"the {self.name} was not ready within {timeout_s:g}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code. The log stays readable."""
        if self.proc is not None:
            self.returncode = stop_process(self.proc, timeout_s)
        return self.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def close(self) -> None:
        """Stop the child and remove a temporary log."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
