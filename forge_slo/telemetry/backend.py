"""The seam between the exporter and the GPUs: one :class:`GpuBackend` protocol, two implementations.

:class:`~forge_slo.telemetry.nvml.NvmlBackend` reads real GPUs through NVML;
:class:`~forge_slo.telemetry.fake.FakeFleet` plays a fleet described in YAML (and takes faults at run time).
The exporter only ever sees the types below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from forge_slo.errors import RunnerError

if TYPE_CHECKING:
    from forge_slo.telemetry.fleet import Fault


@dataclass(frozen=True)
class GpuInfo:
    """What identifies one GPU; read once at start. ``index`` is NVML's (and DCGM's) GPU id."""

    index: int
    uuid: str
    pci_bus_id: str
    model_name: str


@dataclass(frozen=True)
class GpuReading:
    """One GPU's values from one collection, in dcgm-exporter's units. ``None``: the GPU does not support it.

    Counters (energy, ECC, remapped rows, replays, NVLink) are totals as the driver reports them, not deltas.
    """

    gpu_util_percent: float | None = None
    mem_copy_util_percent: float | None = None
    fb_used_mib: float | None = None
    fb_free_mib: float | None = None
    power_w: float | None = None
    energy_mj: float | None = None
    gpu_temp_c: float | None = None
    memory_temp_c: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    ecc_sbe_volatile: float | None = None
    ecc_dbe_volatile: float | None = None
    ecc_sbe_aggregate: float | None = None
    ecc_dbe_aggregate: float | None = None
    correctable_remapped_rows: float | None = None
    uncorrectable_remapped_rows: float | None = None
    row_remap_failure: float | None = None
    pcie_replays: float | None = None
    nvlink_data_kib: float | None = None
    nvlink_crc_flit_errors: float | None = None
    nvlink_crc_data_errors: float | None = None
    nvlink_replay_errors: float | None = None
    nvlink_recovery_errors: float | None = None
    clocks_event_reasons: float | None = None


READING_FIELDS = tuple(f.name for f in fields(GpuReading))


class GpuUnavailable(Exception):
    """A GPU did not answer a read. ``lost``: it fell off the bus (NVML_ERROR_GPU_IS_LOST)."""

    def __init__(self, reason: str, *, lost: bool = False) -> None:
        self.reason = reason
        self.lost = lost
        super().__init__(reason)


class GpuBackendUnavailable(RunnerError):
    """No backend could be opened (no NVML library, driver or GPU); the message says which and what to do."""


@runtime_checkable
class GpuBackend(Protocol):
    """A source of GPU readings. Implement this to feed the exporter from something other than NVML.

    The exporter calls :meth:`start` once, then :meth:`read` for every GPU once per collection interval from a
    single collector thread, and :meth:`close` once. :meth:`xid_counts` may be called from that thread too;
    XID events arrive asynchronously, so implementations count them under their own lock.
    """

    name: str

    def start(self) -> None:
        """Begin watching (event threads, fault clocks). Called once before the first read."""

    def gpus(self) -> Sequence[GpuInfo]:
        """Every GPU, in index order; fixed for the backend's life."""
        ...

    def driver_version(self) -> str:
        """The driver version (the ``DCGM_FI_DRIVER_VERSION`` label)."""
        ...

    def hostname(self) -> str | None:
        """A host name this backend insists on (a fake fleet's), or None for the machine's."""
        ...

    def read(self, index: int) -> GpuReading:
        """Current values of one GPU; raises :class:`GpuUnavailable` when the GPU does not answer."""
        ...

    def xid_counts(self, index: int) -> Mapping[int, int]:
        """XID errors seen on one GPU since :meth:`start`, per XID code."""
        ...

    def close(self) -> None:
        """Stop threads and release the library. Safe to call twice."""


@runtime_checkable
class FaultInjector(Protocol):
    """A backend that takes faults at run time (the fake fleet); the exporter's admin endpoint needs one."""

    def inject(self, fault: Fault) -> None:
        """Apply a fault now (its ``at_s`` is ignored)."""

    def fault_state(self) -> dict[str, object]:
        """Applied and pending faults, as JSON-ready data."""
        ...
