"""Run the simulator as a child process (``python -m forge_slo.sim``), as tests and runners do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from forge_slo.errors import RunnerError

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class SimProcess:
    """A simulator child process on a free port; use as a context manager or call start()/stop().

    ``config`` is a YAML file path, or a mapping written to a temporary YAML file. ``log_text()`` holds the
    child's stdout and stderr (console spans, the shutdown summary, errors).
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
    ) -> None:
        self._config = config
        self.host = host
        self.port = port
        self._admin_token = admin_token
        self._env = env
        self._timeout = startup_timeout_s
        self._cpu = cpu
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
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
        self._tmp = tempfile.TemporaryDirectory(prefix="forge-slo-sim-")
        tmp = Path(self._tmp.name)
        ready = tmp / "ready.json"
        args = [
            sys.executable,
            "-m",
            "forge_slo.sim",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--ready-file",
            str(ready),
        ]
        if isinstance(self._config, str):
            args += ["--config", self._config]
        elif self._config is not None:
            path = tmp / "sim.yaml"
            path.write_text(yaml.safe_dump(dict(self._config), sort_keys=True), encoding="utf-8")
            args += ["--config", str(path)]
        if self._admin_token is not None:
            args += ["--admin-token", self._admin_token]
        env = dict(os.environ if self._env is None else self._env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(tmp / "sim.log", "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        if self._cpu is not None:
            os.sched_setaffinity(self.proc.pid, {self._cpu})
        deadline = time.monotonic() + self._timeout
        while not ready.exists():
            code = self.proc.poll()
            if code is not None:
                self.returncode = code
                text = self.last_log = self.log_text()
                self._cleanup()
                raise RunnerError(f"the simulator exited with code {code} before listening:\n{text}")
            if time.monotonic() > deadline:
                self.stop()
                raise RunnerError(f"the simulator did not listen within {self._timeout:g}s")
            time.sleep(0.02)
        info = json.loads(ready.read_text(encoding="utf-8"))
        self.port = int(info["port"])

    def log_text(self) -> str:
        if self._log is None:
            return self.last_log
        self._log.flush()
        self._log.seek(0)
        data: bytes = self._log.read()
        self._log.seek(0, os.SEEK_END)
        return data.decode("utf-8", "replace")

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code. Keeps log_text() readable."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None:
            self.returncode = proc.returncode
        self.last_log = self.log_text()
        self._cleanup()
        return self.returncode

    def _cleanup(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
