"""What each process that runs users holds: the run's options, the current stage, the requests in flight,
and where finished records go (the controller's sink in one process; an outbox shipped to the master from a
worker). One :data:`SENDER` per process, shared by its users.
"""

from __future__ import annotations

import gc
import random
import time
from typing import Any

import gevent  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
import gevent.pool  # type: ignore[import-untyped]

from forge_slo.load.messages import StageCommand, WorkerReport
from forge_slo.load.options import LoadOptions
from forge_slo.load.requests import RequestFactory, Workload, load_tokenizer
from forge_slo.load.sink import RecordSink
from forge_slo.load.stream import record_json
from forge_slo.load.workload import load_dataset
from forge_slo.sources.records import RequestRecord

STAGGER_MAX_S = 1.0      # closed-loop streams start evenly spread over this (or 5% of a stage)


class ProcStage:
    """A stage as one process sees it."""

    def __init__(self, command: StageCommand, worker_index: int) -> None:
        now = time.perf_counter()
        self.index = command.index
        self.name = command.name
        self.mode = command.mode
        self.value = command.value
        self.procs = max(1, command.procs)
        self.rate_per_user = command.rate_per_user or 0.0
        self.started = now
        self.warmup_until = now + command.warmup_s
        self.quota: int | None = None
        if command.max_requests:
            share, extra = divmod(command.max_requests, self.procs)
            self.quota = share + (1 if worker_index % self.procs < extra else 0)
        self.running = False
        self.sent = 0
        self.dropped = 0
        self.max_lag = 0.0
        self.quota_done = self.quota == 0
        # Closed loop: streams started together stay in step against a server with steady timing, and
        # their bursts would measure the client instead of the server; so each process's k-th stream
        # starts at an even slot of a short window, interleaved with the other processes' streams.
        self.users = max(1, command.users)
        self.stagger = min(STAGGER_MAX_S, 0.05 * (command.duration_s or 20.0))
        self.worker_index = worker_index
        self.slots = 0

    def next_start(self) -> float:
        """When this process's next new stream should send its first request (perf_counter)."""
        slot = (self.slots * self.procs + self.worker_index % self.procs) % self.users
        self.slots += 1
        return self.started + self.stagger * slot / self.users


class Sender:
    """The sending side of one process (local, or a Locust worker)."""

    def __init__(self) -> None:
        self.options: LoadOptions | None = None
        self.factory: RequestFactory | None = None
        self.rng = random.Random(0)
        self.stage: ProcStage | None = None
        self.running = gevent.event.Event()
        self.in_flight = 0
        self.group = gevent.pool.Group()
        self.outbox: list[str] = []
        self.sink: RecordSink | None = None
        self.worker_index = 0
        self.extra: dict[str, Any] = {}
        self.report_greenlet: Any = None

    def configure(self, options: LoadOptions, worker_index: int, distributed: bool = False) -> None:
        """Take the run's options (reading ``--dataset`` and ``--tokenizer`` here, where requests are built);
        UsageError."""
        seed = options.seed * 1_000_003 + worker_index
        dataset = load_dataset(options.dataset_path, options.api) if options.dataset_path else None
        workload = Workload(options.api, options.model_mix, options.prompt_tokens, options.output_tokens,
                            options.ignore_eos, dataset, options.turns, options.prefix_share, options.prefix_groups,
                            options.seed)
        self.factory = RequestFactory(workload, random.Random(seed + 1), tokenizer=load_tokenizer(
            options.tokenizer_path), process=worker_index)
        self.rng = random.Random(seed)
        self.worker_index = worker_index
        self.extra = {"worker": worker_index} if distributed else {}
        self.options = options

    def apply_stage(self, command: StageCommand) -> None:
        st = self.stage
        if st is None or st.index != command.index:
            st = ProcStage(command, self.worker_index)
            self.stage = st
        st.running = command.run
        if st.running:
            self.running.set()
        else:
            self.running.clear()

    def take(self, st: ProcStage) -> bool:
        """Count one request against the stage's quota; False once the quota is used up."""
        if st.quota is not None and st.sent >= st.quota:
            st.quota_done = True
            return False
        st.sent += 1
        if st.quota is not None and st.sent >= st.quota:
            st.quota_done = True
        return True

    def wait_stage_change(self, st: ProcStage) -> None:
        while self.stage is st and st.running:
            gevent.sleep(0.05)

    def emit(self, record: RequestRecord) -> None:
        if self.sink is not None:
            self.sink.add(record)
        else:
            self.outbox.append(record_json(record))

    def report(self, with_lines: bool = False) -> WorkerReport:
        """This process's counters; with ``with_lines``, also the records finished since the last one."""
        lines: tuple[str, ...] = ()
        if with_lines:
            lines, self.outbox = tuple(self.outbox), []
        configured = self.options is not None
        st = self.stage
        if st is None:
            return WorkerReport(in_flight=self.in_flight, configured=configured, lines=lines)
        return WorkerReport(index=st.index, run=st.running, in_flight=self.in_flight, sent=st.sent,
                            dropped=st.dropped, max_lag_s=st.max_lag, quota_done=st.quota_done,
                            configured=configured, lines=lines)


SENDER = Sender()
_frozen: list[bool] = []


def freeze_heap() -> None:
    """Move everything allocated so far (Locust, Flask, numpy... some 200,000 objects) out of the garbage
    collector's sight, once per process: a full collection would walk them all and stall every stream for
    tens of ms."""
    if _frozen:
        return
    _frozen.append(True)
    gc.collect()
    gc.freeze()
