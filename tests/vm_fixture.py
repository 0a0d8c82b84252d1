"""A real VictoriaMetrics and vmalert for tests: started on free 127.0.0.1 ports with a temporary data folder.

VictoriaMetrics scrapes the given targets (as Prometheus does) and stores what vmalert writes back; vmalert
evaluates rule files against it, like Prometheus' rule manager, and serves its alerts on its own HTTP API.

Usage (in a fixture)::

    vm = start_victoria_metrics(tmp_path, ["127.0.0.1:9400"], rule_files=[rules], interval="1s")
    try:
        vm.query("up")
    finally:
        vm.stop()

Skip the test when the binaries are missing (``victoria_metrics_available()``); ``scripts/test.sh`` installs
Debian's ``victoria-metrics`` package, which ships both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forge_slo.runtime.process import stop_process
from tests.prom_fixture import free_port

VICTORIA_METRICS_BIN = os.environ.get("FORGE_SLO_VICTORIA_METRICS", "/usr/bin/victoria-metrics")
VMALERT_BIN = os.environ.get("FORGE_SLO_VMALERT", "/usr/bin/vmalert")


def victoria_metrics_available() -> bool:
    return all(os.access(b, os.X_OK) or shutil.which(b) is not None for b in (VICTORIA_METRICS_BIN, VMALERT_BIN))


@dataclass
class Child:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: Any = field(repr=False)

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.process, timeout_s=15)
        self.log_file.close()


@dataclass
class VictoriaMetricsHandle:
    """VictoriaMetrics (storage, scraping, queries) and vmalert (rules) running together."""

    storage: Child
    rules: Child

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector from VictoriaMetrics."""
        data = _get(f"{self.storage.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """vmalert's active alerts (pending and firing), as its Prometheus-compatible API lists them."""
        data = _get(f"{self.rules.url}/api/v1/alerts")
        alerts: list[dict[str, Any]] = data["data"]["alerts"] or []  # null when there are none
        return alerts

    def flush(self) -> None:
        """Make what VictoriaMetrics ingested searchable now; new series otherwise take some 10s to appear."""
        with urllib.request.urlopen(f"{self.storage.url}/internal/force_flush", timeout=10) as resp:
            resp.read()

    def groups(self) -> list[dict[str, Any]]:
        data = _get(f"{self.rules.url}/api/v1/rules")
        groups: list[dict[str, Any]] = data["data"]["groups"] or []
        return groups

    def check_running(self) -> None:
        for child in (self.storage, self.rules):
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{child.log()}")

    def stop(self) -> None:
        self.rules.stop()
        self.storage.stop()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _start(name: str, argv: list[str], workdir: Path, url: str, ready_path: str, timeout: float) -> Child:
    log_path = workdir / f"{name}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by Child.stop
    process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir)
    child = Child(name, url, process, log_path, log_file)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            log = child.log()
            child.stop()
            raise RuntimeError(f"{name} exited with {process.returncode} at startup:\n{log}")
        try:
            with urllib.request.urlopen(f"{url}{ready_path}", timeout=2) as resp:
                if resp.status == 200:
                    return child
        except urllib.error.HTTPError as e:
            e.close()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            log = child.log()
            child.stop()
            raise TimeoutError(f"{name} not ready within {timeout:g}s:\n{log}")
        time.sleep(0.1)


def start_victoria_metrics(tmp_path: Path, scrape_targets: list[str], rule_files: Sequence[Path] = (),
                           interval: str = "1s", *, notifier_url: str, job: str = "forge-slo-test",
                           startup_timeout: float = 30.0) -> VictoriaMetricsHandle:
    """VictoriaMetrics scraping ``scrape_targets`` every ``interval``, and vmalert evaluating ``rule_files`` as
    often (a group's own ``interval`` wins), reading from it and writing recorded series and alert state back to
    it, and sending alerts to ``notifier_url`` (an Alertmanager, or any loopback sink that answers 200)."""
    workdir = tmp_path / f"victoria-metrics-{free_port()}"
    workdir.mkdir(parents=True)
    scrape = workdir / "scrape.yml"
    scrape.write_text(yaml.safe_dump({
        "global": {"scrape_interval": interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(scrape_targets)}]}],
    }))
    vm_port, alert_port = free_port(), free_port()
    vm_url = f"http://127.0.0.1:{vm_port}"
    storage = _start("victoria-metrics", [
        VICTORIA_METRICS_BIN, f"-storageDataPath={workdir / 'data'}", f"-httpListenAddr=127.0.0.1:{vm_port}",
        f"-promscrape.config={scrape}", "-retentionPeriod=1d", "-loggerLevel=WARN",
        # Serve the newest samples at once (the default holds back the last 30s as possibly incomplete) and
        # never answer from the cache, so both engines see the same data as it arrives.
        "-search.latencyOffset=0s", "-search.disableCache",
    ], workdir, vm_url, "/health", startup_timeout)
    try:
        rules = _start("vmalert", [
            VMALERT_BIN, *[f"-rule={Path(p).absolute()}" for p in rule_files],
            f"-datasource.url={vm_url}", f"-remoteWrite.url={vm_url}", f"-remoteRead.url={vm_url}",
            f"-httpListenAddr=127.0.0.1:{alert_port}", f"-evaluationInterval={interval}",
            # Write recorded series back at once, and query at the evaluation's own time as Prometheus does
            # (vmalert aligns it to the interval by default, reading up to an interval in the past).
            "-remoteWrite.flushInterval=100ms", "-datasource.queryTimeAlignment=false",
            f"-notifier.url={notifier_url}", "-loggerLevel=WARN",
        ], workdir, f"http://127.0.0.1:{alert_port}", "/health", startup_timeout)
    except BaseException:
        storage.stop()
        raise
    return VictoriaMetricsHandle(storage, rules)
