"""Training-job actions: start, stop and restart the all-reduce job; kill or pause one of its ranks.

The job is found through its state directory (``python -m forge_slo.train launch --state-dir DIR``), so a
rank is named by its number, not its pid. Rollbacks: :func:`resume_rank` for a pause, and
:func:`ensure_training_job` (start it again if it is gone or runs in another namespace) for a kill.
"""

from pathlib import Path
from typing import Any

from forge_slo.chaos.process.actions import kill_process, pause_process, resume_process
from forge_slo.chaos.training.probes import wait_for_training_healthy
from forge_slo.errors import RunnerError, UsageError

__all__ = [
    "ensure_training_job",
    "kill_rank",
    "pause_rank",
    "restart_training_job",
    "resume_rank",
    "start_training_job",
    "stop_training_job",
]


def _state(state_dir: str) -> Path:
    if not state_dir:
        raise UsageError("state_dir: the training job's state directory is required")
    return Path(state_dir)


def start_training_job(state_dir: str, nproc: int = 2, metrics_port: int = 29600, netns: str = "",
                       max_seconds: float = 900, tensor_elements: int = 262144, compute_seconds: float = 0.02,
                       ready_timeout_s: float = 90) -> dict[str, Any]:
    """Start the all-reduce job in the background (torchrun on loopback, ``nproc`` ranks, inside ``netns``
    when given; a job already started from this state directory is stopped first) and wait until every rank
    has measured its baseline."""
    from forge_slo.train import JobOptions, start_detached, stop_job

    state = _state(state_dir)
    stop_job(state)
    worker = ("--max-seconds", str(max_seconds), "--tensor-elements", str(int(tensor_elements)),
              "--compute-seconds", str(compute_seconds))
    info = start_detached(JobOptions(state, int(nproc), "127.0.0.1", int(metrics_port), netns or None, worker))
    seconds = wait_for_training_healthy(state_dir, timeout_s=ready_timeout_s)
    return {"pid": info.pid, "nproc": info.nproc, "netns": info.netns, "metrics": info.metrics_urls(),
            "ready_after_s": seconds}


def stop_training_job(state_dir: str) -> dict[str, Any]:
    """Stop the job and every rank; a job that is not running is not an error."""
    from forge_slo.train import stop_job

    return {"stopped": stop_job(_state(state_dir))}


def restart_training_job(state_dir: str, netns: str = "", ready_timeout_s: float = 90) -> dict[str, Any]:
    """Stop the job and start it again with the same arguments, inside ``netns`` (empty: the host's network),
    as a scheduler would after a failure; waits until it is healthy."""
    from forge_slo.train import read_job, start_detached, stop_job

    state = _state(state_dir)
    info = read_job(state)
    stop_job(state)
    started = start_detached(info.options(state, netns or None))
    seconds = wait_for_training_healthy(state_dir, timeout_s=ready_timeout_s)
    return {"pid": started.pid, "netns": started.netns, "ready_after_s": seconds}


def ensure_training_job(state_dir: str, netns: str = "", ready_timeout_s: float = 90) -> dict[str, Any]:
    """The rollback after a kill: start the job again unless it runs healthy in ``netns`` already."""
    from forge_slo.train import alive, read_job, watch

    info = read_job(_state(state_dir))
    if alive(info.pid) and (info.netns or "") == netns and watch(info.metrics_urls()).healthy:
        return {"restarted": False}
    return {"restarted": True, **restart_training_job(state_dir, netns, ready_timeout_s)}


def _rank_pid(state_dir: str, rank: int) -> int:
    from forge_slo.train import rank_pid

    if int(rank) < 0:
        raise UsageError(f"rank: {rank!r}; ranks count from 0")
    return rank_pid(_state(state_dir), int(rank))


def kill_rank(state_dir: str, rank: int, signal: str = "SIGKILL") -> dict[str, Any]:
    """Kill one rank's worker process (default SIGKILL, as an OOM kill or a node failure would)."""
    return {"rank": int(rank), **kill_process(pid=_rank_pid(state_dir, rank), signal=signal)}


def pause_rank(state_dir: str, rank: int, duration_s: float = 0) -> dict[str, Any]:
    """SIGSTOP one rank: its peers block in the next all-reduce (a hung collective). With ``duration_s`` the
    rank resumes after that long; else roll back with :func:`resume_rank`."""
    return {"rank": int(rank), **pause_process(pid=_rank_pid(state_dir, rank), duration_s=duration_s)}


def resume_rank(state_dir: str, rank: int) -> dict[str, Any]:
    """SIGCONT one rank (the rollback of :func:`pause_rank`); a rank that is gone is not an error."""
    try:
        pid = _rank_pid(state_dir, rank)
    except RunnerError:
        return {"rank": int(rank), "resumed": []}
    return {"rank": int(rank), **resume_process(pid=pid)}
