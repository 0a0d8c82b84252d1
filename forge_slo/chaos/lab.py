"""A chaos lab on this machine's loopback: everything the experiments in ``experiments/`` need, started together.

- the rules compiled from the lab's specs (``experiments/specs``), loaded into
- Prometheus (scrape and rule evaluation every second), scraping
- the inference simulator (job ``sim``) under bounded background traffic,
- the GPU exporter with a fake fleet (job ``gpu``, faults at run time), and
- the all-reduce training job, 2 ranks on gloo (job ``train``), when torch is installed.

:meth:`Lab.env` gives the ``FORGE_SLO_*`` variables the experiments read their endpoints from. Used by
``forge-slo gameday run --lab``, ``python -m forge_slo.chaos lab`` and the tests. Loopback only; the traffic
loop stops by itself after ``max_duration_s`` or its request budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from forge_slo import conventions as cv
from forge_slo.errors import RunnerError
from forge_slo.runtime.process import LOOPBACK, Child, free_port, free_port_range, python_module
from forge_slo.sim import SimProcess

SIM_MODEL = "sim-llama"
SIM_CONFIG: dict[str, Any] = {
    "seed": 7,
    "models": [{"name": SIM_MODEL, "max_num_seqs": 64, "prefill_base_s": 0.02, "prefill_per_token_s": 0.0,
                "itl_s": 0.005, "itl_distribution": "fixed", "output_tokens": {"distribution": "fixed", "value": 4}}],
}


class _Part(Protocol):
    """A child process of the lab: the simulator (SimProcess) or a plain Child."""

    @property
    def proc(self) -> subprocess.Popen[bytes] | None: ...

    def stop(self, timeout_s: float = 10.0) -> int | None: ...

    def log_text(self) -> str: ...


def prometheus_binary(explicit: str = "") -> str:
    for candidate in (explicit, os.environ.get("FORGE_SLO_PROMETHEUS", ""), "prometheus", "/usr/bin/prometheus"):
        if candidate and (shutil.which(candidate) or os.access(candidate, os.X_OK)):
            return shutil.which(candidate) or candidate
    raise RunnerError("the lab needs a Prometheus server binary: apt-get install prometheus, or pass its path")


@dataclass
class Lab:
    workdir: Path
    prometheus_url: str = ""
    sim_url: str = ""
    gpu_exporter_url: str = ""
    train_state_dir: str = ""
    train_metrics_port: int = 0
    netns: str = ""
    _parts: list[tuple[str, _Part]] = field(default_factory=list)
    _traffic: _Traffic | None = None

    def env(self) -> dict[str, str]:
        """The variables the experiments read (see their ``configuration``)."""
        out = {"FORGE_SLO_PROMETHEUS_URL": self.prometheus_url, "FORGE_SLO_SIM_URL": self.sim_url,
               "FORGE_SLO_GPU_EXPORTER_URL": self.gpu_exporter_url, "FORGE_SLO_CHAOS_NETNS": self.netns}
        if self.train_state_dir:
            out["FORGE_SLO_TRAIN_STATE_DIR"] = self.train_state_dir
            out["FORGE_SLO_TRAIN_METRICS_PORT"] = str(self.train_metrics_port)
        return out

    def requests_sent(self) -> int:
        return self._traffic.sent if self._traffic else 0

    def stop(self) -> None:
        if self._traffic is not None:
            self._traffic.stop()
        if self.train_state_dir:
            from forge_slo.train import stop_job

            with contextlib.suppress(Exception):
                stop_job(self.train_state_dir)
        for _, part in reversed(self._parts):  # Prometheus first, the simulator last
            part.stop()
        self._parts.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def compile_rules(specs: Sequence[Path], out: Path) -> list[Path]:
    """The Prometheus rule files of ``specs`` (as ``forge-slo compile`` writes them) under ``out``."""
    from forge_slo.compile import rules
    from forge_slo.compile.producer import CompileOptions
    from forge_slo.spec import load_specs

    produced = rules.PRODUCER.produce(load_specs(list(specs)), CompileOptions())
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in sorted(produced.files.items()):
        path = out / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def start_lab(workdir: Path, *, specs: Sequence[Path], fleet: Path, prometheus_bin: str = "",
              traffic_rps: float = 8.0, max_duration_s: float = 1800.0, training: bool = True,
              netns: str = "", ready_timeout_s: float = 90.0) -> Lab:
    """Start the lab's parts and wait until Prometheus has SLO data; stop it with :meth:`Lab.stop`."""
    if not fleet.is_file():
        raise RunnerError(f"{fleet}: no such fake fleet file")
    workdir.mkdir(parents=True, exist_ok=True)
    prom_bin = prometheus_binary(prometheus_bin)
    rules = compile_rules(specs, workdir / "rules")
    lab = Lab(workdir, netns=netns or f"forge-slo-chaos-{os.getpid()}")
    try:
        lab.sim_url = _start_sim(lab, workdir)
        gpu_port = _start_exporter(lab, workdir, fleet)
        train_targets = _start_training(lab, workdir, max_duration_s) if training and _torch_available() else []
        _start_prometheus(lab, workdir, prom_bin, rules, [
            ("sim", [lab.sim_url.removeprefix("http://")]), ("gpu", [f"{LOOPBACK}:{gpu_port}"]),
            *([("train", train_targets)] if train_targets else [])])
        lab._traffic = _Traffic(f"{lab.sim_url}/v1/chat/completions", traffic_rps, max_duration_s)
        lab._traffic.start()
        _wait_ready(lab, specs, ready_timeout_s)
        return lab
    except BaseException:
        lab.stop()
        raise


def _start_sim(lab: Lab, workdir: Path) -> str:
    """The simulator in its own session: a Ctrl-C at the terminal reaches the game day only, so the running
    experiment's rollbacks still find the simulator."""
    config = workdir / "sim.yaml"
    config.write_text(yaml.safe_dump(SIM_CONFIG, sort_keys=True))
    sim = SimProcess(str(config), host=LOOPBACK, own_session=True, log_path=workdir / "sim.log",
                     startup_timeout_s=30.0)
    lab._parts.append(("sim", sim))
    sim.start()
    return sim.url


def _start_exporter(lab: Lab, workdir: Path, fleet: Path) -> int:
    """The GPU exporter serving the fake fleet (own session, as the simulator); its port."""
    port = free_port()
    lab.gpu_exporter_url = f"http://{LOOPBACK}:{port}"
    exporter = Child("gpu-exporter", python_module(
        "forge_slo.telemetry", "--port", str(port), "--host", LOOPBACK, "--fake-fleet", str(fleet),
        "--interval", "500ms"), log_path=workdir / "gpu-exporter.log", own_session=True)
    lab._parts.append(("gpu-exporter", exporter))
    exporter.start()
    return port


def _start_training(lab: Lab, workdir: Path, max_duration_s: float) -> list[str]:
    """The 2-rank training job, detached; its metrics targets."""
    from forge_slo.train import JobOptions, start_detached

    lab.train_metrics_port = free_port_range(2)
    lab.train_state_dir = str(workdir / "train")
    start_detached(JobOptions(Path(lab.train_state_dir), 2, LOOPBACK, lab.train_metrics_port, None,
                              ("--max-seconds", str(int(max_duration_s)))))
    return [f"{LOOPBACK}:{lab.train_metrics_port + r}" for r in range(2)]


def _start_prometheus(lab: Lab, workdir: Path, binary: str, rules: Sequence[Path],
                      jobs: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Prometheus scraping ``jobs`` (name, targets) and evaluating ``rules`` every second."""
    port = free_port()
    lab.prometheus_url = f"http://{LOOPBACK}:{port}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p.resolve()) for p in rules],
        "scrape_configs": [{"job_name": name, "static_configs": [{"targets": list(targets)}]}
                           for name, targets in jobs],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=True))
    prometheus = Child("prometheus", [
        binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn"],
        log_path=workdir / "prometheus.log", cwd=workdir, own_session=True, env=dict(os.environ))
    lab._parts.append(("prometheus", prometheus))
    prometheus.start()


def _torch_available() -> bool:
    from importlib.util import find_spec

    return find_spec("torch") is not None


def _wait_ready(lab: Lab, specs: Sequence[Path], timeout_s: float) -> None:
    """Until every target is up and every SLO of the lab's specs has a burn rate."""
    from forge_slo.spec import load_specs

    slos = [(s.service, slo.name) for s in load_specs(list(specs)) for slo in s.slos]
    deadline = time.monotonic() + timeout_s
    missing: list[str] = ["(not asked yet)"]
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            for name, part in lab._parts:
                code = part.proc.poll() if part.proc is not None else None
                if code is not None:
                    raise RunnerError(f"the lab's {name} exited with {code}:\n{part.log_text()[-2000:]}")
            try:
                up = client.get(f"{lab.prometheus_url}/api/v1/query", params={"query": "up"}).json()["data"]["result"]
                missing = [f"target {r['metric'].get('job')} {r['metric'].get('instance')}" for r in up
                           if r["value"][1] != "1"] or ([] if up else ["targets"])
                for service, slo in slos:
                    q = f'{cv.CURRENT_BURN_RATE}{{{cv.SERVICE_LABEL}="{service}",{cv.SLO_LABEL}="{slo}"}} >= 0'
                    if not client.get(f"{lab.prometheus_url}/api/v1/query",
                                      params={"query": q}).json()["data"]["result"]:
                        missing.append(f"burn rate of {service}/{slo}")
                if not missing:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                missing = ["Prometheus"]
            time.sleep(0.5)
    raise RunnerError(f"the lab was not ready within {timeout_s:g}s; waiting for: {', '.join(missing)}")


class _Traffic:
    """Chat completions to the simulator at a fixed rate, bounded in time and count, on a thread of its own."""

    def __init__(self, url: str, rps: float, max_duration_s: float, max_in_flight: int = 64) -> None:
        if not 0 < rps <= 200:
            raise RunnerError(f"traffic rate {rps!r}: use 0 < rps <= 200")
        self.url, self.rps, self.max_duration_s, self.max_in_flight = url, rps, max_duration_s, max_in_flight
        self.max_requests = int(rps * max_duration_s) + 1
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True, name="lab-traffic")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    async def _run(self) -> None:
        body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
        start = time.monotonic()
        in_flight: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=self.max_in_flight)) as client:
            async def one() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    await client.post(self.url, json=body)

            while not self._stop.is_set() and self.sent < self.max_requests:
                if time.monotonic() - start > self.max_duration_s:
                    break
                if len(in_flight) < self.max_in_flight:
                    task = asyncio.create_task(one())
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    self.sent += 1
                next_at = start + self.sent / self.rps
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            for task in list(in_flight):
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
