"""A real Prometheus for end-to-end tests: started on a free 127.0.0.1 port with a temporary config and TSDB.

Usage (in a fixture)::

    prom = start_prometheus(tmp_path, ["127.0.0.1:9400"], rule_files=[rules], interval="1s")
    try:
        prom.wait_for('up == 1')
    finally:
        prom.stop()

Skip the test when :data:`PROMETHEUS_BIN` is missing (``prometheus_available()``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forge_slo.runtime.process import stop_process

PROMETHEUS_BIN = os.environ.get("FORGE_SLO_PROMETHEUS", "/usr/bin/prometheus")


def prometheus_available() -> bool:
    return os.access(PROMETHEUS_BIN, os.X_OK) or shutil.which(PROMETHEUS_BIN) is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrometheusHandle:
    """A running Prometheus: its base URL, HTTP API helpers and :meth:`stop`."""

    url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    _log_file: Any = field(repr=False)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns the ``data`` member, raises on a non-success answer."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus API {path} failed: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (list of {metric, value})."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, expr: str, *, timeout: float = 30.0,
                 predicate: Callable[[list[dict[str, Any]]], bool] = bool) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``predicate(result)`` holds (default: non-empty), else raise TimeoutError."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Prometheus exited with {self.process.returncode}:\n{self.log()}")
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.25)
        raise TimeoutError(f"{expr!r} did not hold within {timeout:g}s (last result {result});\n"
                           f"targets: {self.api('targets')}")

    def log(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.process, timeout_s=15)
        self._log_file.close()


def start_prometheus(tmp_path: Path, scrape_targets: list[str], rule_files: Sequence[Path] = (),
                     interval: str = "1s", *, job: str = "forge-slo-test",
                     startup_timeout: float = 30.0,
                     target_labels: dict[str, dict[str, str]] | None = None,
                     run_as: str | None = None, alertmanagers: Sequence[str] = (),
                     data_dir: Path | None = None, extra_args: Sequence[str] = ()) -> PrometheusHandle:
    """Start Prometheus scraping ``scrape_targets`` (host:port) every ``interval``, with ``rule_files``.

    ``target_labels`` maps a target to labels Prometheus adds to all its series (e.g. ``deployment``).
    ``rule_files`` may hold globs, as a real configuration does. ``run_as`` names another user to run it as
    (needs root; its work folder is handed to that user), the way a packaged Prometheus runs. ``alertmanagers``
    (host:port) receive its alerts; ``data_dir`` is a TSDB to open (e.g. backfilled blocks) instead of a new one;
    ``extra_args`` are more flags (e.g. a longer retention for old data).
    """
    workdir = tmp_path / f"prometheus-{free_port()}"
    workdir.mkdir(parents=True)
    prefix: list[str] = []
    if run_as is not None:
        import pwd

        user = pwd.getpwnam(run_as)
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
        os.chown(workdir, user.pw_uid, user.pw_gid)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(Path(p).absolute()) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(scrape_targets)}]}],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    if target_labels is not None:
        config["scrape_configs"] = [{"job_name": job, "static_configs": [
            {"targets": [target], "labels": dict(target_labels.get(target, {}))} for target in scrape_targets]}]
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=True))
    port = free_port()
    log_path = workdir / "prometheus.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by PrometheusHandle.stop
    if run_as is not None:
        os.chown(config_path, user.pw_uid, user.pw_gid)
    process = subprocess.Popen(
        [*prefix, PROMETHEUS_BIN, f"--config.file={config_path}",
         f"--storage.tsdb.path={data_dir if data_dir is not None else workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", *extra_args],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir,
    )
    handle = PrometheusHandle(f"http://127.0.0.1:{port}", process, workdir, log_path, log_file)
    deadline = time.monotonic() + startup_timeout
    while True:
        if process.poll() is not None:
            log = handle.log()
            handle.stop()
            raise RuntimeError(f"Prometheus exited with {process.returncode} at startup:\n{log}")
        try:
            with urllib.request.urlopen(f"{handle.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return handle
        except urllib.error.HTTPError as e:  # 503 while starting
            e.close()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            log = handle.log()
            handle.stop()
            raise TimeoutError(f"Prometheus not ready within {startup_timeout:g}s:\n{log}")
        time.sleep(0.1)
