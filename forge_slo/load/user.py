"""The Locust side of ``forge-slo load``: the OpenAI streaming user, the stage controller and the listeners.

Importing this module imports Locust, which monkey-patches the standard library with gevent: import it only
in a process that runs Locust (the engine of ``forge-slo load``, or ``locust -f``), never from
``import forge_slo`` or a test process.

Roles, as Locust names them:

- every process that runs users (local, or each worker) keeps one :class:`_Proc`: the current stage, the
  requests in flight, and where finished records go;
- the master (or the only process) runs the :class:`Controller`: it walks through the stages, tells the
  workers (a ``forge_stage`` message) and collects their records (``forge_records`` messages every 0.2 s),
  writes ``records.jsonl``, serves ``/metrics`` and, at the end, ``run.json``, ``summary.json`` and
  ``report.html``.

With plain Locust the same flags work (``locust -f <locustfile> --headless -H URL --model M --rate 5
--duration 60s --out DIR``, and ``--master``/``--worker`` across machines): :class:`ForgeLoadShape` is the
load shape Locust picks up from the locustfile, and it hands the stages to the controller.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
import gevent.pool  # type: ignore[import-untyped]
import gevent.socket  # type: ignore[import-untyped]
from gevent import monkey
from geventhttpclient.connectionpool import ConnectionPool
from geventhttpclient.response import HTTPParseError, HTTPResponse
from locust import FastHttpUser, LoadTestShape, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from forge_slo.errors import ForgeError, SpecErrors
from forge_slo.load.body import LineReader, supports
from forge_slo.load.judge import SpecInfo, criteria_from_spec, judge, select_spec
from forge_slo.load.lifeline import die_with_parent, lifeline_from_env, watch
from forge_slo.load.options import LoadOptions, add_load_arguments, options_from_namespace
from forge_slo.load.sink import RecordSink
from forge_slo.load.stream import StreamError, StreamMeter, error_message, record_json
from forge_slo.load.workload import Arrivals, RequestFactory
from forge_slo.sources.records import RequestRecord

log = logging.getLogger("forge_slo.load")


class _QuietSpawnRate(logging.Filter):
    """Locust warns about spawn rates over 100/s; forge-slo starts closed-loop streams at once on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "spawn rate is very high" not in record.getMessage()


logging.getLogger("locust.runners").addFilter(_QuietSpawnRate())

_select_without_yield: Any = monkey.get_original("select", "select")


def _socket_alive(self: ConnectionPool, sock: Any) -> bool:
    """geventhttpclient's liveness check of a pooled socket, without yielding to the gevent hub.

    The original asks gevent's ``select`` with a zero timeout, which switches to the hub: every other
    stream's pending events run before this request is even written, and that wait lands in its TTFT
    (measured here: +2 ms TTFT p50 at 100 streams, +20 ms at 500). A zero-timeout ``select`` system call
    answers the same question at once.
    """
    if sock is None:
        return False
    try:
        if sock.fileno() < 0:
            return False
        readable, _, _ = _select_without_yield([sock.fileno()], [], [], 0.0)
        return not readable
    except (OSError, ValueError):
        return False


if hasattr(ConnectionPool, "_is_socket_alive"):
    ConnectionPool._is_socket_alive = _socket_alive  # type: ignore[method-assign]

MAX_HEADER_BYTES = 2**20


class HeadersTooLong(HTTPParseError):
    """An answer's headers went past MAX_HEADER_BYTES."""


def _cap_headers(original: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    """geventhttpclient keeps every header however many arrive; a server that sends them without end (and
    never lets the socket wait, so the --timeout timer never runs) would hold the request forever."""
    def on_header_part(self: Any, string: str) -> None:
        seen = getattr(self, "_forge_header_bytes", 0) + len(string)
        self._forge_header_bytes = seen
        if seen > MAX_HEADER_BYTES:
            raise HeadersTooLong(f"the answer's headers are longer than {MAX_HEADER_BYTES // 2**20}MiB")
        original(self, string)
    return on_header_part


for _name in ("_on_header_field", "_on_header_value"):
    if hasattr(HTTPResponse, _name):
        setattr(HTTPResponse, _name, _cap_headers(getattr(HTTPResponse, _name)))

REPORT_INTERVAL_S = 0.2
STAGE_BROADCAST_S = 0.5
FLUSH_INTERVAL_S = 0.5
WORKER_WAIT_S = 60.0
_ALL_STATUSES = frozenset(range(100, 600))
ERROR_BODY_BYTES = 65536  # read of an answer that is not an event stream, for its message
STAGGER_MAX_S = 1.0      # closed-loop streams start evenly spread over this (or 5% of a stage)


class LLMRequestError(Exception):
    """What Locust's failure table shows for a failed request: the error kind (and HTTP status)."""


class _RequestTimeout(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------
# Per process: the current stage and the requests in flight.


class ProcStage:
    """A stage as one process sees it."""

    def __init__(self, data: dict[str, Any], worker_index: int) -> None:
        now = time.perf_counter()
        self.index: int = data["index"]
        self.name: str = data["name"]
        self.mode: str = data["mode"]
        self.value: float = data["value"]
        self.procs: int = max(1, int(data["procs"]))
        self.rate_per_user: float = float(data.get("rate_per_user") or 0.0)
        self.started = now
        self.warmup_until = now + float(data.get("warmup_s") or 0.0)
        total = data.get("max_requests")
        self.quota: int | None = None
        if total:
            share, extra = divmod(int(total), self.procs)
            self.quota = share + (1 if worker_index % self.procs < extra else 0)
        self.running = False
        self.sent = 0
        self.dropped = 0
        self.max_lag = 0.0
        self.quota_done = self.quota == 0
        # Closed loop: streams started together stay in step against a server with steady timing, and
        # their bursts would measure the client instead of the server; so each process's k-th stream
        # starts at an even slot of a short window, interleaved with the other processes' streams.
        self.users = max(1, int(data.get("users") or 1))
        self.stagger = min(STAGGER_MAX_S, 0.05 * float(data.get("duration_s") or 20.0))
        self.worker_index = worker_index
        self.slots = 0

    def next_start(self) -> float:
        """When this process's next new stream should send its first request (perf_counter)."""
        slot = (self.slots * self.procs + self.worker_index % self.procs) % self.users
        self.slots += 1
        return self.started + self.stagger * slot / self.users


class _Proc:
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
        self.options = options
        self.worker_index = worker_index
        self.extra = {"worker": worker_index} if distributed else {}
        seed = options.seed * 1_000_003 + worker_index
        self.rng = random.Random(seed)
        self.factory = RequestFactory(options.model, options.api, options.prompt_tokens, options.output_tokens,
                                      options.dataset, options.ignore_eos, random.Random(seed + 1))
        # No per-read socket timeout (gevent would arm a timer for every read): each request has one timer
        # for its whole answer instead (--timeout), and connecting has its own.
        OpenAIUser.network_timeout = None  # type: ignore[assignment]
        OpenAIUser.connection_timeout = min(options.timeout_s, 30.0)
        # An open-loop user runs many requests at once on its own connection pool.
        OpenAIUser.concurrency = max(options.max_in_flight, 10)

    def apply_stage(self, data: dict[str, Any]) -> None:
        st = self.stage
        if st is None or st.index != data["index"]:
            st = ProcStage(data, self.worker_index)
            self.stage = st
        st.running = bool(data["run"])
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

    def emit(self, record: RequestRecord) -> None:
        if self.sink is not None:
            self.sink.add(record)
        else:
            self.outbox.append(record_json(record))

    def report(self) -> dict[str, Any]:
        st = self.stage
        return {"index": st.index if st else -1, "run": st.running if st else False,
                "in_flight": self.in_flight, "sent": st.sent if st else 0, "dropped": st.dropped if st else 0,
                "max_lag": st.max_lag if st else 0.0, "quota_done": st.quota_done if st else False}


PROC = _Proc()


# ---------------------------------------------------------------------------------------------------------
# The user.


def classify(exc: BaseException, got_headers: bool) -> tuple[str, str]:
    """The record error kind and a message for an exception raised while talking to the server."""
    if isinstance(exc, TimeoutError | socket.timeout | gevent.Timeout | _RequestTimeout):
        return "timeout", f"timed out ({exc or 'no data'})"
    if isinstance(exc, HeadersTooLong):
        return "malformed", str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection", "connection refused"
    if isinstance(exc, socket.gaierror):
        return "connection", f"cannot resolve the host: {exc}"
    if isinstance(exc, HTTPParseError | OSError):
        kind = "stream_cut" if got_headers else "connection"
        return kind, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, UnicodeDecodeError | ValueError) and got_headers:
        return "malformed", f"{type(exc).__name__}: {exc}"
    return "other", f"{type(exc).__name__}: {exc}"


def new_traceparent() -> tuple[str, str]:
    """A W3C trace context header for a new sampled trace: (trace id, header value).

    From the OS's random source, not the seeded one: two runs with the same --seed must not share traces.
    """
    raw = os.urandom(24)
    trace_id, span_id = raw[:16].hex(), raw[16:].hex()
    if not raw[:16].strip(b"\0"):  # all zeros is an invalid id (chance 2**-128)
        trace_id = "0" * 31 + "1"
    if not raw[16:].strip(b"\0"):
        span_id = "0" * 15 + "1"
    return trace_id, f"00-{trace_id}-{span_id}-01"


class OpenAIUser(FastHttpUser):
    """Streams chat or text completions from an OpenAI-compatible server and records every request.

    Closed loop (``--concurrency`` or Locust's ``-u``): each user sends one request after another. Open loop
    (``--rate``): one user per process sends on a schedule of arrivals and never waits for answers, up to
    ``--max-in-flight`` requests. The body is read line by line (``response.stream.readline``) so each event
    is timestamped when its bytes arrive: reading fixed-size blocks (``iter_content``) would wait for a full
    block and batch several tokens.
    """

    wait_time = constant(0)
    network_timeout = 120.0
    connection_timeout = 30.0
    concurrency = 10

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self._stage: ProcStage | None = None
        # Take every status as an answer, so an error's body can be read for its message (geventhttpclient
        # closes the connection of a status it considers invalid before the body can be read).
        self.client.client.valid_response_codes = _ALL_STATUSES  # type: ignore[misc]

    @task
    def generate(self) -> None:
        proc = PROC
        if not proc.running.wait(timeout=1.0):
            return
        st = proc.stage
        if st is None or not st.running or proc.options is None:
            gevent.sleep(0.05)
            return
        if st.mode == "rate":
            self._arrivals(st)
            _wait_stage_change(st)
            return
        if self._stage is not st:
            self._stage = st
            delay = st.next_start() - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            if proc.stage is not st or not st.running:
                return
        if not proc.take(st):
            _wait_stage_change(st)
            return
        self._send(st)

    def _arrivals(self, st: ProcStage) -> None:
        proc = PROC
        opts = proc.options
        assert opts is not None
        arrivals = Arrivals(opts.arrival, st.rate_per_user, opts.burstiness, proc.rng)
        t = time.perf_counter()
        if opts.arrival == "constant" and st.procs > 1:
            t += (proc.worker_index % st.procs) / st.value  # interleave the workers' even schedules
        first = True
        while proc.stage is st and st.running:
            if not first:
                t += arrivals.interval()
            first = False
            while True:
                delay = t - time.perf_counter()
                if delay <= 0:
                    break
                gevent.sleep(min(delay, 0.2))
                if proc.stage is not st or not st.running:
                    return
            lag = -delay
            if lag > st.max_lag:
                st.max_lag = lag
            if not proc.take(st):
                return
            if proc.in_flight >= opts.max_in_flight:
                st.dropped += 1
                continue
            proc.group.spawn(self._send, st)

    def _send(self, st: ProcStage) -> None:
        proc = PROC
        proc.in_flight += 1
        try:
            warmup = time.perf_counter() < st.warmup_until
            start_wall = time.time()
            try:
                record = self.request_once(st.name, warmup)
            except Exception as exc:  # a bug of ours must not lose a request that was sent and counted
                log.error("measuring a request failed: %s: %s", type(exc).__name__, exc)
                record = _client_failure(exc, start_wall, st.name, warmup, None)
            proc.emit(record)
        finally:
            proc.in_flight -= 1

    def request_once(self, stage: str, warmup: bool) -> RequestRecord:
        """Send one streaming request and measure it; never raises for a failed request."""
        proc = PROC
        opts = proc.options
        assert opts is not None and proc.factory is not None
        plan = proc.factory.next()
        trace_id, traceparent = new_traceparent()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                   "Accept-Encoding": "identity", "traceparent": traceparent}
        if opts.api_key:
            headers["Authorization"] = f"Bearer {opts.api_key}"
        start_wall = time.time()
        t0 = time.perf_counter()
        meter = StreamMeter(t0, plan.max_tokens)
        got_headers = False
        stream: Any = None
        # Two guards of --timeout: the timer ends a request that waits on the socket; LineReader checks the
        # deadline itself between blocks, since a socket that always has data never lets the timer run.
        timer = gevent.Timeout(opts.timeout_s, _RequestTimeout(f"no full answer within {opts.timeout_s:g}s"))
        timer.start()
        try:
            resp = self.client.request("POST", opts.url, data=plan.body,  # type: ignore[arg-type]
                                       headers=headers, stream=True,
                                       catch_response=True, name="e2e")
            status = resp.status_code
            if not status:
                raise getattr(resp, "error", None) or ConnectionError("no response")
            got_headers = True
            meter.status = status
            stream = resp.stream
            if status != 200:
                body = stream.read(ERROR_BODY_BYTES)
                meter.fail("http", error_message(body, status), time.perf_counter())
            else:
                ctype = str(resp.headers.get("content-type") or "") if resp.headers is not None else ""
                if ctype and not ctype.startswith("text/event-stream"):
                    body = stream.read(ERROR_BODY_BYTES)
                    meter.fail("malformed", f"expected an event stream, got {ctype}: "
                                            f"{body[:80].decode('utf-8', 'replace')}", time.perf_counter())
                else:
                    self._read_events(_line_reader(stream, t0, opts), meter)
        except StreamError as exc:
            meter.fail(exc.kind, exc.message, time.perf_counter())
        except _RequestTimeout as exc:
            meter.fail("timeout", str(exc), time.perf_counter())
        except Exception as exc:  # every failure becomes a record; a user never dies
            kind, message = classify(exc, got_headers)
            if kind == "stream_cut":
                message = f"the stream was cut after {len(meter.token_times)} content events ({message})"
            meter.fail(kind, message, time.perf_counter())
        finally:
            timer.close()
            if stream is not None:
                with contextlib.suppress(Exception):  # closing a broken socket may fail; nothing to do
                    stream.release()
        try:
            record = meter.record(start_time=start_wall, model=opts.model, stage=stage, warmup=warmup,
                                  trace_id=trace_id, extra=proc.extra)
        except Exception as exc:  # whatever the server sent, the request is a record
            record = _client_failure(exc, start_wall, stage, warmup, meter)
        self._report_to_locust(record, start_wall, meter.bytes, opts)
        return record

    @staticmethod
    def _read_events(reader: LineReader, meter: StreamMeter) -> None:
        readline = reader.readline
        feed = meter.feed
        clock = time.perf_counter
        while True:
            line = readline()
            now = clock()
            if not line:
                meter.end_without_done(now)
                return
            if feed(line, now):
                break
        # [DONE] seen, the answer is complete. Reading the rest of the body only lets the connection be
        # reused; if that fails or goes on, release() closes it instead, so no error here is the request's.
        with contextlib.suppress(Exception):
            for _ in range(16):
                if reader.complete or not readline():
                    return

    def _report_to_locust(self, record: RequestRecord, start_wall: float, size: int, opts: LoadOptions) -> None:
        fire = self.environment.events.request.fire
        exc: Exception | None = None
        if not record.ok:
            kind = record.error_kind or "other"
            exc = LLMRequestError(f"{kind} {record.status}" if kind == "http" else kind)
        fire(request_type=opts.api, name="e2e", response_time=(record.e2e_s or 0.0) * 1000.0,
             response_length=size, exception=exc, context={}, start_time=start_wall, url=opts.url, response=None)
        if record.ttft_s is not None:
            fire(request_type=opts.api, name="ttft", response_time=record.ttft_s * 1000.0, response_length=0,
                 exception=None, context={}, start_time=start_wall, url=opts.url, response=None)


def _wait_stage_change(st: ProcStage) -> None:
    while PROC.stage is st and st.running:
        gevent.sleep(0.05)


def _line_reader(stream: Any, t0: float, opts: LoadOptions) -> LineReader:
    if not supports(stream):
        raise StreamError("other", f"cannot read answers line by line with this geventhttpclient "
                                   f"({type(stream).__name__} lacks what forge_slo.load.body needs)")
    return LineReader(stream, deadline=t0 + opts.timeout_s, timeout_s=opts.timeout_s,
                      max_line=opts.max_line_bytes, max_body=opts.max_response_bytes, pause=gevent.sleep)


def _client_failure(exc: BaseException, start_wall: float, stage: str, warmup: bool,
                    meter: StreamMeter | None) -> RequestRecord:
    """The record of a request whose answer broke the client itself: a failure, never a lost request."""
    opts = PROC.options
    end = time.perf_counter()
    return RequestRecord(start_time=start_wall, model=opts.model if opts else "", ok=False,
                         status=meter.status if meter else None, error_kind="other",
                         error=f"the client could not measure this answer: {type(exc).__name__}: {exc}"[:300],
                         e2e_s=end - meter.t_sent if meter else None, stage=stage, warmup=warmup,
                         tokens_from="stream", extra=PROC.extra)


# ---------------------------------------------------------------------------------------------------------
# The master (or the only process): stages, records, outputs.


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
        self.sink = RecordSink(self.out / "records.jsonl" if self.out else None, metrics,
                               keep=spec is not None and options.stop_on_fail and len(options.stages) > 1)
        self.distributed = isinstance(env.runner, MasterRunner)
        self.desired: tuple[int, float] | None = (0, 1.0)
        self.started = False
        self.done = False
        self.interrupted = False
        self.stopped_early: str | None = None
        self.started_at: float | None = None
        self.stages: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self.stage_data: dict[str, Any] | None = None
        self.reports: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] | None = None
        self.finalized = False
        self.metrics_url: str | None = None
        self._server: Any = None
        self._greenlets: list[Any] = []
        self.on_finish: list[Callable[[], None]] = []
        if metrics is not None:
            self._serve_metrics(metrics)

    # -- metrics endpoint
    def _serve_metrics(self, metrics: Any) -> None:
        from gevent.pywsgi import WSGIServer  # type: ignore[import-untyped]
        from prometheus_client import make_wsgi_app

        opts = self.options
        server = WSGIServer((opts.metrics_host, opts.metrics_port or 0), make_wsgi_app(metrics.registry), log=None,
                            error_log=None)
        server.start()
        self._server = server
        host = opts.metrics_host if ":" not in opts.metrics_host else f"[{opts.metrics_host}]"
        self.metrics_url = f"http://{host}:{server.server_port}/metrics"
        print(f"client metrics: {self.metrics_url}", flush=True)

    # -- stages
    def procs(self) -> int:
        runner = self.env.runner
        if isinstance(runner, MasterRunner):
            return max(1, runner.worker_count)
        return 1

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        _freeze_heap()
        self.started_at = time.time()
        first = self.options.stages[0]
        self.desired = (self.procs() if first.mode == "rate" else int(first.value), self._spawn_rate(first.value))
        self._greenlets.append(gevent.spawn(self._run))
        self._greenlets.append(gevent.spawn(self._housekeeping))

    @staticmethod
    def _spawn_rate(users: float) -> float:
        # Locust starts floor(rate) users at once, once a second: all of them now. Each stream then waits
        # for its own slot of the stagger window (ProcStage.stagger) before its first request.
        return max(float(users), 1.0)

    def _broadcast(self, data: dict[str, Any]) -> None:
        self.stage_data = data
        runner = self.env.runner
        if isinstance(runner, MasterRunner):
            runner.send_message("forge_stage", data)
        else:
            PROC.apply_stage(data)

    def _reports(self) -> list[dict[str, Any]]:
        if self.distributed:
            return list(self.reports.values())
        return [PROC.report()]

    def _wait(self, done: Callable[[], bool], limit_s: float) -> bool:
        deadline = time.perf_counter() + limit_s
        while not done():
            if self.interrupted or time.perf_counter() > deadline:
                return False
            gevent.sleep(0.05)
        return True

    def _run(self) -> None:
        opts = self.options
        runner = self.env.runner
        assert runner is not None
        try:
            for index, stage in enumerate(opts.stages):
                if self.interrupted:
                    break
                procs = self.procs()
                users = procs if stage.mode == "rate" else int(stage.value)
                self.desired = (users, self._spawn_rate(users))
                if not self._wait(lambda u=users: runner.user_count == u, 30.0 + users / 50.0):  # type: ignore[misc]
                    if self.interrupted:
                        break
                    log.warning("stage %s: %d of %d users running; starting anyway", stage.name,
                                runner.user_count, users)
                data = {"index": index, "name": stage.name, "mode": stage.mode, "value": stage.value, "run": True,
                        "procs": procs, "users": users, "duration_s": opts.duration_s,
                        "rate_per_user": stage.value / users if stage.mode == "rate" else None,
                        "max_requests": opts.max_requests, "warmup_s": opts.warmup_s}
                self.sink.start_stage(stage.name)
                now = time.time()
                meta: dict[str, Any] = {"name": stage.name, "mode": stage.mode, "value": stage.value,
                                        "users": users, "started_at": now, "measure_from": now + opts.warmup_s,
                                        "ended_at": None, "stopped_by": None}
                self.current = meta
                self.stages.append(meta)
                self._broadcast(data)
                deadline = time.perf_counter() + opts.duration_s
                stopped_by = "duration"
                while True:
                    if self.interrupted:
                        stopped_by = "interrupt"
                        break
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    if opts.max_requests and self._quota_done(index, procs):
                        stopped_by = "max_requests"
                        break
                    gevent.sleep(min(0.05, left))
                meta["ended_at"] = time.time()
                meta["stopped_by"] = stopped_by
                self._broadcast({**data, "run": False})
                if self.interrupted:
                    break
                drained = self._wait(lambda i=index: self._drained(i), opts.timeout_s + 5.0)  # type: ignore[misc]
                self._stage_counts(meta, index)
                meta["drained_at"] = time.time()
                if not drained and not self.interrupted:
                    log.warning("stage %s: %d requests still running after the timeout", stage.name,
                                meta["cancelled"])
                self.current = None
                if self.spec and opts.stop_on_fail and index + 1 < len(opts.stages):
                    missed = [s["name"] for s in judge([r for r in self.sink.stage_records() if not r.warmup],
                                                       self.spec.criteria) if s["judged"] and not s["met"]]
                    if missed:
                        self.stopped_early = f"stage {stage.name} missed {', '.join(missed)}"
                        break
        except gevent.GreenletExit:
            raise
        except Exception:
            log.exception("the stage controller failed")
            self.interrupted = True
        self.done = True
        self.desired = None

    def _quota_done(self, index: int, procs: int) -> bool:
        reports = [r for r in self._reports() if r["index"] == index]
        return len(reports) >= procs and all(r["quota_done"] for r in reports)

    def _drained(self, index: int) -> bool:
        reports = self._reports()
        return bool(reports) and all(r["index"] != index or (not r["run"] and r["in_flight"] == 0)
                                     for r in reports)

    def _stage_counts(self, meta: dict[str, Any], index: int) -> None:
        reports = [r for r in self._reports() if r["index"] == index]
        meta["sent"] = sum(int(r["sent"]) for r in reports)
        meta["dropped"] = sum(int(r["dropped"]) for r in reports)
        meta["cancelled"] = sum(int(r["in_flight"]) for r in reports)
        meta["max_schedule_lag_s"] = max((float(r["max_lag"]) for r in reports), default=0.0)

    def _housekeeping(self) -> None:
        last_broadcast = 0.0
        while not self.finalized:
            gevent.sleep(min(FLUSH_INTERVAL_S, STAGE_BROADCAST_S))
            self.sink.flush()
            now = time.perf_counter()
            if self.distributed and self.stage_data is not None and now - last_broadcast >= STAGE_BROADCAST_S:
                last_broadcast = now
                runner = self.env.runner
                if isinstance(runner, MasterRunner):
                    runner.send_message("forge_stage", self.stage_data)  # late workers join the stage
            if self.sink.metrics is not None:
                self.sink.metrics.set_in_flight(self.options.model, self.in_flight())

    def in_flight(self) -> int:
        return sum(int(r["in_flight"]) for r in self._reports())

    def live(self) -> dict[str, Any]:
        """Figures of the current stage for the progress display."""
        view = self.sink.live_view()
        view["in_flight"] = self.in_flight()
        return view

    def on_worker_report(self, node_id: str, data: dict[str, Any]) -> None:
        lines = data.pop("lines", [])
        if lines:
            try:
                self.sink.add_lines(lines, f"worker {node_id}")
            except ForgeError as exc:
                log.error("bad records from worker %s: %s", node_id, exc)
        self.reports[node_id] = data

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
            "stages_planned": [s.name for s in opts.stages],
            "stages": self.stages,
            "metrics_url": self.metrics_url,
            "workload": {
                "arrival": opts.arrival, "burstiness": opts.burstiness, "duration_s": opts.duration_s,
                "warmup_s": opts.warmup_s, "max_requests": opts.max_requests,
                "prompt_tokens": opts.prompt_tokens.describe(), "output_tokens": opts.output_tokens.describe(),
                "dataset": opts.dataset_path, "ignore_eos": opts.ignore_eos, "timeout_s": opts.timeout_s,
                "max_in_flight": opts.max_in_flight, "seed": opts.seed,
                "max_line_bytes": opts.max_line_bytes, "max_response_bytes": opts.max_response_bytes,
            },
        }

    def finalize(self, interrupted: bool = False) -> dict[str, Any] | None:
        """Close the records and write run.json, summary.json and report.html (once)."""
        if self.finalized:
            return self.summary
        self.finalized = True
        if interrupted or not self.done:
            self.interrupted = self.interrupted or interrupted or not self.done
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
            PROC.group.kill(block=False)
        self.sink.close()
        if self._server is not None:
            self._server.stop(timeout=1)
        if self.out is not None:
            from forge_slo.load.outputs import write_outputs

            self.summary = write_outputs(self.out, self.run_meta(), self.spec)
        for callback in self.on_finish:
            callback()
        return self.summary


class _Control:
    controller: Controller | None = None
    error: str | None = None


CONTROL = _Control()


class ForgeLoadShape(LoadTestShape):
    """Locust's load shape for forge-slo's stages (``--rate``, ``--concurrency``, ``--sweep``)."""

    def tick(self) -> tuple[int, float] | None:
        ctl = CONTROL.controller
        if ctl is None:
            return None
        if not ctl.started:
            ctl.start()
        return ctl.desired


# ---------------------------------------------------------------------------------------------------------
# Listeners: Locust calls them in every process that imports this module.


def _add_arguments(parser: Any) -> None:
    add_load_arguments(parser, locust=True)


def setup_controller(env: Environment) -> Controller:
    """Parse the options and build the controller (master or local); raises ForgeError on bad input."""
    ns = env.parsed_options
    if ns is None:
        raise ForgeError("forge-slo load needs Locust's parsed options")
    options = options_from_namespace(ns, host=env.host, default_users=getattr(ns, "num_users", None))
    spec = criteria_from_spec(select_spec(options.spec_path, options.service)) if options.spec_path else None
    ctl = Controller(env, options, spec)
    CONTROL.controller = ctl
    if not ctl.distributed:
        PROC.configure(options, 0)
        PROC.sink = ctl.sink
    return ctl


def _on_init(environment: Environment, **_kw: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message("forge_stage", _on_stage_message)
        _hold_lifeline()
        return
    if isinstance(runner, MasterRunner):
        runner.register_message("forge_records", _on_records_message)
    if CONTROL.controller is not None or runner is None:
        return
    try:
        setup_controller(environment)
    except SpecErrors as exc:
        for error in exc.errors:
            print(f"error: {error.render()}", file=sys.stderr)
        CONTROL.error = str(exc)
        sys.exit(2)
    except ForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        CONTROL.error = str(exc)
        sys.exit(exc.exit_code)


def _hold_lifeline() -> None:
    """A worker that forge-slo's engine started ends with the engine: nothing it sends is recorded then."""
    fd = lifeline_from_env()
    if fd is None:
        return
    die_with_parent(signal.SIGKILL)
    gevent.spawn(watch, fd, _engine_gone, gevent.socket.wait_read)


def _engine_gone() -> None:
    log.error("forge-slo load: the engine is gone; this worker stops")
    os._exit(1)


def _on_stage_message(environment: Environment, msg: Any, **_kw: Any) -> None:
    if PROC.options is None:
        _configure_worker(environment)
    PROC.apply_stage(dict(msg.data))


def _on_records_message(environment: Environment, msg: Any, **_kw: Any) -> None:
    ctl = CONTROL.controller
    if ctl is not None:
        ctl.on_worker_report(msg.node_id, dict(msg.data))


def _freeze_heap() -> None:
    """Move everything allocated so far (Locust, Flask, numpy... some 200,000 objects) out of the garbage
    collector's sight: a full collection would walk them all and stall every stream for tens of ms."""
    gc.collect()
    gc.freeze()


def _configure_worker(environment: Environment) -> None:
    runner = environment.runner
    assert isinstance(runner, WorkerRunner)
    ns = environment.parsed_options
    options = options_from_namespace(ns or {}, host=environment.host,
                                     default_users=getattr(ns, "num_users", None) or 1)
    PROC.configure(options, int(getattr(runner, "worker_index", 0)), distributed=True)


def _on_test_start(environment: Environment, **_kw: Any) -> None:
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        if environment.shape_class is None and runner is not None and CONTROL.controller is not None:
            # Without the shape nothing would ever start a stage and every user would wait forever.
            print("error: forge-slo load: the locustfile must also import ForgeLoadShape from "
                  "forge_slo.load.user (it runs --rate/--concurrency/--sweep and --duration)", file=sys.stderr)
            gevent.spawn(runner.quit)
        return
    try:
        _configure_worker(environment)
    except ForgeError as exc:
        log.error("forge-slo load: %s", exc)
        return
    if PROC.report_greenlet is None:
        _freeze_heap()
        PROC.report_greenlet = gevent.spawn(_worker_reports, runner)


def _worker_reports(runner: WorkerRunner) -> None:
    while True:
        gevent.sleep(REPORT_INTERVAL_S)
        _send_report(runner)


def _send_report(runner: WorkerRunner) -> None:
    lines, PROC.outbox = PROC.outbox, []
    data = PROC.report()
    data["lines"] = lines
    try:
        runner.send_message("forge_records", data)
    except Exception as exc:  # the master went away; the records of this batch are lost
        log.error("cannot send records to the master: %s", exc)


def _on_test_stop(environment: Environment, **_kw: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        PROC.group.kill(block=False)
        if PROC.report_greenlet is not None:
            PROC.report_greenlet.kill(block=False)
            PROC.report_greenlet = None
        _send_report(runner)
        return
    ctl = CONTROL.controller
    if ctl is not None:
        ctl.finalize()


def _on_quitting(environment: Environment, **_kw: Any) -> None:
    ctl = CONTROL.controller
    if ctl is not None and not isinstance(environment.runner, WorkerRunner):
        ctl.finalize(interrupted=not ctl.done)


_events: Any = events  # Locust's event hooks are untyped
_events.init_command_line_parser.add_listener(_add_arguments)
_events.init.add_listener(_on_init)
_events.test_start.add_listener(_on_test_start)
_events.test_stop.add_listener(_on_test_stop)
_events.quitting.add_listener(_on_quitting)
