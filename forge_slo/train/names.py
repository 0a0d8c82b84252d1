"""Series the training job exports on ``/metrics``, one place for the worker, the watchdog and the experiments.

Every series carries ``rank`` (and Prometheus adds ``job``/``instance``). Units are in the names.
"""

from __future__ import annotations

from forge_slo import conventions as cv

PREFIX = cv.TRAIN_METRIC_PREFIX
RANK_LABEL = "rank"

STEPS = f"{PREFIX}steps"  # counter (exposed as forge_train_steps_total): all-reduce steps completed
WORLD_SIZE = f"{PREFIX}world_size"
INFO = f"{PREFIX}info"  # 1, labels backend and device
# The heartbeat: wall-clock time the rank last finished a step. It stops while a collective hangs.
LAST_STEP_TIMESTAMP = f"{PREFIX}last_step_timestamp_seconds"
STEP_SECONDS = f"{PREFIX}step_seconds"  # mean of the last few steps
BASELINE_STEP_SECONDS = f"{PREFIX}baseline_step_seconds"  # median of the first steps after warm-up; NaN before
COMPUTE_SECONDS = f"{PREFIX}compute_seconds"  # local work of the last step (before the collective)
COLLECTIVE_SECONDS = f"{PREFIX}collective_seconds"  # time in the last all-reduce
COLLECTIVE_IN_PROGRESS = f"{PREFIX}collective_in_progress"  # 1 while inside an all-reduce
COLLECTIVE_STARTED_TIMESTAMP = f"{PREFIX}collective_started_timestamp_seconds"
ALGBW = f"{PREFIX}algbw_bytes_per_second"  # bytes / all-reduce time, over the last few steps
BUSBW = f"{PREFIX}busbw_bytes_per_second"  # algbw x 2(n-1)/n (nccl-tests' bus bandwidth for all-reduce)
BASELINE_BUSBW = f"{PREFIX}baseline_busbw_bytes_per_second"
BASELINE_READY = f"{PREFIX}baseline_ready"  # 1 once the baselines are measured


def bus_bandwidth(algbw_bytes_per_second: float, world_size: int) -> float:
    """All-reduce bus bandwidth: algorithm bandwidth x 2(n-1)/n, comparable across world sizes."""
    if world_size < 1:
        raise ValueError("world size must be at least 1")
    return algbw_bytes_per_second * 2 * (world_size - 1) / world_size
