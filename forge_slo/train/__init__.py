"""A small torch.distributed job for chaos experiments on training clusters, with or without GPUs.

``python -m forge_slo.train launch --nproc 2`` runs all-reduce steps under torchrun on loopback (gloo on CPU,
NCCL where GPUs exist); each rank exports step time, a heartbeat and bus bandwidth on ``/metrics``, and
:mod:`forge_slo.train.watchdog` detects a hung collective or a straggler. torch is the optional extra
``forge-slo[train]``: nothing here imports it until a rank starts.
"""

from __future__ import annotations

from forge_slo.train.launch import (
    JobInfo,
    JobOptions,
    alive,
    check_netns_name,
    rank_pid,
    read_job,
    start_detached,
    stop_job,
)
from forge_slo.train.watchdog import Verdict, watch

__all__ = [
    "JobInfo",
    "JobOptions",
    "Verdict",
    "alive",
    "check_netns_name",
    "rank_pid",
    "read_job",
    "start_detached",
    "stop_job",
    "watch",
]
