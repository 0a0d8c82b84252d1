"""A fake GPU fleet: plays a :class:`~forge_slo.telemetry.fleet.FleetConfig` as a :class:`GpuBackend`.

Values follow the configured patterns in seconds since :meth:`FakeFleet.start`; faults from the file fire when
their time has passed, faults from :meth:`FakeFleet.inject` fire at once. Tests, demos and chaos experiments
use it wherever no GPU exists; it counts its reads so a test can check the exporter's read discipline.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from forge_slo.telemetry.backend import GpuInfo, GpuReading, GpuUnavailable
from forge_slo.telemetry.fleet import DEFAULT_THERMAL_TEMPERATURE_C, FakeGpu, Fault, FleetConfig

# NVML's clocks-event (throttle) reason bits.
REASON_GPU_IDLE = 0x1
REASON_SW_THERMAL = 0x20
REASON_HW_THERMAL = 0x40


@dataclass
class _GpuState:
    last_t: float = 0.0
    energy_mj: float = 0.0
    nvlink_kib: float = 0.0
    xids: dict[int, int] = field(default_factory=dict)
    ecc: dict[str, int] = field(default_factory=lambda: {"sbe": 0, "dbe": 0})
    remapped: dict[str, int] = field(
        default_factory=lambda: {"correctable": 0, "uncorrectable": 0, "failure": 0})
    nvlink_errors: dict[str, int] = field(
        default_factory=lambda: {"crc_flit": 0, "crc_data": 0, "replay": 0, "recovery": 0})
    pcie_replays: int = 0
    lost: bool = False
    thermal_until: float | None = None
    thermal_temperature_c: float = DEFAULT_THERMAL_TEMPERATURE_C


class FakeFleet:
    """A :class:`~forge_slo.telemetry.backend.GpuBackend` and :class:`FaultInjector` over a fleet config."""

    name = "fake"

    def __init__(self, config: FleetConfig, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._t0 = clock()
        self._pending: list[Fault] = list(config.faults)
        self._applied: list[tuple[float, Fault]] = []
        self._states = [_GpuState() for _ in config.gpus]
        self._infos = tuple(GpuInfo(g.index, g.uuid, g.pci_bus_id, g.model) for g in config.gpus)
        self.read_calls = 0

    # GpuBackend -------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._t0 = self._clock()

    def gpus(self) -> Sequence[GpuInfo]:
        return self._infos

    def driver_version(self) -> str:
        return self.config.driver_version

    def hostname(self) -> str | None:
        return self.config.hostname

    def read(self, index: int) -> GpuReading:
        if self.config.read_latency_s:
            self._sleep(self.config.read_latency_s)  # stands in for NVML's ioctl round trips
        with self._lock:
            self.read_calls += 1
            t = self._elapsed()
            self._apply_due(t)
            state = self._states[index]
            if state.lost:
                raise GpuUnavailable("GPU is lost (fake fleet fault)", lost=True)
            return self._reading(self.config.gpus[index], state, t)

    def xid_counts(self, index: int) -> Mapping[int, int]:
        with self._lock:
            self._apply_due(self._elapsed())
            return dict(self._states[index].xids)

    def close(self) -> None:
        pass

    # FaultInjector ----------------------------------------------------------------------------------------
    def inject(self, fault: Fault) -> None:
        if not 0 <= fault.gpu < len(self._states):
            raise ValueError(f"no GPU {fault.gpu} in this fleet of {len(self._states)}")
        with self._lock:
            t = self._elapsed()
            self._apply_due(t)
            self._apply(fault, t)

    def fault_state(self) -> dict[str, object]:
        with self._lock:
            t = self._elapsed()
            self._apply_due(t)
            return {
                "elapsed_s": round(t, 3),
                "applied": [{"applied_at_s": round(at, 3), **f.to_json()} for at, f in self._applied],
                "pending": [f.to_json() for f in self._pending],
                "gpus": [{"gpu": i, "lost": s.lost, "thermal": self._thermal(s, t)}
                         for i, s in enumerate(self._states)],
            }

    # Internals --------------------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return max(0.0, self._clock() - self._t0)

    def _apply_due(self, t: float) -> None:
        while self._pending and (self._pending[0].at_s or 0.0) <= t:
            fault = self._pending.pop(0)
            self._apply(fault, fault.at_s or 0.0)

    def _apply(self, fault: Fault, t: float) -> None:
        state = self._states[fault.gpu]
        self._applied.append((t, fault))
        if fault.kind == "xid" and fault.code is not None:
            state.xids[fault.code] = state.xids.get(fault.code, 0) + fault.count
        elif fault.kind == "ecc":
            state.ecc["sbe" if fault.type == "single" else "dbe"] += fault.count
        elif fault.kind == "row_remap" and fault.type is not None:
            if fault.type == "failure":
                state.remapped["failure"] = 1
            else:
                state.remapped[fault.type] += fault.count
        elif fault.kind == "nvlink_error" and fault.type is not None:
            state.nvlink_errors[fault.type] += fault.count
        elif fault.kind == "pcie_replay":
            state.pcie_replays += fault.count
        elif fault.kind == "thermal":
            state.thermal_until = t + fault.duration_s if fault.duration_s is not None else math.inf
            state.thermal_temperature_c = fault.temperature_c or DEFAULT_THERMAL_TEMPERATURE_C
        elif fault.kind == "lost":
            state.lost = True
        elif fault.kind == "recover":
            state.lost = False
            state.thermal_until = None

    @staticmethod
    def _thermal(state: _GpuState, t: float) -> bool:
        return state.thermal_until is not None and t < state.thermal_until

    def _reading(self, gpu: FakeGpu, state: _GpuState, t: float) -> GpuReading:
        util = min(100.0, gpu.utilization.at(t))
        power = gpu.power_w.at(t)
        dt = max(0.0, t - state.last_t)
        state.last_t = t
        state.energy_mj += power * dt * 1000.0
        state.nvlink_kib += gpu.nvlink_kib_per_s.at(t) * dt
        temperature = gpu.temperature_c.at(t)
        memory_temperature = gpu.memory_temperature_c.at(t)
        sm_clock = gpu.sm_clock_mhz.at(t)
        reasons = REASON_GPU_IDLE if util < 1.0 else 0
        if self._thermal(state, t):
            reasons |= REASON_SW_THERMAL | REASON_HW_THERMAL
            temperature = max(temperature, state.thermal_temperature_c)
            memory_temperature = max(memory_temperature, state.thermal_temperature_c + 5)
            sm_clock /= 2
        used = min(gpu.memory_total_mib, gpu.memory_used_mib.at(t))
        has_nvlink = gpu.nvlink_count > 0
        return GpuReading(
            gpu_util_percent=float(round(util)),
            mem_copy_util_percent=float(round(min(100.0, gpu.memory_utilization.at(t)))),
            fb_used_mib=float(round(used)),
            fb_free_mib=float(round(gpu.memory_total_mib - used)),
            power_w=round(power, 3),
            energy_mj=float(math.floor(state.energy_mj)),
            gpu_temp_c=float(round(temperature)),
            memory_temp_c=float(round(memory_temperature)),
            sm_clock_mhz=float(round(sm_clock)),
            mem_clock_mhz=float(round(gpu.mem_clock_mhz.at(t))),
            ecc_sbe_volatile=float(state.ecc["sbe"]),
            ecc_dbe_volatile=float(state.ecc["dbe"]),
            ecc_sbe_aggregate=float(state.ecc["sbe"]),
            ecc_dbe_aggregate=float(state.ecc["dbe"]),
            correctable_remapped_rows=float(state.remapped["correctable"]),
            uncorrectable_remapped_rows=float(state.remapped["uncorrectable"]),
            row_remap_failure=float(state.remapped["failure"]),
            pcie_replays=float(state.pcie_replays),
            nvlink_data_kib=float(math.floor(state.nvlink_kib)) if has_nvlink else None,
            nvlink_crc_flit_errors=float(state.nvlink_errors["crc_flit"]) if has_nvlink else None,
            nvlink_crc_data_errors=float(state.nvlink_errors["crc_data"]) if has_nvlink else None,
            nvlink_replay_errors=float(state.nvlink_errors["replay"]) if has_nvlink else None,
            nvlink_recovery_errors=float(state.nvlink_errors["recovery"]) if has_nvlink else None,
            clocks_event_reasons=float(reasons),
        )
