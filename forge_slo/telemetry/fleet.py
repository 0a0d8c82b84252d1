"""The fake fleet's YAML: GPUs, value patterns over time, and faults (at a time, or injected at run time).

Two edges parse into these frozen types through the one Node reader of :mod:`forge_slo.spec.yamlnode`:
:func:`load_fleet` (a file; errors are :class:`~forge_slo.errors.SpecError` with file, line and field path)
and :func:`fault_from_json` (a fault posted to the exporter's ``/admin/faults``; same reader, so a fault reads
the same in both places).

Every number has a range: times (``at``, ``period``, ``phase``, ``repeat``, a fault's ``duration``) are at
most :data:`MAX_FLEET_TIME_S` (a day), a sine's ``period`` at least :data:`MIN_PERIOD_S`, ``read_latency``
at most :data:`MAX_READ_LATENCY_S`, signal values at most their entry in :data:`SIGNAL_MAXIMA` (percentages
0-100), ``memory_total_mib`` at most :data:`MAX_MEMORY_MIB`; counts and codes as :func:`parse_fault` says.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast, get_args

from forge_slo.durations import parse_duration
from forge_slo.errors import SpecError
from forge_slo.spec.yamlnode import Node, from_data, load_documents, load_file

FaultKind = Literal["xid", "ecc", "row_remap", "nvlink_error", "pcie_replay", "thermal", "lost", "recover"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
# The `type` a fault kind takes, when it takes one.
FAULT_TYPES: dict[str, tuple[str, ...]] = {
    "ecc": ("single", "double"),
    "row_remap": ("correctable", "uncorrectable", "failure"),
    "nvlink_error": ("crc_flit", "crc_data", "replay", "recovery"),
}
# Fields each kind accepts besides `kind`, `gpu` and `at`.
_FAULT_FIELDS: dict[str, set[str]] = {
    "xid": {"code", "count"},
    "ecc": {"type", "count"},
    "row_remap": {"type", "count"},
    "nvlink_error": {"type", "count"},
    "pcie_replay": {"count"},
    "thermal": {"duration", "temperature_c"},
    "lost": set(),
    "recover": set(),
}
DEFAULT_THERMAL_TEMPERATURE_C = 92.0
FLEET_UUID_NAMESPACE = uuid.UUID("6f1d0a52-3c0e-4b8e-9a7e-2f0c5d1e9b11")


# Signals: a value as a function of seconds since the fleet started ---------------------------------------
@dataclass(frozen=True)
class Constant:
    value: float

    def at(self, t: float) -> float:
        return self.value


@dataclass(frozen=True)
class Sine:
    """Between ``low`` and ``high`` with a period; starts at the middle going up (shifted by ``phase_s``)."""

    low: float
    high: float
    period_s: float
    phase_s: float = 0.0

    def at(self, t: float) -> float:
        wave = math.sin(2 * math.pi * (t + self.phase_s) / self.period_s)
        return self.low + (self.high - self.low) * (1 + wave) / 2


@dataclass(frozen=True)
class Steps:
    """The value of the last step whose time has passed (the first one's before); loops every ``repeat_s``."""

    steps: tuple[tuple[float, float], ...]
    repeat_s: float | None = None

    def at(self, t: float) -> float:
        if self.repeat_s:
            t = t % self.repeat_s
        value = self.steps[0][1]
        for start, step_value in self.steps:
            if start > t:
                break
            value = step_value
        return value


Signal: TypeAlias = Constant | Sine | Steps


@dataclass(frozen=True)
class FakeGpu:
    """One simulated GPU: identity and how its values move."""

    index: int
    model: str
    uuid: str
    pci_bus_id: str
    memory_total_mib: float
    utilization: Signal
    memory_utilization: Signal
    memory_used_mib: Signal
    power_w: Signal
    temperature_c: Signal
    memory_temperature_c: Signal
    sm_clock_mhz: Signal
    mem_clock_mhz: Signal
    nvlink_count: int
    nvlink_kib_per_s: Signal


@dataclass(frozen=True)
class Fault:
    """Something that goes wrong on one GPU. ``at_s``: seconds after start (None: now, from the admin API).

    ``type`` is the ECC error kind (single/double), the remapped-row kind (correctable/uncorrectable/failure)
    or the NVLink counter (crc_flit/crc_data/replay/recovery). ``duration_s`` None: until a ``recover``.
    """

    kind: FaultKind
    gpu: int
    at_s: float | None = None
    code: int | None = None
    count: int = 1
    type: str | None = None
    duration_s: float | None = None
    temperature_c: float | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "gpu": self.gpu}
        for key in ("at_s", "code", "type", "duration_s", "temperature_c"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.kind in ("xid", "ecc", "row_remap", "nvlink_error", "pcie_replay"):
            out["count"] = self.count
        return out


@dataclass(frozen=True)
class FleetConfig:
    """A whole fake fleet, as read from YAML."""

    gpus: tuple[FakeGpu, ...]
    faults: tuple[Fault, ...] = ()
    hostname: str | None = None
    driver_version: str = "550.54.15"
    read_latency_s: float = 0.0
    source: str = "<fleet>"


# Loading -----------------------------------------------------------------------------------------------
_TOP_FIELDS = {"hostname", "driver_version", "read_latency", "gpus", "faults"}
_GPU_FIELDS = {"model", "count", "uuid", "pci_bus_id", "memory_total_mib", "utilization",
               "memory_utilization", "memory_used_mib", "power_w", "temperature_c", "memory_temperature_c",
               "sm_clock_mhz", "mem_clock_mhz", "nvlink_count", "nvlink_kib_per_s"}
# Signal defaults: an idle H100 SXM.
_SIGNAL_DEFAULTS: dict[str, float] = {
    "utilization": 0.0, "memory_utilization": 0.0, "memory_used_mib": 0.0, "power_w": 70.0,
    "temperature_c": 35.0, "memory_temperature_c": 40.0, "sm_clock_mhz": 1980.0, "mem_clock_mhz": 2619.0,
    "nvlink_kib_per_s": 0.0,
}
_PERCENT_SIGNALS = {"utilization", "memory_utilization"}
MAX_FAKE_GPUS = 1024
MAX_FLEET_TIME_S = 86400.0
MAX_READ_LATENCY_S = 60.0
MIN_PERIOD_S = 0.001
MAX_MEMORY_MIB = 16 * 1024 * 1024.0  # 16 TiB
MAX_TEMPERATURE_C = 200.0
# The largest value each signal may take; none may be negative.
SIGNAL_MAXIMA: dict[str, float] = {
    "utilization": 100.0, "memory_utilization": 100.0, "memory_used_mib": MAX_MEMORY_MIB, "power_w": 10_000.0,
    "temperature_c": MAX_TEMPERATURE_C, "memory_temperature_c": MAX_TEMPERATURE_C, "sm_clock_mhz": 100_000.0,
    "mem_clock_mhz": 100_000.0, "nvlink_kib_per_s": 1e12,
}


def load_fleet(path: str) -> FleetConfig:
    """Read a fleet file; raises :class:`SpecError` with file, line and field path."""
    return _fleet(load_file(path, what="the fleet file"), path)


def parse_fleet(text: str | bytes, file: str = "<fleet>") -> FleetConfig:
    """A fleet from YAML text; raises :class:`SpecError` with file, line and field path."""
    return _fleet(load_documents(text, file), file)


def _fleet(docs: list[Node], file: str) -> FleetConfig:
    if len(docs) != 1:
        raise SpecError(f"a fleet file holds exactly one YAML document, found {len(docs)}", file=file)
    root = docs[0]
    top = root.mapping(_TOP_FIELDS, required=("gpus",))
    hostname = top["hostname"].string() if "hostname" in top else None
    driver = _scalar_string(top["driver_version"]) if "driver_version" in top else "550.54.15"
    latency = (_duration(top["read_latency"], allow_zero=True, maximum=MAX_READ_LATENCY_S)
               if "read_latency" in top else 0.0)
    gpus_node = top["gpus"]
    gpu_groups = gpus_node.sequence()
    if not gpu_groups:
        gpus_node.fail("must list at least one GPU")
    gpus: list[FakeGpu] = []
    for group in gpu_groups:
        gpus.extend(_gpu_group(group, first_index=len(gpus), hostname=hostname or "fake-node"))
        if len(gpus) > MAX_FAKE_GPUS:
            group.fail(f"a fake fleet holds at most {MAX_FAKE_GPUS} GPUs")
    faults = tuple(parse_fault(node, gpu_count=len(gpus), timed=True) for node in
                   (top["faults"].sequence() if "faults" in top else []))
    return FleetConfig(gpus=tuple(gpus), faults=tuple(sorted(faults, key=lambda f: f.at_s or 0.0)),
                       hostname=hostname, driver_version=driver, read_latency_s=latency, source=file)


def _gpu_group(node: Node, *, first_index: int, hostname: str) -> list[FakeGpu]:
    m = node.mapping(_GPU_FIELDS, required=("model",))
    model = m["model"].string()
    count = _int(m["count"], low=1, high=MAX_FAKE_GPUS) if "count" in m else 1
    if count > 1:
        for key in ("uuid", "pci_bus_id"):
            if key in m:
                m[key].fail(f"cannot be set on a group of {count} GPUs (every GPU needs its own)")
    memory_total = (m["memory_total_mib"].number(above=0, maximum=MAX_MEMORY_MIB)
                    if "memory_total_mib" in m else 81559.0)
    signals: dict[str, Signal] = {}
    for key, default in _SIGNAL_DEFAULTS.items():
        signals[key] = _signal(m[key], key) if key in m else Constant(default)
    nvlinks = _int(m["nvlink_count"], low=0, high=36) if "nvlink_count" in m else 0
    out = []
    for i in range(count):
        index = first_index + i
        default_uuid = f"GPU-{uuid.uuid5(FLEET_UUID_NAMESPACE, f'{hostname}/{index}')}"
        gpu_uuid = m["uuid"].string() if "uuid" in m else default_uuid
        default_bus = f"00000000:{(0x18 + 0x11 * index) % 256:02X}:00.0"
        bus = m["pci_bus_id"].string() if "pci_bus_id" in m else default_bus
        out.append(FakeGpu(index=index, model=model, uuid=gpu_uuid, pci_bus_id=bus,
                           memory_total_mib=memory_total, nvlink_count=nvlinks, **signals))
    return out


def _signal(node: Node, key: str) -> Signal:
    if not isinstance(node.value, dict):
        return Constant(_signal_value(node, key))
    raw = node.mapping()
    if "pattern" not in raw:
        node.fail("missing required field 'pattern' (constant, sine or steps)")
    pattern_node = raw["pattern"]
    pattern = pattern_node.string()
    if pattern == "constant":
        m = node.mapping({"pattern", "value"}, required=("value",))
        return Constant(_signal_value(m["value"], key))
    if pattern == "sine":
        m = node.mapping({"pattern", "min", "max", "period", "phase"}, required=("min", "max", "period"))
        low, high = _signal_value(m["min"], key), _signal_value(m["max"], key)
        if low > high:
            m["max"].fail(f"must be at least min ({low:g})")
        phase = _duration(m["phase"], allow_zero=True) if "phase" in m else 0.0
        period = _duration(m["period"])
        if period < MIN_PERIOD_S:  # shorter ones overflow the sine's argument to infinity
            m["period"].fail(f"must be at least {MIN_PERIOD_S:g} seconds (1ms), got {period:g}")
        return Sine(low, high, period, phase)
    if pattern == "steps":
        m = node.mapping({"pattern", "steps", "repeat"}, required=("steps",))
        steps: list[tuple[float, float]] = []
        step_nodes = m["steps"].sequence()
        if not step_nodes:
            m["steps"].fail("must list at least one step")
        for step in step_nodes:
            sm = step.mapping({"at", "value"}, required=("at", "value"))
            start = _duration(sm["at"], allow_zero=True)
            if steps and start <= steps[-1][0]:
                sm["at"].fail(f"steps must be in time order: {start:g}s is not after {steps[-1][0]:g}s")
            steps.append((start, _signal_value(sm["value"], key)))
        repeat = _duration(m["repeat"]) if "repeat" in m else None
        if repeat is not None and repeat <= steps[-1][0]:
            m["repeat"].fail(f"must be longer than the last step's time ({steps[-1][0]:g}s)")
        return Steps(tuple(steps), repeat)
    pattern_node.fail(f"unknown pattern {pattern!r}; use constant, sine or steps")


def parse_fault(node: Node, *, gpu_count: int, timed: bool) -> Fault:
    """A fault from YAML (``timed``: ``at`` is required) or from an admin request (``at`` is not allowed)."""
    raw = node.mapping()
    if "kind" not in raw:
        node.fail(f"missing required field 'kind' (one of {', '.join(FAULT_KINDS)})")
    kind = raw["kind"].string()
    if kind not in FAULT_KINDS:
        raw["kind"].fail(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
    allowed = {"kind", "gpu"} | _FAULT_FIELDS[kind] | ({"at"} if timed else set())
    required = ("gpu", "at") if timed else ("gpu",)
    m = node.mapping(allowed, required=required + (("code",) if kind == "xid" else ())
                     + (("type",) if kind in FAULT_TYPES else ()))
    gpu = _int(m["gpu"], low=0, high=max(gpu_count - 1, 0))
    at_s = _duration(m["at"], allow_zero=True) if "at" in m else None
    code = _int(m["code"], low=1, high=1023) if "code" in m else None
    count = _int(m["count"], low=1, high=1_000_000) if "count" in m else 1
    fault_type = None
    if "type" in m:
        fault_type = m["type"].string()
        if fault_type not in FAULT_TYPES[kind]:
            m["type"].fail(f"unknown {kind} type {fault_type!r}; use one of {', '.join(FAULT_TYPES[kind])}")
    duration = _duration(m["duration"]) if "duration" in m else None
    temperature = m["temperature_c"].number(minimum=0, maximum=MAX_TEMPERATURE_C) if "temperature_c" in m else None
    return Fault(kind=cast(FaultKind, kind), gpu=gpu, at_s=at_s, code=code, count=count, type=fault_type,
                 duration_s=duration, temperature_c=temperature)


def fault_from_json(data: object, *, gpu_count: int) -> Fault:
    """A fault posted to ``/admin/faults``; raises :class:`SpecError` naming the wrong field."""
    return parse_fault(from_data(data, "<request body>"), gpu_count=gpu_count, timed=False)


# Field readers -----------------------------------------------------------------------------------------
def _int(node: Node, *, low: int, high: int) -> int:
    return node.integer(minimum=low, maximum=high)


def _duration(node: Node, *, allow_zero: bool = False, maximum: float = MAX_FLEET_TIME_S) -> float:
    """A duration (``30s``, ``1m30s``; forge-slo's one syntax) or, from JSON, a number of seconds."""
    if isinstance(node.value, str):
        try:
            return parse_duration(node.value, allow_zero=allow_zero, maximum=maximum)
        except ValueError as e:
            node.fail(str(e))
    seconds = node.number()
    if seconds < 0 or (seconds == 0 and not allow_zero):
        node.fail(f"must be {'zero or more' if allow_zero else 'greater than zero'} seconds, got {seconds:g}")
    if seconds > maximum:
        node.fail(f"must be at most {maximum:g} seconds, got {seconds:g}")
    return seconds


def _scalar_string(node: Node) -> str:
    # Versions such as 550.54 read as numbers in YAML; accept them as written.
    if isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return str(node.value)
    return node.string()


def _signal_value(node: Node, key: str) -> float:
    value = node.number()
    if key in _PERCENT_SIGNALS and not 0 <= value <= 100:
        node.fail(f"is a percentage (0-100), got {value:g}")
    return node.number(minimum=0, maximum=SIGNAL_MAXIMA[key])
