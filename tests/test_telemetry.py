"""The GPU exporter: dcgm-exporter names and labels, XIDs and health, read discipline, failure modes."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prom_fixture import prometheus_available, start_prometheus
from prometheus_client.parser import text_string_to_metric_families

from forge_slo import conventions as cv
from forge_slo.compile.rules import rules_document
from forge_slo.compile.yamlout import dump
from forge_slo.errors import SpecError
from forge_slo.spec import load_specs
from forge_slo.telemetry import ExporterOptions, GpuExporter, build_parser, start_exporter
from forge_slo.telemetry.fake import REASON_HW_THERMAL, REASON_SW_THERMAL, FakeFleet
from forge_slo.telemetry.fleet import Constant, Sine, Steps, fault_from_json, load_fleet, parse_fleet
from forge_slo.telemetry.metrics import DEFAULT_XID_CODES, GPU_METRICS, HEALTH_METRIC, XID_METRIC
from forge_slo.telemetry.nvml import NvmlBackend

REPO = Path(__file__).resolve().parent.parent
EXPECTED_TYPES = {m.name: m.type for m in GPU_METRICS} | {XID_METRIC: "gauge", HEALTH_METRIC: "gauge"}
GPU_LABELS = {"gpu", "UUID", "pci_bus_id", "device", "modelName", "DCGM_FI_DRIVER_VERSION"}

FLEET = """\
hostname: test-node
driver_version: "550.54.15"
gpus:
  - model: NVIDIA H100 80GB HBM3
    count: 3
    utilization: {pattern: sine, min: 10, max: 90, period: 10s}
    power_w: 300
    memory_used_mib: 1000
    nvlink_count: 18
    nvlink_kib_per_s: 1000
"""


# Helpers ------------------------------------------------------------------------------------------------
def request(method: str, url: str, body: object = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    conn = http.client.HTTPConnection(host_port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def scrape(exporter: GpuExporter) -> dict[str, Any]:
    status, body = request("GET", f"{exporter.url}/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def samples(families: dict[str, Any], name: str, **labels: str) -> list[Any]:
    """Samples of a family by its name (the parser gives a counter's samples a ``_total`` suffix)."""
    family = families[name]
    return [s for s in family.samples if s.name in (name, f"{name}_total")
            and all(s.labels.get(k) == v for k, v in labels.items())]


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    found = samples(families, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return float(found[0].value)


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def make_exporter() -> Iterator[Callable[..., GpuExporter]]:
    started: list[GpuExporter] = []

    def make(fleet_yaml: str = FLEET, **options: Any) -> GpuExporter:
        options.setdefault("interval_s", 0.1)
        backend = FakeFleet(parse_fleet(fleet_yaml, "fleet.yaml"))
        exporter = start_exporter(ExporterOptions(port=0, host="127.0.0.1", **options), backend)
        started.append(exporter)
        return exporter

    yield make
    for exporter in started:
        exporter.stop()


# Exposition -----------------------------------------------------------------------------------------------
def test_every_family_parses_with_dcgm_names_and_types(make_exporter: Callable[..., GpuExporter]) -> None:
    families = scrape(make_exporter())
    for name, typ in EXPECTED_TYPES.items():
        assert name in families, f"{name} missing"
        assert families[name].type == typ, name
        gpus = {s.labels["gpu"] for s in families[name].samples}
        assert gpus == {"0", "1", "2"}, name
    # Counters keep dcgm-exporter's bare names (the parser adds _total in its own representation only).
    assert value(families, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gpu="0") >= 0
    assert value(families, "DCGM_FI_DEV_FB_USED", gpu="1") == 1000
    assert value(families, "DCGM_FI_DEV_FB_FREE", gpu="1") == 81559 - 1000
    assert value(families, "DCGM_FI_DEV_POWER_USAGE", gpu="2") == 300
    assert value(families, "forge_gpu_exporter_collections", backend="fake") >= 1


def test_energy_counter_integrates_power(make_exporter: Callable[..., GpuExporter]) -> None:
    exporter = make_exporter(interval_s=0.05)
    first = value(scrape(exporter), "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gpu="0")
    time.sleep(0.3)
    second = value(scrape(exporter), "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gpu="0")
    # 300 W for ~0.3 s is ~90 J = 90000 mJ; allow for collection timing.
    assert 30_000 < second - first < 400_000


@pytest.mark.parametrize("spelling", ["hostname", "Hostname"])
def test_labels_match_dcgm_exporter(make_exporter: Callable[..., GpuExporter], spelling: str) -> None:
    families = scrape(make_exporter(hostname_label=spelling))
    sample = samples(families, "DCGM_FI_DEV_GPU_UTIL", gpu="1")[0]
    assert set(sample.labels) == GPU_LABELS | {spelling}
    assert sample.labels["device"] == "nvidia1"
    assert sample.labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert sample.labels[spelling] == "test-node"
    assert sample.labels["DCGM_FI_DRIVER_VERSION"] == "550.54.15"
    assert sample.labels["UUID"].startswith("GPU-")
    assert sample.labels["pci_bus_id"].startswith("00000000:")
    xid = samples(families, XID_METRIC, gpu="1", err_code="79")[0]
    assert set(xid.labels) == GPU_LABELS | {spelling, "err_code", "err_msg"}
    assert xid.labels["err_msg"] == "GPU has fallen off the bus"


def test_label_values_are_escaped(make_exporter: Callable[..., GpuExporter]) -> None:
    fleet = 'gpus:\n  - model: "Odd \\"GPU\\" \\\\ name"\n'
    families = scrape(make_exporter(fleet, hostname="node-1"))
    assert samples(families, "DCGM_FI_DEV_GPU_UTIL")[0].labels["modelName"] == 'Odd "GPU" \\ name'


def test_xid_series_exist_at_zero_before_the_first_error(make_exporter: Callable[..., GpuExporter]) -> None:
    families = scrape(make_exporter())
    for gpu in ("0", "1", "2"):
        codes = {s.labels["err_code"]: s.value for s in samples(families, XID_METRIC, gpu=gpu)}
        assert codes == {str(c): 0 for c in (0, *DEFAULT_XID_CODES)}
        assert value(families, HEALTH_METRIC, gpu=gpu) == 1


def test_xid_codes_flag_chooses_the_precreated_series(make_exporter: Callable[..., GpuExporter]) -> None:
    families = scrape(make_exporter(xid_codes=(79,)))
    assert {s.labels["err_code"] for s in samples(families, XID_METRIC, gpu="0")} == {"0", "79"}


# Faults ---------------------------------------------------------------------------------------------------
def test_xid_79_from_the_fleet_file_at_its_time(make_exporter: Callable[..., GpuExporter]) -> None:
    exporter = make_exporter(FLEET + "faults:\n  - {at: 300ms, gpu: 1, kind: xid, code: 79}\n")
    families = scrape(exporter)
    assert value(families, XID_METRIC, gpu="1", err_code="79") == 0
    wait_until(lambda: value(scrape(exporter), XID_METRIC, gpu="1", err_code="79") == 1)
    families = scrape(exporter)
    assert samples(families, HEALTH_METRIC, gpu="1")[0].labels["reason"] == "xid_79"
    assert value(families, HEALTH_METRIC, gpu="1") == 0
    assert value(families, HEALTH_METRIC, gpu="0") == 1
    assert value(families, XID_METRIC, gpu="0", err_code="79") == 0


def test_xid_79_injected_through_the_admin_endpoint(make_exporter: Callable[..., GpuExporter]) -> None:
    exporter = make_exporter(interval_s=60.0)  # the injection itself triggers a collection
    status, body = request("POST", f"{exporter.url}/admin/faults", {"gpu": 2, "kind": "xid", "code": 79})
    assert status == 200, body
    assert json.loads(body) == {"injected": {"gpu": 2, "kind": "xid", "code": 79, "count": 1}}
    wait_until(lambda: value(scrape(exporter), XID_METRIC, gpu="2", err_code="79") == 1)
    families = scrape(exporter)
    assert value(families, HEALTH_METRIC, gpu="2") == 0
    # An XID code nobody pre-created gets its own series, counted from its first event.
    request("POST", f"{exporter.url}/admin/faults", {"gpu": 0, "kind": "xid", "code": 119, "count": 2})
    wait_until(lambda: bool(samples(scrape(exporter), XID_METRIC, gpu="0", err_code="119")))
    assert value(scrape(exporter), XID_METRIC, gpu="0", err_code="119") == 2
    status, body = request("GET", f"{exporter.url}/admin/faults")
    assert status == 200 and len(json.loads(body)["applied"]) == 2


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"gpu": 0, "kind": "xid"}, "", "missing required field 'code'"),
    ({"gpu": 7, "kind": "xid", "code": 79}, "gpu", "between 0 and 2"),
    ({"gpu": 0, "kind": "meteor"}, "kind", "unknown fault kind"),
    ({"gpu": 0, "kind": "ecc", "type": "triple"}, "type", "unknown ecc type"),
    ({"gpu": 0, "kind": "lost", "at": "5s"}, "at", "unknown field"),
    ({"gpu": 0, "kind": "xid", "code": 10**400}, "code", "the integer is too large"),
    ({"gpu": 0, "kind": "thermal", "temperature_c": 1e308}, "temperature_c", "between 0 and 200"),
    ({"gpu": 0, "kind": "thermal", "duration": 1e12}, "duration", "at most 86400 seconds"),
])
def test_admin_rejects_bad_faults_naming_the_field(make_exporter: Callable[..., GpuExporter], body: object,
                                                   field: str, reason: str) -> None:
    exporter = make_exporter()
    status, answer = request("POST", f"{exporter.url}/admin/faults", body)
    assert status == 400
    error = json.loads(answer)
    assert error["field"] == field and reason in error["error"]


def test_admin_token_is_required_when_set(make_exporter: Callable[..., GpuExporter]) -> None:
    exporter = make_exporter(admin_token="s3cret")
    fault = {"gpu": 0, "kind": "pcie_replay", "count": 4}
    assert request("POST", f"{exporter.url}/admin/faults", fault)[0] == 401
    status, _ = request("POST", f"{exporter.url}/admin/faults", fault, {"Authorization": "Bearer s3cret"})
    assert status == 200
    wait_until(lambda: value(scrape(exporter), "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", gpu="0") == 4)


def test_lost_gpu_is_unhealthy_and_the_others_are_still_served(
        make_exporter: Callable[..., GpuExporter]) -> None:
    exporter = make_exporter(FLEET + "faults:\n  - {at: 0s, gpu: 2, kind: lost}\n")
    families = scrape(exporter)
    health = samples(families, HEALTH_METRIC, gpu="2")[0]
    assert (health.value, health.labels["reason"]) == (0, "gpu_lost")
    assert not samples(families, "DCGM_FI_DEV_GPU_UTIL", gpu="2")  # no stale values for a lost GPU
    assert samples(families, XID_METRIC, gpu="2")  # its XID series stay
    for gpu in ("0", "1"):
        assert samples(families, "DCGM_FI_DEV_GPU_UTIL", gpu=gpu)
        assert value(families, HEALTH_METRIC, gpu=gpu) == 1
    assert value(families, "forge_gpu_exporter_gpu_read_errors", gpu="2") >= 1
    # `recover` brings it back.
    request("POST", f"{exporter.url}/admin/faults", {"gpu": 2, "kind": "recover"})
    wait_until(lambda: value(scrape(exporter), HEALTH_METRIC, gpu="2") == 1)


def test_ecc_thermal_and_row_remap_faults_show_in_their_series(
        make_exporter: Callable[..., GpuExporter]) -> None:
    exporter = make_exporter(FLEET + textwrap.dedent("""\
        faults:
          - {at: 0s, gpu: 0, kind: ecc, type: double, count: 2}
          - {at: 0s, gpu: 1, kind: thermal, duration: 1h}
          - {at: 0s, gpu: 2, kind: row_remap, type: failure}
          - {at: 0s, gpu: 2, kind: nvlink_error, type: replay, count: 5}
        """))
    families = scrape(exporter)
    assert value(families, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", gpu="0") == 2
    assert samples(families, HEALTH_METRIC, gpu="0")[0].labels["reason"] == "ecc_dbe"
    reasons = int(value(families, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu="1"))
    assert reasons & (REASON_SW_THERMAL | REASON_HW_THERMAL) == REASON_SW_THERMAL | REASON_HW_THERMAL
    assert value(families, "DCGM_FI_DEV_GPU_TEMP", gpu="1") >= 92
    assert value(families, "DCGM_FI_DEV_SM_CLOCK", gpu="1") == 990
    assert value(families, HEALTH_METRIC, gpu="1") == 1  # throttling is not a fault of the GPU
    assert value(families, "DCGM_FI_DEV_ROW_REMAP_FAILURE", gpu="2") == 1
    assert samples(families, HEALTH_METRIC, gpu="2")[0].labels["reason"] == "row_remap_failure"
    assert value(families, "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", gpu="2") == 5


def test_admin_is_absent_without_a_fake_fleet(make_exporter: Callable[..., GpuExporter]) -> None:
    exporter = make_exporter()
    backend = _StubBackendWithoutFaults(exporter.backend)
    plain = start_exporter(ExporterOptions(port=0, host="127.0.0.1", interval_s=60), backend)
    try:
        status, body = request("POST", f"{plain.url}/admin/faults", {"gpu": 0, "kind": "lost"})
        assert status == 404 and b"--fake-fleet" in body
    finally:
        plain.stop()


class _StubBackendWithoutFaults:
    """A backend that is not a FaultInjector (as NVML is not)."""

    name = "stub"

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def start(self) -> None: ...
    def gpus(self) -> Any: return self._inner.gpus()
    def driver_version(self) -> str: return "1.0"
    def hostname(self) -> str | None: return "stub"
    def read(self, index: int) -> Any: return self._inner.read(index)
    def xid_counts(self, index: int) -> Any: return {}
    def close(self) -> None: ...


# Read discipline -------------------------------------------------------------------------------------------
def test_backend_is_read_once_per_interval_whatever_the_scrape_count(
        make_exporter: Callable[..., GpuExporter]) -> None:
    exporter = make_exporter(interval_s=3600.0)
    fake = exporter.backend
    assert isinstance(fake, FakeFleet)
    assert fake.read_calls == 3  # the first collection, one read per GPU
    threads = [threading.Thread(target=lambda: [scrape(exporter) for _ in range(20)]) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.read_calls == 3  # 100 scrapes later, still one collection
    assert exporter.collections == 1


def test_backend_reads_follow_the_interval_not_the_scrapes(make_exporter: Callable[..., GpuExporter]) -> None:
    exporter = make_exporter(interval_s=0.1)
    fake = exporter.backend
    assert isinstance(fake, FakeFleet)
    time.sleep(0.55)  # no scrapes at all
    assert 3 <= exporter.collections <= 8
    assert fake.read_calls == 3 * exporter.collections


def test_gzip_is_served_when_asked(make_exporter: Callable[..., GpuExporter]) -> None:
    import gzip

    exporter = make_exporter()
    status, body = request("GET", f"{exporter.url}/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and gzip.decompress(body).startswith(b"# HELP DCGM_FI_DEV_SM_CLOCK")


# Failure modes of the command -----------------------------------------------------------------------------
def _run_module(args: list[str], stub_dir: Path | None = None,
                timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    paths = ([str(stub_dir)] if stub_dir else []) + [str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env["PYTHONPATH"]] if env.get("PYTHONPATH") else paths)
    return subprocess.run([sys.executable, "-m", "forge_slo.telemetry", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=REPO)


STUB_NO_LIBRARY = """\
NVML_ERROR_LIBRARY_NOT_FOUND = 12
class NVMLError(Exception):
    def __init__(self, value):
        self.value = value
        super().__init__("NVML Shared Library Not Found")
def nvmlInit():
    raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
"""
STUB_NOT_INSTALLED = "raise ImportError('No module named pynvml (simulated)')\n"
STUB_NO_GPU = """\
class NVMLError(Exception):
    value = 999
def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlDeviceGetCount(): return 0
"""


@pytest.mark.parametrize(("stub", "message"), [
    (STUB_NO_LIBRARY, "NVML library (libnvidia-ml.so.1) was not found"),
    (STUB_NOT_INSTALLED, "pip install nvidia-ml-py"),
    (STUB_NO_GPU, "NVML found no GPU"),
])
def test_without_gpu_or_fake_fleet_it_exits_with_a_clear_message(tmp_path: Path, stub: str,
                                                                  message: str) -> None:
    (tmp_path / "pynvml.py").write_text(stub)
    result = _run_module(["--port", "0", "--host", "127.0.0.1"], stub_dir=tmp_path)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert "--fake-fleet" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("text", "where"), [
    ("gpus: []\n", "bad.yaml:1: gpus: must list at least one GPU"),
    ("gpus:\n  - model: H100\n    utilization: {pattern: sine, min: 10, max: 90}\n",
     "bad.yaml:3: gpus[0].utilization: missing required field 'period'"),
    ("gpus:\n  - model: H100\n    utilisation: 50\n",
     "bad.yaml:3: gpus[0].utilisation: unknown field; did you mean"),
    ("gpus:\n  - model: H100\n    utilization: 150\n", "bad.yaml:3: gpus[0].utilization: is a percentage"),
    ("gpus:\n  - model: H100\nfaults:\n  - {at: 1s, gpu: 3, kind: xid, code: 79}\n",
     "bad.yaml:4: faults[0].gpu: must be between 0 and 0"),
    ("gpus:\n  - model: H100\nfaults:\n  - {at: soon, gpu: 0, kind: lost}\n",
     "bad.yaml:4: faults[0].at: 'soon'"),
    ("gpus:\n  - model: H100\n    power_w:\n      pattern: steps\n"
     "      steps: [{at: 5s, value: 1}, {at: 2s, value: 2}]\n",
     "gpus[0].power_w.steps[1].at: steps must be in time order"),
    ("gpus: [\n", "bad.yaml:2: invalid YAML"),
])
def test_bad_fleet_yaml_names_file_line_and_field(text: str, where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_fleet(text, "bad.yaml")
    assert where in info.value.render()


def test_bad_fleet_file_exits_2_with_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus:\n  - model: H100\n    count: 0\n")
    result = _run_module(["--port", "0", "--fake-fleet", str(bad)])
    assert result.returncode == 2
    assert f"{bad}:3: gpus[0].count: must be between 1 and 1024" in result.stderr
    assert "Traceback" not in result.stderr
    missing = _run_module(["--port", "0", "--fake-fleet", str(tmp_path / "nope.yaml")])
    assert missing.returncode == 2 and "cannot read the fleet file" in missing.stderr


@pytest.mark.parametrize(("data", "where"), [
    (b"gpus:\n  - model: caf\xe9\n", "bad.yaml:2: is not UTF-8 text: byte 0xe9"),
    (b"gpus:\n  - model: H\x00100\n", "bad.yaml:2: holds a NUL byte"),
    (b"gpus: &g [*g]\n", "bad.yaml:1: gpus[0]: an alias refers to the value that contains it"),
    (b"gpus: " + b"[" * 600 + b"]" * 600 + b"\n", "bad.yaml:1: values nest deeper than 64 levels"),
    (b"gpus:\n  - model: H100\n    count: " + b"9" * 401 + b"\n",
     "bad.yaml:3: gpus[0].count: the integer is too large"),
    (b"gpus:\n  - model: H100\n    utilization: {pattern: sine, min: 1, max: 2, period: 1.0e-320}\n",
     "bad.yaml:3: gpus[0].utilization.period: must be at least 0.001 seconds"),
    (b"gpus:\n  - model: H100\n    power_w: 1.0e+300\n", "bad.yaml:3: gpus[0].power_w: must be between 0 and 10000"),
    (b"read_latency: 1.0e+300\ngpus:\n  - model: H100\n", "bad.yaml:1: read_latency: must be at most 60 seconds"),
    (b"gpus:\n  - model: H100\nfaults:\n  - {at: 1s, gpu: 0, kind: thermal, temperature_c: 1.0e+308}\n",
     "bad.yaml:4: faults[0].temperature_c: must be between 0 and 200"),
    (b"gpus:\n  - model: H100\nfaults:\n  - {at: 99999999d, gpu: 0, kind: lost}\n",
     "bad.yaml:4: faults[0].at: '99999999d' is longer than 1d, the most allowed here"),
    (b"gpus:\n  - model: H100\nfaults:\n  - {at: " + b"9" * 400 + b"d, gpu: 0, kind: lost}\n",
     "bad.yaml:4: faults[0].at: is not a duration: longer than 32 characters"),
])
def test_hostile_fleet_file_is_refused_with_its_line(tmp_path: Path, data: bytes, where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(data)
    with pytest.raises(SpecError) as info:
        load_fleet(str(path))
    assert where in info.value.render()


def test_fleet_alias_bomb_and_bad_bytes_exit_2_at_once(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\ngpus: [{model: H100}]\n")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"gpus:\n  - model: H100 caf\xe9\n")
    for path, message in ((bomb, f"{bomb}:5: l4[0]: aliases expand to more than 10000 values"),
                          (latin1, f"{latin1}:2: is not UTF-8 text")):
        result = _run_module(["--port", "0", "--fake-fleet", str(path)], timeout=30)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_module_serves_a_fake_fleet_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    fleet = REPO / "experiments/fleets/chaos-xid79.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "forge_slo.telemetry", "--port", "0", "--host",
                             "127.0.0.1", "--fake-fleet", str(fleet), "--interval", "200ms"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        status, body = request("GET", url)
        assert status == 200 and b'hostname="fake-chaos-0"' in body
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_importing_the_package_and_its_flags_stays_light() -> None:
    code = ("import sys, forge_slo, forge_slo.telemetry, forge_slo.telemetry.command; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pynvml', 'prometheus_client', 'yaml'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.strip() == "[]"


def test_build_parser_reads_every_flag() -> None:
    parser = build_parser(argparse.ArgumentParser())
    args = parser.parse_args(["--port", "9500", "--interval", "500ms", "--fake-fleet", "f.yaml",
                              "--hostname-label", "Hostname", "--xid-codes", "79,48", "--collect-on-scrape"])
    assert (args.port, args.interval, args.fake_fleet) == (9500, 0.5, "f.yaml")
    assert args.hostname_label == "Hostname"
    assert args.xid_codes == (48, 79) and args.collect_on_scrape
    defaults = parser.parse_args([])
    assert (defaults.port, defaults.interval, defaults.hostname_label) == (9400, 1.0, "hostname")
    assert parser.parse_args(["--xid-codes", "none"]).xid_codes == ()
    with pytest.raises(SystemExit):
        parser.parse_args(["--interval", "soon"])


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "fleets").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_fleets_load(path: Path) -> None:
    assert load_fleet(str(path)).gpus


def test_the_readme_fleet_example_loads() -> None:
    import re

    text = (REPO / "README.md").read_text()
    text = text[text.index("### Fake fleets"):]
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    config = parse_fleet(block.group(1), "README.md")
    assert len(config.gpus) == 8 and len(config.faults) == 8


def test_health_endpoint(make_exporter: Callable[..., GpuExporter]) -> None:
    assert request("GET", f"{make_exporter().url}/health") == (200, b"ok\n")


# Fleet patterns --------------------------------------------------------------------------------------------
def test_signal_patterns() -> None:
    assert Constant(5).at(123) == 5
    sine = Sine(10, 90, 60)
    assert [sine.at(t) for t in (0, 15, 45)] == pytest.approx([50, 90, 10])
    steps = Steps(((0, 1), (10, 2), (20, 3)), repeat_s=30)
    assert [steps.at(t) for t in (0, 9.9, 10, 25, 31, 41)] == [1, 1, 2, 3, 1, 2]


def test_fake_fleet_faults_fire_at_their_time_on_its_clock() -> None:
    now = [100.0]
    config = parse_fleet(FLEET + textwrap.dedent("""\
        faults:
          - {at: 10s, gpu: 0, kind: xid, code: 48}
          - {at: 20s, gpu: 1, kind: thermal, duration: 5s}
        """))
    fleet = FakeFleet(config, clock=lambda: now[0])
    fleet.start()
    assert fleet.xid_counts(0) == {}
    now[0] += 10
    assert fleet.xid_counts(0) == {48: 1}
    now[0] += 10
    assert int(fleet.read(1).clocks_event_reasons or 0) & REASON_HW_THERMAL
    now[0] += 6
    assert not int(fleet.read(1).clocks_event_reasons or 0) & REASON_HW_THERMAL
    fleet.inject(fault_from_json({"gpu": 0, "kind": "xid", "code": 48}, gpu_count=3))
    assert fleet.xid_counts(0) == {48: 2}


# The NVML backend, against a stub of pynvml ---------------------------------------------------------------
class _NvmlError(Exception):
    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__(f"NVML error {value}")


def _stub_nvml(lost: set[int], events: list[tuple[int, int]]) -> Any:
    def check(handle: int) -> None:
        if handle in lost:
            raise _NvmlError(15)

    def field(field_id: int, handle: int) -> Any:
        if field_id in (138, 139, 38, 45, 52, 59):  # no NVLink on this stub GPU
            return SimpleNamespace(fieldId=field_id, nvmlReturn=3, valueType=3,
                                   value=SimpleNamespace(ullVal=0))
        return SimpleNamespace(fieldId=field_id, nvmlReturn=0, valueType=3,
                               value=SimpleNamespace(ullVal={82: 70, 3: 5}.get(field_id, 0)))

    def wait(event_set: object, timeout_ms: int) -> Any:
        if events:
            gpu, code = events.pop(0)
            return SimpleNamespace(device=gpu, eventType=0x8, eventData=code)
        time.sleep(timeout_ms / 1000 / 10)
        raise _NvmlError(10)

    def util(h: int) -> Any:
        check(h)
        return SimpleNamespace(gpu=42, memory=7)

    def memory(h: int) -> Any:
        check(h)
        return SimpleNamespace(used=2 * 1024**3, free=78 * 1024**3)

    def power(h: int) -> int:
        check(h)
        return 123456

    def energy(h: int) -> int:
        raise _NvmlError(3)  # not supported on this GPU: the series is left out, the GPU stays healthy

    def temperature(h: int, sensor: int) -> int:
        check(h)
        return 51

    def clock(h: int, kind: int) -> int:
        check(h)
        return 1980 if kind == 1 else 2619

    def field_values(h: int, ids: list[int]) -> list[Any]:
        check(h)
        return [field(i, h) for i in ids]

    return SimpleNamespace(
        NVMLError=_NvmlError, NVML_ERROR_GPU_IS_LOST=15, NVML_ERROR_TIMEOUT=10,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 2,
        nvmlSystemGetDriverVersion=lambda: b"550.54.15", nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-stub-{h}", nvmlDeviceGetName=lambda h: "NVIDIA H100 PCIe",
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=f"00000000:0{h}:00.0"),
        nvmlDeviceGetUtilizationRates=util, nvmlDeviceGetMemoryInfo=memory, nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetTotalEnergyConsumption=energy, nvmlDeviceGetTemperature=temperature,
        nvmlDeviceGetClockInfo=clock, nvmlDeviceGetCurrentClocksEventReasons=lambda h: 1,
        nvmlDeviceGetFieldValues=field_values, nvmlEventSetCreate=lambda: "set",
        nvmlDeviceRegisterEvents=lambda h, types, s: None, nvmlEventSetWait_v2=wait,
        nvmlEventSetFree=lambda s: None, nvmlDeviceGetIndex=lambda device: device,
    )


def test_nvml_backend_maps_values_units_lost_gpus_and_xid_events() -> None:
    events = [(1, 79), (0, 13), (1, 79)]
    lost: set[int] = set()
    backend = NvmlBackend(_stub_nvml(lost, events), log=lambda message: None)
    options = ExporterOptions(port=0, host="127.0.0.1", interval_s=0.05, hostname="gpu-box")
    exporter = start_exporter(options, backend)
    try:
        wait_until(lambda: value(scrape(exporter), XID_METRIC, gpu="1", err_code="79") == 2)
        families = scrape(exporter)
        assert value(families, "DCGM_FI_DEV_GPU_UTIL", gpu="0") == 42
        assert value(families, "DCGM_FI_DEV_FB_USED", gpu="0") == 2048  # MiB
        assert value(families, "DCGM_FI_DEV_POWER_USAGE", gpu="0") == pytest.approx(123.456)  # W from mW
        assert value(families, "DCGM_FI_DEV_MEMORY_TEMP", gpu="0") == 70
        assert value(families, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", gpu="0") == 5
        assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" not in families  # not supported: left out
        assert "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL" not in families
        assert value(families, XID_METRIC, gpu="0", err_code="13") == 1
        assert value(families, HEALTH_METRIC, gpu="0") == 1
        assert samples(families, HEALTH_METRIC, gpu="1")[0].labels["reason"] == "xid_79"
        assert samples(families, "DCGM_FI_DEV_GPU_UTIL", gpu="0")[0].labels["modelName"] == "NVIDIA H100 PCIe"
        lost.add(0)
        wait_until(lambda: samples(scrape(exporter), HEALTH_METRIC, gpu="0")[0].labels["reason"]
                   == "gpu_lost")
        assert samples(scrape(exporter), "DCGM_FI_DEV_GPU_UTIL", gpu="1")
    finally:
        exporter.stop()


# A real Prometheus -----------------------------------------------------------------------------------------
@pytest.mark.skipif(not prometheus_available(), reason="no prometheus binary")
def test_real_prometheus_scrapes_the_xid_series(make_exporter: Callable[..., GpuExporter],
                                                tmp_path: Path) -> None:
    """XID 79 on one GPU shows in the XID series, the health gauge, and the GPU alerts compiled from a spec."""
    spec = tmp_path / "fleet.yaml"
    spec.write_text(textwrap.dedent("""\
        apiVersion: forge-slo/v1
        kind: ServiceSLO
        service: fleet
        gpu: {selector: {job: forge-slo-test}, alerts: {unhealthy_for: 0s}}
        slos:
          - {name: util, objective: 95, sli: {gauge: {metric: DCGM_FI_DEV_GPU_UTIL, good_when: ">=", threshold: 5}}}
        """))
    [loaded] = load_specs([spec])
    rules = tmp_path / "fleet.rules.yaml"
    rules.write_text(dump(rules_document(loaded)))
    exporter = make_exporter(interval_s=0.2)
    prom = start_prometheus(tmp_path, [exporter.url.split("//", 1)[1]], rule_files=[rules], interval="1s")
    try:
        before = prom.wait_for(f'{XID_METRIC}{{gpu="1",err_code="79"}}')
        assert float(before[0]["value"][1]) == 0  # the series exists before the first XID
        status, _ = request("POST", f"{exporter.url}/admin/faults", {"gpu": 1, "kind": "xid", "code": 79})
        assert status == 200
        result = prom.wait_for(f'{XID_METRIC}{{err_code="79"}} > 0')
        assert [r["metric"]["gpu"] for r in result] == ["1"]
        assert result[0]["metric"]["hostname"] == "test-node"
        prom.wait_for(f'{HEALTH_METRIC}{{gpu="1"}} == 0')
        for alert in (cv.GPU_XID_ALERT, cv.GPU_UNHEALTHY_ALERT):
            firing = prom.wait_for(f'ALERTS{{alertname="{alert}",alertstate="firing"}}', timeout=20)
            assert [a["metric"]["gpu"] for a in firing] == ["1"], alert  # only the faulty GPU
            assert firing[0]["metric"]["forge_slo_severity"] == "page"
        # The other GPUs keep being served.
        assert sorted(r["metric"]["gpu"] for r in prom.query(f"{HEALTH_METRIC} == 1")) == ["0", "2"]
    finally:
        prom.stop()


# Network exposure, tokens, slow clients and shutdown --------------------------------------------------------
def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return all the server answers before it closes the connection."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split(b" ", 2)[1])


def test_admin_token_check_is_total_over_any_header(make_exporter: Callable[..., GpuExporter]) -> None:
    """Any Authorization header -- non-ASCII, not UTF-8, empty, huge, another scheme -- is a 401, never a crash."""
    exporter = make_exporter(admin_token="s3cret")
    for header in (b"Bearer s3cr\xc3\xa9t", b"Bearer \xff\xfe", b"", b"Bearer", b"Bearer " + b"x" * 60000,
                   b"Basic s3cret", b"s3cret"):
        answer = raw_exchange(exporter.port, b"GET /admin/faults HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                             b"Authorization: " + header + b"\r\n\r\n")
        assert status_of(answer) == 401, header[:40]
    answer = raw_exchange(exporter.port, b"GET /admin/faults HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                         b"Authorization: bearer  s3cret \r\n\r\n")
    assert status_of(answer) == 200  # the scheme is case-insensitive, surrounding blanks do not count


def test_admin_rejects_deeply_nested_json_and_a_bad_length_with_400(
        make_exporter: Callable[..., GpuExporter]) -> None:
    exporter = make_exporter()
    nested = b"[" * 30000 + b"]" * 30000
    answer = raw_exchange(exporter.port, b"POST /admin/faults HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                         b"Content-Length: %d\r\n\r\n%s" % (len(nested), nested))
    assert status_of(answer) == 400 and b"nested too deeply" in answer
    answer = raw_exchange(exporter.port, b"POST /admin/faults HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert status_of(answer) == 400 and b"Content-Length" in answer
    assert scrape(exporter)  # still serving


def test_a_request_sent_byte_by_byte_is_cut_off_at_the_read_timeout(
        make_exporter: Callable[..., GpuExporter]) -> None:
    """Slowloris: a client that keeps sending header bytes, slowly, loses its connection at the read timeout."""
    import socket

    exporter = make_exporter(read_timeout_s=1.0)
    for partial, drip in ((b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"X-Slow: 1\r\n"),
                          (b"POST /admin/faults HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", b" ")):
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=10) as sock:
            sock.sendall(partial)
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 8 and not closed:
                try:
                    sock.sendall(drip)
                    sock.settimeout(0.3)
                    closed = sock.recv(65536) == b""
                except TimeoutError:
                    continue
                except OSError:  # reset: closed too
                    closed = True
            assert closed, f"the connection sending {partial!r} slowly was still open after 8 s"
    assert scrape(exporter)  # and the exporter still serves everyone else


def _listening_address(port: int) -> str:
    """The local address a TCP socket listens on for ``port``, from /proc/net/tcp (IPv4)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            return ".".join(str(b) for b in reversed(bytes.fromhex(address)))
    raise AssertionError(f"nothing listens on port {port}")


def _start_module(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "forge_slo.telemetry", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.terminate()
    _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def test_it_binds_loopback_by_default_and_prints_the_address_it_bound() -> None:
    fleet = REPO / "experiments/fleets/chaos-xid79.yaml"
    proc = _start_module(["--port", "0", "--fake-fleet", str(fleet)])
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        assert _listening_address(port) == "127.0.0.1"
    finally:
        code, err = _stop(proc)
    assert code == 0 and "Traceback" not in err


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--host", "0.0.0.0"], {}, "--admin-token TOKEN"),
    (["--admin-token", " "], {}, "--admin-token: the token is empty or only whitespace"),
    (["--admin-token", "s3crét"], {}, "--admin-token: the token holds the character 'é'"),
    ([], {"FORGE_SLO_GPU_EXPORTER_ADMIN_TOKEN": "two words"}, "$FORGE_SLO_GPU_EXPORTER_ADMIN_TOKEN: the token "
                                                              "holds whitespace"),
])
def test_fault_injection_needs_a_usable_token_beyond_loopback(args: list[str], env: dict[str, str],
                                                              message: str) -> None:
    """A fake fleet takes faults over HTTP: on 0.0.0.0 without a token anyone could fire pages. Refused, exit 2."""
    fleet = str(REPO / "experiments/fleets/chaos-xid79.yaml")
    proc = _start_module(["--port", "0", "--fake-fleet", fleet, *args], env)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:  # it started serving instead of refusing
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err
    assert message in err and "Traceback" not in err
    if "--host" in args:
        assert "--host 127.0.0.1" in err


def _busy_scrapers(port: int, n: int, stop: threading.Event) -> tuple[list[threading.Thread], list[int]]:
    """``n`` scraper threads, half on keep-alive connections, half opening one per scrape, until ``stop``."""
    answered = [0] * n

    def scraper(i: int) -> None:
        conn: http.client.HTTPConnection | None = None
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/metrics", headers={} if i % 2 else {"Connection": "close"})
                conn.getresponse().read()
                answered[i] += 1
                if not i % 2:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=scraper, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    return threads, answered


@pytest.mark.parametrize("delivered_to", ["process", "worker thread"])
def test_sigterm_stops_the_exporter_under_20_scrapers(delivered_to: str) -> None:
    """SIGTERM stops the exporter (exit 0) while 20 scrapers hammer it, whichever thread the kernel hands the
    signal to: "worker thread" addresses it to a thread other than the main one, as the kernel may choose to."""
    fleet = REPO / "experiments/fleets/bench-8gpu.yaml"
    proc = _start_module(["--port", "0", "--fake-fleet", str(fleet), "--interval", "200ms"])
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().rsplit(":", 1)[1].split("/", 1)[0])
        threads, answered = _busy_scrapers(port, 20, stop)
        wait_until(lambda: all(answered), timeout=20)
        target = proc.pid
        if delivered_to == "worker thread":
            # The first threads it starts (collector, HTTP server) live as long as the process.
            target = min(int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid)
        started = time.monotonic()
        os.kill(target, signal.SIGTERM)
        code = proc.wait(timeout=6)  # the requirement is 2 s; the room is for a loaded CI machine
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
        for thread in threads:
            thread.join(timeout=10)
    assert code == 0 and "Traceback" not in err, err
    assert elapsed < 6
    assert not Path(f"/proc/{proc.pid}").exists()  # reaped: no process left behind
