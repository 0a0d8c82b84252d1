"""GPU probes: health, XIDs, ECC errors, throttle reasons and temperature, in dcgm-exporter's series.

Read either from the GPU exporter itself (``exporter_url``: forge-slo's exporter or dcgm-exporter, scraped
directly) or from Prometheus (``prometheus_url`` with an optional ``selector`` such as ``{"job": "gpu"}``).
``gpu`` selects one GPU by index (the ``gpu`` label); -1 means every GPU (the worst value).
"""

from collections.abc import Mapping

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.chaos._common import base_url, scrape
from forge_slo.errors import RunnerError, UsageError
from forge_slo.sources.prometheus import PrometheusClient

__all__ = [
    "gpu_ecc_errors",
    "gpu_healthy",
    "gpu_temperature",
    "gpu_throttled",
    "gpu_unhealthy_count",
    "gpu_xid_errors",
]

# dcgm-exporter's public series names (the exporter serves them under the same names).
XID_ERRORS = "DCGM_FI_DEV_XID_ERRORS"
ECC_DBE_VOLATILE = "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"
ECC_SBE_VOLATILE = "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"
CLOCKS_EVENT_REASONS = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
GPU_TEMP = "DCGM_FI_DEV_GPU_TEMP"
# NVML clocks-event (throttle) reason bits.
THROTTLE_BITS = {
    "thermal": 0x20 | 0x40,  # SW thermal slowdown, HW thermal slowdown
    "power": 0x4 | 0x80,  # SW power cap, HW power brake
    "hw_slowdown": 0x8,
    "any": 0xFFFF & ~0x1,  # anything but idle
}


def _samples(metric: str, gpu: int, exporter_url: str, prometheus_url: str,
             selector: Mapping[str, str] | None) -> list[tuple[Mapping[str, str], float]]:
    if bool(exporter_url) == bool(prometheus_url):
        raise UsageError("give exactly one of exporter_url (scrape the GPU exporter) or prometheus_url")
    if int(gpu) < -1:
        raise UsageError(f"gpu: {gpu!r}; a GPU index, or -1 for every GPU")
    want = {"gpu": str(int(gpu))} if int(gpu) >= 0 else {}
    if exporter_url:
        found = [(s.labels, s.value) for s in scrape(exporter_url) if s.name == metric
                 and all(s.labels.get(k) == v for k, v in want.items())]
    else:
        with PrometheusClient(base_url(prometheus_url, "prometheus_url")) as client:
            found = [(s.labels, s.value) for s in client.query(promql.selector(metric, {**(selector or {}), **want}))]
    if not found:
        where = exporter_url or prometheus_url
        raise RunnerError(f"no {metric} series" + (f" for GPU {gpu}" if int(gpu) >= 0 else "") + f" at {where} "
                          "(the GPU is gone, or it or the exporter does not report this value)")
    return found


def gpu_healthy(exporter_url: str = "", gpu: int = -1, prometheus_url: str = "",
                selector: dict[str, str] | None = None) -> bool:
    """Whether the GPU (every GPU with -1) is healthy per the exporter's forge_gpu_healthy. A GPU that is
    missing from the exporter altogether (fallen off the bus) raises."""
    return all(v == 1.0 for _, v in _samples(cv.GPU_HEALTHY, gpu, exporter_url, prometheus_url, selector))


def gpu_unhealthy_count(exporter_url: str = "", prometheus_url: str = "",
                        selector: dict[str, str] | None = None) -> int:
    """How many GPUs the exporter marks unhealthy."""
    return sum(1 for _, v in _samples(cv.GPU_HEALTHY, -1, exporter_url, prometheus_url, selector) if v != 1.0)


def gpu_xid_errors(exporter_url: str = "", gpu: int = -1, code: int = 0, prometheus_url: str = "",
                   selector: dict[str, str] | None = None) -> int:
    """XID errors counted since the exporter started, of one ``code`` (0: every code)."""
    total = 0.0
    for labels, value in _samples(XID_ERRORS, gpu, exporter_url, prometheus_url, selector):
        err = labels.get("err_code", "0")
        if err != "0" and (not code or err == str(int(code))):
            total += value
    return int(total)


def gpu_ecc_errors(exporter_url: str = "", gpu: int = -1, kind: str = "double", prometheus_url: str = "",
                   selector: dict[str, str] | None = None) -> int:
    """Volatile ECC errors, ``kind`` double (uncorrectable) or single."""
    metrics = {"double": ECC_DBE_VOLATILE, "single": ECC_SBE_VOLATILE}
    if kind not in metrics:
        raise UsageError(f"kind: {kind!r}; use double or single")
    return int(sum(v for _, v in _samples(metrics[kind], gpu, exporter_url, prometheus_url, selector)))


def gpu_throttled(exporter_url: str = "", gpu: int = -1, reason: str = "thermal", prometheus_url: str = "",
                  selector: dict[str, str] | None = None) -> bool:
    """Whether the clocks-event reasons carry ``reason``: thermal, power, hw_slowdown or any (not idle)."""
    if reason not in THROTTLE_BITS:
        raise UsageError(f"reason: {reason!r}; use one of {', '.join(THROTTLE_BITS)}")
    bits = THROTTLE_BITS[reason]
    return any(int(v) & bits for _, v in _samples(CLOCKS_EVENT_REASONS, gpu, exporter_url, prometheus_url, selector))


def gpu_temperature(exporter_url: str = "", gpu: int = -1, prometheus_url: str = "",
                    selector: dict[str, str] | None = None) -> float:
    """GPU temperature in °C (the hottest with -1)."""
    return max(v for _, v in _samples(GPU_TEMP, gpu, exporter_url, prometheus_url, selector))
