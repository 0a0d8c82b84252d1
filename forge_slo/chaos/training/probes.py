"""Training-job probes: the watchdog's verdicts (hung collective, stragglers) and the bus bandwidth.

The job is read from every rank's ``/metrics``: give ``state_dir`` (a job started by ``python -m
forge_slo.train launch``) or ``metrics_urls`` (one URL per rank, rank order) for a job started elsewhere.
"""

import math

from forge_slo.chaos._common import poll_until
from forge_slo.errors import RunnerError, UsageError
from forge_slo.train import Verdict, watch

__all__ = [
    "bus_bandwidth_gbps",
    "bus_bandwidth_ratio",
    "straggler_detected",
    "training_healthy",
    "training_hung",
    "wait_for_straggler",
    "wait_for_training_hang",
    "wait_for_training_healthy",
]


def _urls(state_dir: str, metrics_urls: list[str] | None) -> list[str]:
    if metrics_urls:
        return [str(u) for u in metrics_urls]
    if not state_dir:
        raise UsageError("give state_dir (the job's state directory) or metrics_urls (one per rank)")
    from forge_slo.train import read_job

    return read_job(state_dir).metrics_urls()


def _check(stall_after_s: float, straggler_factor: float) -> None:
    if float(stall_after_s) <= 0:
        raise UsageError(f"stall_after_s: {stall_after_s!r}; use a positive number of seconds")
    if float(straggler_factor) <= 1:
        raise UsageError(f"straggler_factor: {straggler_factor!r}; use a number above 1, e.g. 2")


def _verdict(state_dir: str, metrics_urls: list[str] | None, stall_after_s: float,
             straggler_factor: float) -> Verdict:
    _check(stall_after_s, straggler_factor)
    return watch(_urls(state_dir, metrics_urls), stall_after_s=float(stall_after_s),
                 straggler_factor=float(straggler_factor))


def training_healthy(state_dir: str = "", metrics_urls: list[str] | None = None, stall_after_s: float = 10.0,
                     straggler_factor: float = 2.0) -> bool:
    """Every rank answers, finished a step within ``stall_after_s`` and none straggles."""
    return bool(_verdict(state_dir, metrics_urls, stall_after_s, straggler_factor).healthy)


def training_hung(state_dir: str = "", metrics_urls: list[str] | None = None, stall_after_s: float = 10.0) -> bool:
    """No rank finished a step within ``stall_after_s`` (a hung collective, or ranks gone)."""
    return bool(_verdict(state_dir, metrics_urls, stall_after_s, 2.0).hung)


def straggler_detected(state_dir: str = "", metrics_urls: list[str] | None = None,
                       straggler_factor: float = 2.0) -> bool:
    """Some rank's recent step time exceeds ``straggler_factor`` x its baseline, or its local work exceeds
    that many times the others'."""
    return bool(_verdict(state_dir, metrics_urls, 3600.0, straggler_factor).stragglers)


def bus_bandwidth_gbps(state_dir: str = "", metrics_urls: list[str] | None = None) -> float:
    """All-reduce bus bandwidth of the slowest rank over its last steps, in GB/s (10^9 bytes)."""
    value = _verdict(state_dir, metrics_urls, 3600.0, 2.0).busbw_bytes_per_second
    if math.isnan(value):
        raise RunnerError("no rank reports a bus bandwidth yet")
    return round(value / 1e9, 6)


def bus_bandwidth_ratio(state_dir: str = "", metrics_urls: list[str] | None = None) -> float:
    """Bus bandwidth now over its baseline (1 = as fast as after warm-up), the lowest over ranks."""
    value = _verdict(state_dir, metrics_urls, 3600.0, 2.0).busbw_ratio
    if math.isnan(value):
        raise RunnerError("the ranks have not measured their baseline bandwidth yet")
    return round(value, 4)


def wait_for_training_hang(state_dir: str = "", metrics_urls: list[str] | None = None, stall_after_s: float = 10.0,
                           timeout_s: float = 60.0, poll_s: float = 0.5) -> float:
    """Seconds until the watchdog calls the job hung (no step within ``stall_after_s``); fails after
    ``timeout_s``. The detection time includes ``stall_after_s`` itself."""
    urls = _urls(state_dir, metrics_urls)
    seconds, _ = poll_until(lambda: True if _verdict("", urls, stall_after_s, 2.0).hung else None,
                            timeout_s=timeout_s, poll_s=poll_s, what="a hung collective")
    return round(seconds, 3)


def wait_for_straggler(state_dir: str = "", metrics_urls: list[str] | None = None, straggler_factor: float = 2.0,
                       timeout_s: float = 60.0, poll_s: float = 0.5) -> float:
    """Seconds until the watchdog names a straggler; fails after ``timeout_s``."""
    urls = _urls(state_dir, metrics_urls)
    seconds, _ = poll_until(lambda: True if _verdict("", urls, 3600.0, straggler_factor).stragglers else None,
                            timeout_s=timeout_s, poll_s=poll_s, what=f"a straggler (x{straggler_factor:g})")
    return round(seconds, 3)


def wait_for_training_healthy(state_dir: str = "", metrics_urls: list[str] | None = None,
                              stall_after_s: float = 10.0, timeout_s: float = 90.0, poll_s: float = 0.5) -> float:
    """Seconds until every rank answers, steps, and has measured its baseline; fails after ``timeout_s``."""
    def ready() -> bool | None:
        urls = _urls(state_dir, metrics_urls)  # read each time: a restarted job may move
        verdict = _verdict("", urls, stall_after_s, 2.0)
        return True if verdict.healthy and all(r.baseline_ready for r in verdict.ranks) else None

    seconds, _ = poll_until(ready, timeout_s=timeout_s, poll_s=poll_s, what="a healthy training job")
    return round(seconds, 3)
