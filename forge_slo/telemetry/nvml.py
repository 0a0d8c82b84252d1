"""The real backend: NVML through nvidia-ml-py (``import pynvml``), imported only when this backend opens.

One :meth:`NvmlBackend.read` makes nine NVML calls per GPU (one of them a batch of field values). XID errors
come from NVML's event API (``nvmlDeviceRegisterEvents`` with ``nvmlEventTypeXidCriticalError``, then
``nvmlEventSetWait``) on a background thread and are counted per code.

Errors: "not supported"-class answers (NOT_SUPPORTED, FUNCTION_NOT_FOUND, NO_PERMISSION) leave the value out;
NVML_ERROR_GPU_IS_LOST and any other error make the whole read fail with :class:`GpuUnavailable`, which the
exporter reports as an unhealthy GPU while it keeps serving the others.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from forge_slo.telemetry.backend import GpuBackendUnavailable, GpuInfo, GpuReading, GpuUnavailable

# NVML return codes (nvml.h); pynvml exposes the same numbers, these are fallbacks for older bindings.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
_ABSENT = frozenset({NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION, NVML_ERROR_FUNCTION_NOT_FOUND})

# NVML field ids (nvml.h "Field Value Enums"), read in one nvmlDeviceGetFieldValues call.
FI_ECC_SBE_VOL_TOTAL = 3
FI_ECC_DBE_VOL_TOTAL = 4
FI_ECC_SBE_AGG_TOTAL = 5
FI_ECC_DBE_AGG_TOTAL = 6
FI_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL = 38
FI_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL = 45
FI_NVLINK_REPLAY_ERROR_COUNT_TOTAL = 52
FI_NVLINK_RECOVERY_ERROR_COUNT_TOTAL = 59
FI_MEMORY_TEMP = 82
FI_PCIE_REPLAY_COUNTER = 94
FI_NVLINK_THROUGHPUT_DATA_TX = 138  # KiB
FI_NVLINK_THROUGHPUT_DATA_RX = 139  # KiB
FI_REMAPPED_COR = 142
FI_REMAPPED_UNC = 143
FI_REMAPPED_FAILURE = 145
_FIELDS = (FI_MEMORY_TEMP, FI_ECC_SBE_VOL_TOTAL, FI_ECC_DBE_VOL_TOTAL, FI_ECC_SBE_AGG_TOTAL,
           FI_ECC_DBE_AGG_TOTAL, FI_PCIE_REPLAY_COUNTER, FI_REMAPPED_COR, FI_REMAPPED_UNC,
           FI_REMAPPED_FAILURE,
           FI_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL, FI_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL,
           FI_NVLINK_REPLAY_ERROR_COUNT_TOTAL, FI_NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
           FI_NVLINK_THROUGHPUT_DATA_TX, FI_NVLINK_THROUGHPUT_DATA_RX)
# nvmlValueType_t -> member of the c_nvmlValue_t union.
_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
EVENT_TYPE_XID_CRITICAL_ERROR = 0x8
XID_WAIT_MS = 500
MIB = 1024 * 1024

_FIX = ("Run with --fake-fleet FILE to serve a simulated fleet instead (examples in experiments/fleets/).")


def load_pynvml() -> Any:
    """The pynvml module, or :class:`GpuBackendUnavailable` saying how to get it."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as e:
        raise GpuBackendUnavailable(
            f"cannot read GPUs: the NVML bindings are not installed (import pynvml failed: {e}); "
            f"install them with 'pip install nvidia-ml-py'. {_FIX}") from None


class NvmlBackend:
    """A :class:`~forge_slo.telemetry.backend.GpuBackend` over NVML; ``nvml``: pynvml (tests pass a stub)."""

    name = "nvml"

    def __init__(self, nvml: Any | None = None, *, log: Callable[[str], None] | None = None) -> None:
        self._nvml = nvml if nvml is not None else load_pynvml()
        self._log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self._handles: list[Any] = []
        self._infos: list[GpuInfo] = []
        self._driver = ""
        self._xids: list[dict[int, int]] = []
        self._xid_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._initialised = False
        self.xid_watch_active = False
        self._open()

    # Opening ----------------------------------------------------------------------------------------------
    def _open(self) -> None:
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            code = getattr(e, "value", None)
            if code == self._const("NVML_ERROR_LIBRARY_NOT_FOUND", NVML_ERROR_LIBRARY_NOT_FOUND):
                reason = ("the NVML library (libnvidia-ml.so.1) was not found: "
                          "no NVIDIA driver on this machine")
            elif code == self._const("NVML_ERROR_DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED):
                reason = "the NVIDIA driver is not loaded"
            else:
                reason = f"NVML failed to start: {e}"
            raise GpuBackendUnavailable(f"cannot read GPUs: {reason}. {_FIX}") from None
        self._initialised = True
        try:
            count = int(nvml.nvmlDeviceGetCount())
            if count == 0:
                raise GpuBackendUnavailable(f"cannot read GPUs: NVML found no GPU on this machine. {_FIX}")
            self._driver = _text(nvml.nvmlSystemGetDriverVersion())
            for index in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                self._handles.append(handle)
                self._infos.append(self._identify(index, handle))
                self._xids.append({})
        except nvml.NVMLError as e:
            self.close()
            raise GpuBackendUnavailable(f"cannot read GPUs: NVML failed to list them: {e}. {_FIX}") from None
        except GpuBackendUnavailable:
            self.close()
            raise

    def _identify(self, index: int, handle: Any) -> GpuInfo:
        nvml = self._nvml
        try:
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
            bus_id = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
        except nvml.NVMLError as e:
            # Lost before we started: still served, as unhealthy, under placeholder identity labels.
            self._log(f"gpu-exporter: GPU {index} did not identify itself ({e}); reporting it unhealthy")
            return GpuInfo(index, f"unknown-{index}", "unknown", "unknown")
        return GpuInfo(index, uuid, bus_id, name)

    def _const(self, name: str, default: int) -> int:
        return int(getattr(self._nvml, name, default))

    # GpuBackend -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Register every GPU for XID events and start the thread that waits for them."""
        nvml = self._nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as e:
            self._log(f"gpu-exporter: XID events unavailable ({e}); DCGM_FI_DEV_XID_ERRORS stays at 0")
            return
        event_type = self._const("nvmlEventTypeXidCriticalError", EVENT_TYPE_XID_CRITICAL_ERROR)
        registered = 0
        for info, handle in zip(self._infos, self._handles, strict=True):
            try:
                nvml.nvmlDeviceRegisterEvents(handle, event_type, self._event_set)
                registered += 1
            except nvml.NVMLError as e:
                self._log(f"gpu-exporter: GPU {info.index} does not report XID events ({e})")
        if not registered:
            self._free_event_set()
            return
        self.xid_watch_active = True
        self._thread = threading.Thread(target=self._watch_xids, name="nvml-xid-events", daemon=True)
        self._thread.start()

    def gpus(self) -> Sequence[GpuInfo]:
        return tuple(self._infos)

    def driver_version(self) -> str:
        return self._driver

    def hostname(self) -> str | None:
        return None

    def xid_counts(self, index: int) -> Mapping[int, int]:
        with self._xid_lock:
            return dict(self._xids[index])

    def read(self, index: int) -> GpuReading:
        handle = self._handles[index]
        nvml = self._nvml
        util = self._call(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._call(nvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = self._call(nvml.nvmlDeviceGetPowerUsage, handle)
        energy = self._call(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        temperature = self._call(nvml.nvmlDeviceGetTemperature, handle,
                                 self._const("NVML_TEMPERATURE_GPU", NVML_TEMPERATURE_GPU))
        clock = nvml.nvmlDeviceGetClockInfo
        sm_clock = self._call(clock, handle, self._const("NVML_CLOCK_SM", NVML_CLOCK_SM))
        mem_clock = self._call(clock, handle, self._const("NVML_CLOCK_MEM", NVML_CLOCK_MEM))
        # NVML renamed "throttle reasons" to "clocks event reasons"; old bindings have only the old name.
        reasons_fn = (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                      or nvml.nvmlDeviceGetCurrentClocksThrottleReasons)
        reasons = self._call(reasons_fn, handle)
        fv = self._field_values(handle)
        tx, rx = fv.get(FI_NVLINK_THROUGHPUT_DATA_TX), fv.get(FI_NVLINK_THROUGHPUT_DATA_RX)
        return GpuReading(
            gpu_util_percent=_num(util.gpu) if util is not None else None,
            mem_copy_util_percent=_num(util.memory) if util is not None else None,
            fb_used_mib=_num(memory.used / MIB) if memory is not None else None,
            fb_free_mib=_num(memory.free / MIB) if memory is not None else None,
            power_w=_num(power_mw / 1000.0) if power_mw is not None else None,
            energy_mj=_num(energy),
            gpu_temp_c=_num(temperature),
            memory_temp_c=fv.get(FI_MEMORY_TEMP),
            sm_clock_mhz=_num(sm_clock),
            mem_clock_mhz=_num(mem_clock),
            ecc_sbe_volatile=fv.get(FI_ECC_SBE_VOL_TOTAL),
            ecc_dbe_volatile=fv.get(FI_ECC_DBE_VOL_TOTAL),
            ecc_sbe_aggregate=fv.get(FI_ECC_SBE_AGG_TOTAL),
            ecc_dbe_aggregate=fv.get(FI_ECC_DBE_AGG_TOTAL),
            correctable_remapped_rows=fv.get(FI_REMAPPED_COR),
            uncorrectable_remapped_rows=fv.get(FI_REMAPPED_UNC),
            row_remap_failure=fv.get(FI_REMAPPED_FAILURE),
            pcie_replays=fv.get(FI_PCIE_REPLAY_COUNTER),
            nvlink_data_kib=tx + rx if tx is not None and rx is not None else None,
            nvlink_crc_flit_errors=fv.get(FI_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL),
            nvlink_crc_data_errors=fv.get(FI_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL),
            nvlink_replay_errors=fv.get(FI_NVLINK_REPLAY_ERROR_COUNT_TOTAL),
            nvlink_recovery_errors=fv.get(FI_NVLINK_RECOVERY_ERROR_COUNT_TOTAL),
            clocks_event_reasons=_num(reasons),
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * XID_WAIT_MS / 1000 + 1)
            self._thread = None
        self._free_event_set()
        if self._initialised:
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as e:
                self._log(f"gpu-exporter: nvmlShutdown failed: {e}")

    # Internals --------------------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One NVML call: its value; None when the GPU lacks the feature; GpuUnavailable on other errors."""
        try:
            return fn(*args)
        except self._nvml.NVMLError as e:
            if self._absent(e):
                return None
            raise self._unavailable(e) from None

    def _absent(self, error: Any) -> bool:
        return getattr(error, "value", None) in _ABSENT

    def _unavailable(self, error: Any) -> GpuUnavailable:
        lost = getattr(error, "value", None) == self._const("NVML_ERROR_GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST)
        return GpuUnavailable(f"GPU is lost: {error}" if lost else f"NVML read failed: {error}", lost=lost)

    def _field_values(self, handle: Any) -> dict[int, float]:
        values = self._call(self._nvml.nvmlDeviceGetFieldValues, handle, list(_FIELDS))
        out: dict[int, float] = {}
        if values is None:
            return out
        lost_code = self._const("NVML_ERROR_GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST)
        for fv in values:
            status = int(fv.nvmlReturn)
            if status == lost_code:
                raise GpuUnavailable("GPU is lost (field values)", lost=True)
            if status != 0:
                continue  # a field this GPU or driver does not have (ECC off, no NVLink, older driver)
            member = _VALUE_MEMBERS.get(int(fv.valueType))
            if member is not None:
                out[int(fv.fieldId)] = float(getattr(fv.value, member))
        return out

    def _watch_xids(self) -> None:
        nvml = self._nvml
        timeout_code = self._const("NVML_ERROR_TIMEOUT", NVML_ERROR_TIMEOUT)
        event_type = self._const("nvmlEventTypeXidCriticalError", EVENT_TYPE_XID_CRITICAL_ERROR)
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, XID_WAIT_MS)
            except nvml.NVMLError as e:
                if getattr(e, "value", None) != timeout_code:
                    self._log(f"gpu-exporter: waiting for XID events failed ({e}); retrying in 1s")
                    self._stop.wait(1.0)
                continue
            if not int(data.eventType) & event_type:
                continue
            index = self._index_of(data.device)
            if index is None:
                continue
            code = int(data.eventData)
            with self._xid_lock:
                self._xids[index][code] = self._xids[index].get(code, 0) + 1

    def _index_of(self, device: Any) -> int | None:
        try:
            index = int(self._nvml.nvmlDeviceGetIndex(device))
        except self._nvml.NVMLError:
            # A lost GPU may not answer; fall back to comparing handles.
            for i, handle in enumerate(self._handles):
                if _same_handle(handle, device):
                    return i
            return None
        return index if 0 <= index < len(self._handles) else None

    def _free_event_set(self) -> None:
        if self._event_set is not None:
            event_set, self._event_set = self._event_set, None
            try:
                self._nvml.nvmlEventSetFree(event_set)
            except self._nvml.NVMLError as e:
                self._log(f"gpu-exporter: nvmlEventSetFree failed: {e}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _same_handle(a: Any, b: Any) -> bool:
    import ctypes

    try:
        return bool(ctypes.cast(a, ctypes.c_void_p).value == ctypes.cast(b, ctypes.c_void_p).value)
    except (TypeError, ctypes.ArgumentError):
        return a is b
