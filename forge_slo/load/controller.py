"""The controller of a load run, in Locust's master (or its only process): the plan of stages and its outputs.

It gives the workers the run's options (:class:`~forge_slo.load.messages.WorkerSetup`), then walks through
the stages its plan gives (:mod:`forge_slo.load.search`: a fixed list, or a capacity search told each
stage's verdict): sets the users of a stage through :class:`ForgeLoadShape` (Locust's load shape), tells every
sending process to run it (:class:`~forge_slo.load.messages.StageCommand`), stops it after ``--duration``
or ``--max-requests`` (a search: as soon as an SLO is clearly missed, or later while its verdict is unsure),
waits for the requests in flight, and judges it. Records arrive in
:class:`~forge_slo.load.messages.WorkerReport` messages (or straight from this process's users); at the end
it writes ``run.json``, ``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
from locust import LoadTestShape
from locust.env import Environment
from locust.runners import MasterRunner

from forge_slo.errors import ForgeError
from forge_slo.load.judge import SpecInfo, held_confidence, judge, longer_helps, stage_verdict
from forge_slo.load.messages import SETUP, STAGE, StageCommand, WorkerReport, WorkerSetup
from forge_slo.load.options import LoadOptions, Stage
from forge_slo.load.search import MISSED, NO_SPEC, StageResult, plan_for
from forge_slo.load.sender import SENDER, freeze_heap
from forge_slo.load.sink import RecordSink
from forge_slo.runtime.net import url_of

log = logging.getLogger("forge_slo.load")

STAGE_BROADCAST_S = 0.5   # the current stage (and the options, to a worker without them) is sent again so often
FLUSH_INTERVAL_S = 0.5
WORKER_WAIT_S = 60.0      # for every worker to take the run's options
SENT_RATE_WINDOW_S = 10.0  # the live display's sent/s covers about this much of the recent past
VERDICT_CHECK_S = 1.0     # a search looks at the running stage's verdict this often


class Controller:
    """Walks through the stages, collects the records and writes the outputs (master or local runner)."""

    def __init__(self, env: Environment, options: LoadOptions, spec: SpecInfo | None) -> None:
        self.env = env
        self.options = options
        self.spec = spec
        self.out = Path(options.out) if options.out else None
        metrics = None
        if options.metrics_port is not None:
            from forge_slo.load.metrics import LoadMetrics

            metrics = LoadMetrics()
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        self.sink = RecordSink(self.out / "records.jsonl" if self.out else None, metrics, keep=spec is not None,
                               criteria=spec.criteria if spec is not None and options.search is not None else ())
        self.distributed = isinstance(env.runner, MasterRunner)
        self.plan = plan_for(options)
        if options.search is not None:
            held_confidence(1, 1, 50)  # imports scipy now: importing it mid-stage would stall every stream
        self.first: Stage | None = None
        self.desired: tuple[int, float] | None = (0, 1.0)
        self.started = False
        self.done = False
        self.interrupted = False
        self.stopped_early: str | None = None
        self.started_at: float | None = None
        self.stages: list[dict[str, Any]] = []    # run.json's stages, as they happen
        self.current: dict[str, Any] | None = None
        self.command: StageCommand | None = None
        self.reports: dict[str, WorkerReport] = {}
        self.summary: dict[str, Any] | None = None
        self.finalized = False
        self.metrics_url: str | None = None
        self._server: Any = None
        self._greenlets: list[Any] = []
        self._sent_samples: collections.deque[tuple[float, int, int]] = collections.deque()
        self.on_finish: list[Callable[[], None]] = []
        if metrics is not None:
            self._serve_metrics(metrics)

    def _serve_metrics(self, metrics: Any) -> None:
        from gevent.pywsgi import WSGIServer  # type: ignore[import-untyped]
        from prometheus_client import make_wsgi_app

        opts = self.options
        server = WSGIServer((opts.metrics_host, opts.metrics_port or 0), make_wsgi_app(metrics.registry), log=None,
                            error_log=None)
        server.start()
        self._server = server
        self.metrics_url = url_of((opts.metrics_host, server.server_port)) + "/metrics"
        print(f"client metrics: {self.metrics_url}", flush=True)

    # -- the processes that send
    def procs(self) -> int:
        runner = self.env.runner
        if isinstance(runner, MasterRunner):
            return max(1, runner.worker_count)
        return 1

    def _send(self, kind: str, data: dict[str, Any]) -> None:
        runner = self.env.runner
        if isinstance(runner, MasterRunner):
            runner.send_message(kind, data)

    def _reports(self) -> list[WorkerReport]:
        if self.distributed:
            return list(self.reports.values())
        return [SENDER.report()]

    def _workers_configured(self) -> bool:
        return sum(1 for r in self.reports.values() if r.configured) >= self.procs()

    def on_worker_report(self, node_id: str, report: WorkerReport) -> None:
        if report.lines:
            try:
                self.sink.add_lines(report.lines, f"worker {node_id}")
            except ForgeError as exc:
                log.error("bad records from worker %s: %s", node_id, exc)
        self.reports[node_id] = report.without_lines()

    def _broadcast(self, command: StageCommand) -> None:
        self.command = command
        if self.distributed:
            self._send(STAGE, command.to_dict())
        else:
            SENDER.apply_stage(command)

    # -- the stages
    def start(self) -> None:
        """Start the run (from the load shape's first tick): options to the workers, then the first stage."""
        if self.started:
            return
        self.started = True
        freeze_heap()
        self.started_at = time.time()
        self._greenlets.append(gevent.spawn(self._housekeeping))
        if self.distributed:
            self._send(SETUP, WorkerSetup(self.options).to_dict())
            # Users are built with the options (timeouts, connection pool): none before a worker has them.
            if not self._wait(self._workers_configured, WORKER_WAIT_S) and not self.interrupted:
                configured = sum(1 for r in self.reports.values() if r.configured)
                log.warning("%d of %d workers took the run's options; starting anyway", configured, self.procs())
        first = self.first = self.plan.next_stage()
        if first is not None:
            self.desired = (self._users(first), self._spawn_rate(self._users(first)))
        self._greenlets.append(gevent.spawn(self._run))

    def _users(self, stage: Stage) -> int:
        return self.procs() if stage.mode == "rate" else int(stage.value)

    @staticmethod
    def _spawn_rate(users: float) -> float:
        # Locust starts floor(rate) users at once, once a second: all of them now. Each stream then waits
        # for its own slot of the stagger window (ProcStage.stagger) before its first request.
        return max(float(users), 1.0)

    def _wait(self, done: Callable[[], bool], limit_s: float) -> bool:
        deadline = time.perf_counter() + limit_s
        while not done():
            if self.interrupted or time.perf_counter() > deadline:
                return False
            gevent.sleep(0.05)
        return True

    def _run(self) -> None:
        try:
            stage, index = self.first, 0
            while stage is not None and not self.interrupted:
                result = self._run_stage(index, stage)
                if result is None:
                    break
                self.plan.record(result)
                index += 1
                stage = self.plan.next_stage()
        except gevent.GreenletExit:
            raise
        except Exception:
            log.exception("the stage controller failed")
            self.interrupted = True
        self.stopped_early = self.plan.stopped_early
        self.done = True
        self.desired = None

    def _run_stage(self, index: int, stage: Stage) -> StageResult | None:
        """Run one stage to its end, drain and judge it; None when the run ends here."""
        opts = self.options
        procs = self.procs()
        users = self._users(stage)
        if not self._await_users(stage, users):
            return None
        command = StageCommand(index=index, name=stage.name, mode=stage.mode, value=stage.value, run=True,
                               procs=procs, users=users, duration_s=opts.duration_s, warmup_s=opts.warmup_s,
                               rate_per_user=stage.value / users if stage.mode == "rate" else None,
                               max_requests=opts.max_requests)
        self.sink.start_stage(stage.name)
        meta = self._open_stage(stage, users)
        self._broadcast(command)
        meta["stopped_by"] = self._hold(index, procs)
        meta["ended_at"] = time.time()
        self._broadcast(command.stopped())
        if self.interrupted:
            return None
        self._drain(index, meta)
        self.current = None
        result = self._judge_stage(stage)
        meta["verdict"] = result.verdict
        return result

    def _judge_stage(self, stage: Stage) -> StageResult:
        """The stage's SLOs missed (point estimates) and, for a search, its verdict at the confidence asked."""
        if not self.spec:
            return StageResult(stage)
        records = [r for r in self.sink.stage_records() if not r.warmup]
        rows = judge(records, self.spec.criteria)
        missed = tuple(s["name"] for s in rows if s["judged"] and not s["met"])
        if self.options.search is None:
            return StageResult(stage, missed, NO_SPEC)
        verdict, confidence, _ = stage_verdict(rows)
        return StageResult(stage, missed, verdict, confidence)

    def _await_users(self, stage: Stage, users: int) -> bool:
        """Ask Locust for the stage's users and wait until they run; False when interrupted meanwhile."""
        runner = self.env.runner
        assert runner is not None
        self.desired = (users, self._spawn_rate(users))
        if not self._wait(lambda: runner.user_count == users, 30.0 + users / 50.0):
            if self.interrupted:
                return False
            log.warning("stage %s: %d of %d users running; starting anyway", stage.name, runner.user_count, users)
        return True

    def _open_stage(self, stage: Stage, users: int) -> dict[str, Any]:
        now = time.time()
        meta: dict[str, Any] = {"name": stage.name, "mode": stage.mode, "value": stage.value, "users": users,
                                "started_at": now, "measure_from": now + self.options.warmup_s, "ended_at": None,
                                "stopped_by": None}
        self.current = meta
        self.stages.append(meta)
        return meta

    def _hold(self, index: int, procs: int) -> str:
        """Let the stage run until ``--duration``, its ``--max-requests`` or an interrupt, which one ended it; a
        search also ends a stage as soon as an SLO is missed with the confidence asked, and sends on (up to
        ``--max-stage-duration``) while its verdict is not that sure and sending longer could make it so."""
        opts = self.options
        started = time.perf_counter()
        deadline = started + opts.duration_s
        search = opts.search
        hard = started + (search.max_stage_s if search is not None else opts.duration_s)
        next_check, checked_at_end = started + opts.warmup_s + VERDICT_CHECK_S, False
        while True:
            if self.interrupted:
                return "interrupt"
            now = time.perf_counter()
            if opts.max_requests and self._quota_done(index, procs):
                return "max_requests"
            if search is not None and (now >= next_check or (now >= deadline and not checked_at_end)):
                next_check, checked_at_end = now + VERDICT_CHECK_S, now >= deadline
                rows = self.sink.live.judge.rows()
                verdict, confidence, _ = stage_verdict(rows, final=False)
                if verdict == MISSED and confidence >= search.confidence:
                    return "clear_failure"
                factor = (hard - started) / max(now - started - opts.warmup_s, 0.1)
                if now >= deadline and (confidence >= search.confidence
                                        or not longer_helps(rows, factor, search.confidence)):
                    return "duration"
            if now >= hard:
                return "duration" if search is None else "max_stage_duration"
            gevent.sleep(0.05 if search is not None else min(0.05, max(deadline - now, 0.001)))

    def _drain(self, index: int, meta: dict[str, Any]) -> None:
        """Wait (up to ``--timeout``) for the stage's requests in flight, then count the stage."""
        drained = self._wait(lambda: self._drained(index), self.options.timeout_s + 5.0)
        self._stage_counts(meta, index)
        meta["drained_at"] = time.time()
        if not drained and not self.interrupted:
            log.warning("stage %s: %d requests still running after the timeout", meta["name"], meta["cancelled"])

    def _quota_done(self, index: int, procs: int) -> bool:
        reports = [r for r in self._reports() if r.index == index]
        return len(reports) >= procs and all(r.quota_done for r in reports)

    def _drained(self, index: int) -> bool:
        reports = self._reports()
        return bool(reports) and all(r.index != index or (not r.run and r.in_flight == 0) for r in reports)

    def _stage_counts(self, meta: dict[str, Any], index: int) -> None:
        reports = [r for r in self._reports() if r.index == index]
        meta["sent"] = sum(r.sent for r in reports)
        meta["dropped"] = sum(r.dropped for r in reports)
        meta["cancelled"] = sum(r.in_flight for r in reports)
        meta["max_schedule_lag_s"] = max((r.max_lag_s for r in reports), default=0.0)

    def _housekeeping(self) -> None:
        last_broadcast = 0.0
        while not self.finalized:
            gevent.sleep(min(FLUSH_INTERVAL_S, STAGE_BROADCAST_S))
            self.sink.flush()
            now = time.perf_counter()
            if self.distributed and now - last_broadcast >= STAGE_BROADCAST_S:
                last_broadcast = now
                if not self._workers_configured():  # a late worker, or one that missed the first setup
                    self._send(SETUP, WorkerSetup(self.options).to_dict())
                if self.command is not None:
                    self._send(STAGE, self.command.to_dict())  # late workers join the stage
            if self.sink.metrics is not None:
                self.sink.metrics.set_in_flight(self.options.model, self.in_flight())

    def in_flight(self) -> int:
        return sum(r.in_flight for r in self._reports())

    def live(self) -> dict[str, Any]:
        """Figures of the current stage for the progress display: which stage of how many, time left."""
        view = self.sink.live_view()
        view["in_flight"] = self.in_flight()
        view["sent_per_s"] = self._sent_rate()
        planned = self.plan.planned()
        view["stage_number"] = len(self.stages)
        view["stages_total"] = len(planned) if planned is not None else None
        view["stage_left_s"] = None
        view["run_left_s"] = None
        meta = self.current
        if meta is not None:
            left = max(0.0, float(meta["started_at"]) + self.options.duration_s - time.time())
            view["stage_left_s"] = left
            view["stage_sending"] = meta.get("ended_at") is None
            if planned is not None:
                view["run_left_s"] = left + max(0, len(planned) - len(self.stages)) * self.options.duration_s
        return view

    def _sent_rate(self) -> float:
        """Requests sent per second in the current stage over the last few seconds (the offered load)."""
        meta, index = self.current, len(self.stages) - 1
        if meta is None:
            return 0.0
        now = time.time()
        sent = sum(r.sent for r in self._reports() if r.index == index)
        samples = self._sent_samples
        while samples and (samples[0][1] != index or now - samples[0][0] > SENT_RATE_WINDOW_S):
            samples.popleft()
        since, before = (samples[0][0], samples[0][2]) if samples else (float(meta["started_at"]), 0)
        samples.append((now, index, sent))
        return (sent - before) / (now - since) if now > since else 0.0

    # -- the end
    def interrupt(self) -> None:
        self.interrupted = True

    def run_meta(self) -> dict[str, Any]:
        opts = self.options
        return {
            "version": 1,
            "target": opts.target,
            "endpoint": opts.endpoint,
            "model": opts.model,
            "api": opts.api,
            "workers": self.procs() if self.distributed else 0,
            "started_at": self.started_at,
            "finished_at": time.time(),
            "interrupted": self.interrupted,
            "stopped_early": self.stopped_early,
            "stages_planned": [s.name for s in (self.plan.planned() or ())],
            "stages": self.stages,
            "search": self._search_meta(),
            "metrics_url": self.metrics_url,
            "workload": {
                "arrival": opts.arrival, "burstiness": opts.burstiness, "duration_s": opts.duration_s,
                "warmup_s": opts.warmup_s, "max_requests": opts.max_requests,
                "prompt_tokens": opts.prompt_tokens.describe(), "output_tokens": opts.output_tokens.describe(),
                "dataset": opts.dataset_path, "ignore_eos": opts.ignore_eos, "timeout_s": opts.timeout_s,
                "models": [f"{name}={weight:g}" for name, weight in opts.models] or None,
                "turns": opts.turns.describe() if opts.turns is not None else None,
                "prefix_share": opts.prefix_share or None,
                "prefix_groups": opts.prefix_groups if opts.prefix_share else None,
                "tokenizer": opts.tokenizer_path,
                "max_in_flight": opts.max_in_flight, "seed": opts.seed,
                "max_line_bytes": opts.max_line_bytes, "max_response_bytes": opts.max_response_bytes,
            },
        }

    def _search_meta(self) -> dict[str, Any] | None:
        search = self.options.search
        if search is None:
            return None
        ended = getattr(self.plan, "reason", "") or ("interrupted" if self.interrupted else "")
        return {**search.to_dict(), "ended": ended}

    def finalize(self, interrupted: bool = False) -> dict[str, Any] | None:
        """Close the records and write run.json, summary.json and report.html (once)."""
        if self.finalized:
            return self.summary
        self.finalized = True
        if interrupted or not self.done:
            self.interrupted = True
        meta = self.current
        if meta is not None and meta.get("ended_at") is None:
            meta["ended_at"] = time.time()
            meta["stopped_by"] = "interrupt"
        if meta is not None:
            self._stage_counts(meta, len(self.stages) - 1)
        for greenlet in self._greenlets:
            if greenlet is not gevent.getcurrent():
                greenlet.kill(block=False)
        if not self.distributed:
            SENDER.group.kill(block=False)
        self.sink.close()
        if self._server is not None:
            self._server.stop(timeout=1)
        try:
            self._write_outputs()
        finally:  # whatever happened, the run is over: the engine must not wait for it
            for callback in self.on_finish:
                callback()
        return self.summary

    def _write_outputs(self) -> None:
        if self.out is None:
            return
        from forge_slo.load.outputs import write_outputs

        try:
            self.summary = write_outputs(self.out, self.run_meta(), self.spec)
        except ForgeError as exc:  # e.g. a records file this run cannot read back: no summary, exit code 1
            log.error("cannot write the summary and report: %s", exc)


class _Current:
    """The controller of this process, once the options are known (None in a worker)."""

    controller: Controller | None = None


CONTROL = _Current()


def setup_controller(env: Environment, options: LoadOptions, spec: SpecInfo | None) -> Controller:
    """The controller of a run (master or local); in one process, its users send from here too."""
    distributed = isinstance(env.runner, MasterRunner)
    if not distributed:
        SENDER.configure(options, 0)  # first: a dataset that cannot be read stops the run before it starts
    ctl = Controller(env, options, spec)
    CONTROL.controller = ctl
    if not distributed:
        SENDER.sink = ctl.sink
    return ctl


class ForgeLoadShape(LoadTestShape):
    """Locust's load shape for forge-slo's stages (``--rate``, ``--concurrency``, ``--sweep``)."""

    def tick(self) -> tuple[int, float] | None:
        ctl = CONTROL.controller
        if ctl is None:
            return None
        if not ctl.started:
            ctl.start()
        return ctl.desired
