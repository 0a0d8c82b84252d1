"""Run the simulator as a child process (``python -m forge_slo.sim``), as tests and runners do."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from forge_slo.errors import RunnerError
from forge_slo.runtime.process import Child, child_env, python_module


class SimProcess:
    """A simulator child process on a free port; use as a context manager or call start()/stop().

    ``config`` is a YAML file path, or a mapping written to a temporary YAML file. ``log_text()`` holds the
    child's stdout and stderr (console spans, the shutdown summary, errors); ``log_path`` keeps that log in a
    file of the caller's (else it lives in a temporary directory until :meth:`stop`). ``own_session``: the
    simulator gets its own session, so a Ctrl-C at the terminal reaches only the parent, which stops it in
    its own time (a game day's rollbacks still find it). ``cpu``: pin the simulator to this CPU. ``preset``:
    the server whose metrics it exports (``--preset``; default: the config's, else vllm).
    """

    def __init__(
        self,
        config: str | Mapping[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_token: str | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 20.0,
        cpu: int | None = None,
        own_session: bool = False,
        log_path: Path | None = None,
        preset: str | None = None,
    ) -> None:
        self._config = config
        self.preset = preset
        self.host = host
        self.port = port
        self._admin_token = admin_token
        self._env = env
        self._timeout = startup_timeout_s
        self._cpu = cpu
        self.own_session = own_session
        self._log_path = log_path
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._child: Child | None = None
        self.returncode: int | None = None
        self.last_log = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return f"{self.url}/v1"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The running child process (None before start and after stop)."""
        return self._child.proc if self._child is not None else None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RunnerError("the simulator is not running")
        return self.proc.pid

    def __enter__(self) -> SimProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the simulator and wait until it listens; RunnerError (with its log) when it does not."""
        self._tmp = tempfile.TemporaryDirectory(prefix="forge-slo-sim-")
        tmp = Path(self._tmp.name)
        child = self._child = Child("simulator", self._argv(tmp), log_path=self._log_path or tmp / "sim.log",
                                    env=child_env(base=self._env), own_session=self.own_session)
        try:
            child.start()  # no ready file yet: the CPU is pinned before waiting
            if self._cpu is not None:
                os.sched_setaffinity(child.pid, {self._cpu})
            child.ready_file = tmp / "ready.json"
            child.wait_ready(self._timeout)
        except BaseException:
            self.returncode = child.stop()
            self._finish()
            raise
        self.port = int(child.ready["port"])

    def _argv(self, tmp: Path) -> list[str]:
        args = ["--host", self.host, "--port", str(self.port), "--ready-file", str(tmp / "ready.json")]
        if isinstance(self._config, str):
            args += ["--config", self._config]
        elif self._config is not None:
            path = tmp / "sim.yaml"
            path.write_text(yaml.safe_dump(dict(self._config), sort_keys=True), encoding="utf-8")
            args += ["--config", str(path)]
        if self._admin_token is not None:
            args += ["--admin-token", self._admin_token]
        if self.preset is not None:
            args += ["--preset", self.preset]
        return python_module("forge_slo.sim", *args)

    def log_text(self) -> str:
        return self._child.log_text() if self._child is not None else self.last_log

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code. Keeps log_text() readable."""
        if self._child is not None:
            self.returncode = self._child.stop(timeout_s)
        self._finish()
        return self.returncode

    def _finish(self) -> None:
        if self._child is not None:
            self.last_log = self._child.log_text()
            self._child = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
