"""dcgm-exporter's metric names, types, units and labels, and the text rendering of one collection.

Names, types and help texts follow dcgm-exporter's ``etc/default-counters.csv`` (and its
``dcp-metrics-included.csv``, where the ECC and NVLink error counters are listed); labels follow its GPU
template in ``internal/pkg/rendermetrics``: ``gpu, UUID, pci_bus_id, device, modelName, Hostname|hostname,
DCGM_FI_DRIVER_VERSION`` and, on XID series, ``err_code, err_msg``. dcgm-exporter writes counters without a
``_total`` suffix, so this module renders the text format itself rather than through prometheus_client's
counter families (which would append one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from forge_slo import conventions as cv
from forge_slo.telemetry.backend import GpuInfo, GpuReading, GpuUnavailable

HostnameLabel = Literal["hostname", "Hostname"]
HOSTNAME_LABELS: tuple[HostnameLabel, ...] = ("hostname", "Hostname")
DRIVER_VERSION_LABEL = "DCGM_FI_DRIVER_VERSION"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ADMIN_TOKEN_ENV = "FORGE_SLO_GPU_EXPORTER_ADMIN_TOKEN"


@dataclass(frozen=True)
class MetricDef:
    """One per-GPU series family: dcgm-exporter's name and type, and the :class:`GpuReading` field shown."""

    name: str
    type: Literal["gauge", "counter"]
    help: str
    field: str


GPU_METRICS: tuple[MetricDef, ...] = (
    MetricDef("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", "sm_clock_mhz"),
    MetricDef("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", "mem_clock_mhz"),
    MetricDef("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", "memory_temp_c"),
    MetricDef("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", "gpu_temp_c"),
    MetricDef("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", "power_w"),
    MetricDef("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
              "Total energy consumption since boot (in mJ).", "energy_mj"),
    MetricDef("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.", "pcie_replays"),
    MetricDef("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", "gpu_util_percent"),
    MetricDef("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", "mem_copy_util_percent"),
    MetricDef("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", "fb_free_mib"),
    MetricDef("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", "fb_used_mib"),
    MetricDef("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter",
              "Total number of single-bit volatile ECC errors.", "ecc_sbe_volatile"),
    MetricDef("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter",
              "Total number of double-bit volatile ECC errors.", "ecc_dbe_volatile"),
    MetricDef("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter",
              "Total number of single-bit persistent ECC errors.", "ecc_sbe_aggregate"),
    MetricDef("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter",
              "Total number of double-bit persistent ECC errors.", "ecc_dbe_aggregate"),
    MetricDef("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "counter",
              "Total number of NVLink flow-control CRC errors.", "nvlink_crc_flit_errors"),
    MetricDef("DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", "counter",
              "Total number of NVLink data CRC errors.", "nvlink_crc_data_errors"),
    MetricDef("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "counter",
              "Total number of NVLink retries.", "nvlink_replay_errors"),
    MetricDef("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", "counter",
              "Total number of NVLink recovery errors.", "nvlink_recovery_errors"),
    MetricDef("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter",
              "Total NVLink data received and transmitted over all links (in KiB).", "nvlink_data_kib"),
    MetricDef("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter",
              "Number of remapped rows for uncorrectable errors", "uncorrectable_remapped_rows"),
    MetricDef("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter",
              "Number of remapped rows for correctable errors", "correctable_remapped_rows"),
    MetricDef("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed",
              "row_remap_failure"),
    MetricDef("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge",
              "Current clock event (throttle) reasons, NVML's nvmlClocksEventReason bitmask.",
              "clocks_event_reasons"),
)

XID_METRIC = "DCGM_FI_DEV_XID_ERRORS"
XID_HELP = ("Number of XID errors seen since the exporter started, per XID code (err_code); "
            "err_code=\"0\" is always 0.")
HEALTH_METRIC = cv.GPU_HEALTHY  # one name for the exporter, the alerts and the chaos probes
HEALTH_HELP = ("1 when the GPU answers and shows no fatal error, else 0; reason says why "
               "(ok, gpu_lost, read_error, xid_<code>, ecc_dbe, row_remap_failure).")

# XID codes whose series exist at 0 before the first error, so increase()/rate() see the first one.
DEFAULT_XID_CODES: tuple[int, ...] = (13, 31, 43, 48, 63, 64, 74, 79, 92, 94, 95)
# XIDs after which NVIDIA's XID catalog calls for a GPU reset, node reboot or RMA: the GPU is unhealthy.
FATAL_XIDS: frozenset[int] = frozenset({48, 64, 74, 79, 94, 95, 119, 120, 140})
# err_msg values as dcgm-exporter writes them (from NVIDIA's XID catalog); others are "Unknown Error".
XID_MESSAGES: dict[int, str] = {
    0: "No Error",
    13: "Graphics Engine Exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors -- Most likely to see when running multiple cuda",
    48: "Double Bit ECC Error",
    61: "Internal micro-controller breakpoint/warning",
    62: "Internal micro-controller halt",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    74: "NVLINK Error",
    79: "GPU has fallen off the bus",
    92: "High single-bit ECC error rate",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
    119: "GSP RPC Timeout",
    120: "GSP Error",
    140: "Unrecovered ECC Error",
}


@dataclass(frozen=True)
class GpuSample:
    """What one collection learned about one GPU: a reading, or why there is none; XIDs either way."""

    info: GpuInfo
    reading: GpuReading | None
    error: GpuUnavailable | None
    xids: Mapping[int, int]

    def health(self) -> tuple[bool, str]:
        """(healthy, reason). Order: no answer first, then fatal XIDs, then memory errors."""
        if self.error is not None:
            return False, "gpu_lost" if self.error.lost else "read_error"
        for code in sorted(self.xids):
            if code in FATAL_XIDS and self.xids[code] > 0:
                return False, f"xid_{code}"
        r = self.reading
        if r is not None and (r.ecc_dbe_volatile or 0) > 0:
            return False, "ecc_dbe"
        if r is not None and (r.row_remap_failure or 0) > 0:
            return False, "row_remap_failure"
        return True, "ok"


class Renderer:
    """Renders collections of one set of GPUs; the labels that never change are built once."""

    def __init__(self, gpus: Sequence[GpuInfo], *, hostname: str, driver_version: str,
                 hostname_label: HostnameLabel = "hostname",
                 xid_codes: Sequence[int] = DEFAULT_XID_CODES) -> None:
        self.xid_codes = tuple(sorted({0, *xid_codes}))
        self._labels: dict[int, str] = {}
        for gpu in gpus:
            pairs = [("gpu", str(gpu.index)), ("UUID", gpu.uuid), ("pci_bus_id", gpu.pci_bus_id),
                     ("device", f"nvidia{gpu.index}"), ("modelName", gpu.model_name)]
            if hostname:  # dcgm-exporter leaves the host label out when it has no host name
                pairs.append((hostname_label, hostname))
            pairs.append((DRIVER_VERSION_LABEL, driver_version))
            self._labels[gpu.index] = ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)

    def render(self, samples: Sequence[GpuSample]) -> str:
        out: list[str] = []
        for metric in GPU_METRICS:
            lines = []
            for s in samples:
                value = getattr(s.reading, metric.field) if s.reading is not None else None
                if value is not None:
                    lines.append(f"{metric.name}{{{self._labels[s.info.index]}}} {format_value(value)}")
            if lines:
                out.append(f"# HELP {metric.name} {escape_help(metric.help)}")
                out.append(f"# TYPE {metric.name} {metric.type}")
                out.extend(lines)
        out.append(f"# HELP {XID_METRIC} {escape_help(XID_HELP)}")
        out.append(f"# TYPE {XID_METRIC} gauge")
        for s in samples:
            labels = self._labels[s.info.index]
            for code in sorted({*self.xid_codes, *s.xids}):
                message = escape_label(XID_MESSAGES.get(code, "Unknown Error"))
                count = 0 if code == 0 else s.xids.get(code, 0)
                out.append(f'{XID_METRIC}{{{labels},err_code="{code}",err_msg="{message}"}} {count}')
        out.append(f"# HELP {HEALTH_METRIC} {escape_help(HEALTH_HELP)}")
        out.append(f"# TYPE {HEALTH_METRIC} gauge")
        for s in samples:
            healthy, reason = s.health()
            out.append(f'{HEALTH_METRIC}{{{self._labels[s.info.index]},reason="{reason}"}} {int(healthy)}')
        out.append("")
        return "\n".join(out)


def format_value(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
