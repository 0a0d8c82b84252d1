"""The Locust user of ``forge-slo load``: one streaming request to an OpenAI-compatible server becomes one record.

Importing this module imports Locust, which monkey-patches the standard library with gevent: import it only
in a process that runs Locust (the engine of ``forge-slo load``, or ``locust -f``), never from
``import forge_slo`` or a test process. It is also what a locustfile imports::

    from forge_slo.load.user import ForgeLoadShape, OpenAIUser

which adds forge-slo's flags and listeners to Locust (:mod:`forge_slo.load.listeners`) and the stages'
load shape (:mod:`forge_slo.load.controller`). The other roles live in their own modules: the state each
process shares with its users (:mod:`~forge_slo.load.sender`), the messages between the processes
(:mod:`~forge_slo.load.messages`) and the geventhttpclient patch (:mod:`~forge_slo.load.ghc`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from typing import Any

import gevent  # type: ignore[import-untyped]
from geventhttpclient.response import HTTPParseError
from locust import FastHttpUser, constant, task
from locust.env import Environment

from forge_slo.load import ghc, listeners
from forge_slo.load.body import LineReader, supports
from forge_slo.load.controller import ForgeLoadShape
from forge_slo.load.options import LoadOptions
from forge_slo.load.sender import SENDER, ProcStage
from forge_slo.load.stream import StreamError, StreamMeter, error_message
from forge_slo.load.workload import Arrivals
from forge_slo.sources.records import RequestRecord

__all__ = ["ForgeLoadShape", "OpenAIUser"]

log = logging.getLogger("forge_slo.load")

_ALL_STATUSES = frozenset(range(100, 600))
ERROR_BODY_BYTES = 65536  # read of an answer that is not an event stream, for its message


class LLMRequestError(Exception):
    """What Locust's failure table shows for a failed request: the error kind (and HTTP status)."""


class _RequestTimeout(Exception):
    pass


def classify(exc: BaseException, got_headers: bool) -> tuple[str, str]:
    """The record error kind and a message for an exception raised while talking to the server."""
    if isinstance(exc, TimeoutError | socket.timeout | gevent.Timeout | _RequestTimeout):
        return "timeout", f"timed out ({exc or 'no data'})"
    if isinstance(exc, ghc.HeadersTooLong):
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
        options = SENDER.options
        if options is not None:  # FastHttpUser builds its client from these
            # No per-read socket timeout (gevent would arm a timer for every read): each request has one timer
            # for its whole answer instead (--timeout), and connecting has its own.
            self.network_timeout = None  # type: ignore[assignment]
            self.connection_timeout = min(options.timeout_s, 30.0)
            # An open-loop user runs many requests at once on its own connection pool.
            self.concurrency = max(options.max_in_flight, 10)
        super().__init__(environment)
        self._stage: ProcStage | None = None
        # Take every status as an answer, so an error's body can be read for its message (geventhttpclient
        # closes the connection of a status it considers invalid before the body can be read).
        self.client.client.valid_response_codes = _ALL_STATUSES  # type: ignore[misc]

    @task
    def generate(self) -> None:
        sender = SENDER
        if not sender.running.wait(timeout=1.0):
            return
        st = sender.stage
        if st is None or not st.running or sender.options is None:
            gevent.sleep(0.05)
            return
        if st.mode == "rate":
            self._arrivals(st)
            sender.wait_stage_change(st)
            return
        if self._stage is not st:
            self._stage = st
            delay = st.next_start() - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            if sender.stage is not st or not st.running:
                return
        if not sender.take(st):
            sender.wait_stage_change(st)
            return
        self._send(st)

    def _arrivals(self, st: ProcStage) -> None:
        sender = SENDER
        opts = sender.options
        assert opts is not None
        arrivals = Arrivals(opts.arrival, st.rate_per_user, opts.burstiness, sender.rng)
        t = time.perf_counter()
        if opts.arrival == "constant" and st.procs > 1:
            t += (sender.worker_index % st.procs) / st.value  # interleave the workers' even schedules
        first = True
        while sender.stage is st and st.running:
            if not first:
                t += arrivals.interval()
            first = False
            if not _sleep_until(t, st):
                return
            st.max_lag = max(st.max_lag, time.perf_counter() - t)
            if not sender.take(st):
                return
            if sender.in_flight >= opts.max_in_flight:
                st.dropped += 1
                continue
            sender.group.spawn(self._send, st)

    def _send(self, st: ProcStage) -> None:
        sender = SENDER
        sender.in_flight += 1
        try:
            warmup = time.perf_counter() < st.warmup_until
            start_wall = time.time()
            try:
                record = self.request_once(st.name, warmup)
            except Exception as exc:  # a bug of ours must not lose a request that was sent and counted
                log.error("measuring a request failed: %s: %s", type(exc).__name__, exc)
                record = _client_failure(exc, start_wall, st.name, warmup, None)
            sender.emit(record)
        finally:
            sender.in_flight -= 1

    def request_once(self, stage: str, warmup: bool) -> RequestRecord:
        """Send one request (streaming, or an embeddings request) and measure it; never raises for a failed
        request."""
        opts = SENDER.options
        factory = SENDER.factory
        assert opts is not None and factory is not None
        plan = factory.next()
        trace_id, traceparent = new_traceparent()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                   "Accept-Encoding": "identity", "traceparent": traceparent}
        if opts.api_key:
            headers["Authorization"] = f"Bearer {opts.api_key}"
        start_wall = time.time()
        meter = StreamMeter(time.perf_counter(), plan.max_tokens, keep_text=plan.session is not None)
        if opts.api == "embeddings":
            headers["Accept"] = "application/json"
            self._exchange(opts, plan.body, headers, meter, embeddings=True)
        else:
            self._exchange(opts, plan.body, headers, meter)
        extra = SENDER.extra if not plan.extra and plan.prompt_tokens is None else \
            {**SENDER.extra, **plan.extra, **_local_count(plan.prompt_tokens)}
        try:
            record = meter.record(start_time=start_wall, model=plan.model, stage=stage, warmup=warmup,
                                  trace_id=trace_id, extra=extra)
            if record.prompt_tokens is None and plan.prompt_tokens is not None:
                record = dataclasses.replace(record, prompt_tokens=plan.prompt_tokens)
        except Exception as exc:  # whatever the server sent, the request is a record
            record = _client_failure(exc, start_wall, stage, warmup, meter)
        factory.finish(plan, record.ok, meter.text)
        self._report_to_locust(record, start_wall, meter.bytes, opts)
        return record

    def _exchange(self, opts: LoadOptions, body: bytes, headers: dict[str, str], meter: StreamMeter,
                  embeddings: bool = False) -> None:
        """POST the request and read its answer into ``meter``; every failure ends up in ``meter``."""
        got_headers = False
        stream: Any = None
        # Two guards of --timeout: the timer ends a request that waits on the socket; LineReader checks the
        # deadline itself between blocks, since a socket that always has data never lets the timer run.
        timer = gevent.Timeout(opts.timeout_s, _RequestTimeout(f"no full answer within {opts.timeout_s:g}s"))
        timer.start()
        try:
            resp = self.client.request("POST", opts.url, data=body,  # type: ignore[arg-type]
                                       headers=headers, stream=True, catch_response=True, name="e2e")
            status = resp.status_code
            if not status:
                raise getattr(resp, "error", None) or ConnectionError("no response")
            got_headers = True
            meter.status = status
            stream = resp.stream
            if embeddings:
                _read_embeddings(resp, stream, meter, opts)
            else:
                self._read_answer(resp, stream, meter, opts)
        except StreamError as exc:
            meter.fail(exc.kind, exc.message, time.perf_counter())
        except _RequestTimeout as exc:
            meter.fail("timeout", str(exc), time.perf_counter())
        except Exception as exc:  # every failure becomes a record; a user never dies
            kind, message = classify(exc, got_headers)
            if kind == "stream_cut":
                message = f"the stream was cut after {meter.events} token chunks ({message})"
            meter.fail(kind, message, time.perf_counter())
        finally:
            timer.close()
            if stream is not None:
                with contextlib.suppress(Exception):  # closing a broken socket may fail; nothing to do
                    stream.release()

    def _read_answer(self, resp: Any, stream: Any, meter: StreamMeter, opts: LoadOptions) -> None:
        if resp.status_code != 200:
            body = stream.read(ERROR_BODY_BYTES)
            meter.fail("http", error_message(body, resp.status_code), time.perf_counter())
            return
        ctype = str(resp.headers.get("content-type") or "") if resp.headers is not None else ""
        if ctype and not ctype.startswith("text/event-stream"):
            body = stream.read(ERROR_BODY_BYTES)
            meter.fail("malformed", f"expected an event stream, got {ctype}: "
                                    f"{body[:80].decode('utf-8', 'replace')}", time.perf_counter())
            return
        self._read_events(_line_reader(stream, meter.t_sent, opts), meter)

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


def _sleep_until(t: float, st: ProcStage) -> bool:
    """Sleep until ``t`` (perf_counter) in short steps; False when the stage stopped meanwhile."""
    while True:
        delay = t - time.perf_counter()
        if delay <= 0:
            return True
        gevent.sleep(min(delay, 0.2))
        if SENDER.stage is not st or not st.running:
            return False


def _local_count(tokens: int | None) -> dict[str, int]:
    return {} if tokens is None else {"prompt_tokens_local": tokens}


def _read_embeddings(resp: Any, stream: Any, meter: StreamMeter, opts: LoadOptions) -> None:
    """An embeddings answer: one JSON body with ``data[*].embedding`` and ``usage``; e2e is its last byte (there
    is no first token)."""
    if resp.status_code != 200:
        meter.fail("http", error_message(stream.read(ERROR_BODY_BYTES), resp.status_code), time.perf_counter())
        return
    reader = _line_reader(stream, meter.t_sent, opts)
    chunks = []
    while line := reader.readline():
        chunks.append(line)
    now = time.perf_counter()
    body = b"".join(chunks)
    meter.bytes = len(body)
    meter.t_last = meter.t_done = now
    try:
        data = json.loads(body)
        vectors = data["data"]
        if not isinstance(vectors, list) or not vectors or not all(
                isinstance(v, dict) and isinstance(v.get("embedding"), list | str) for v in vectors):
            raise ValueError("no 'data' list of embeddings")
        usage = data.get("usage") or {}
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    except (ValueError, KeyError, TypeError) as exc:
        meter.fail("malformed", f"not an embeddings answer ({exc}): {body[:80].decode('utf-8', 'replace')}", now)
        return
    meter.done = True
    meter.finish_reason = "stop"
    if isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0:
        meter.prompt_tokens = prompt
    meter.completion_tokens = 0


def _line_reader(stream: Any, t0: float, opts: LoadOptions) -> LineReader:
    if not supports(stream):
        raise StreamError("other", f"cannot read answers line by line with this geventhttpclient "
                                   f"({type(stream).__name__} lacks what forge_slo.load.body needs)")
    return LineReader(stream, deadline=t0 + opts.timeout_s, timeout_s=opts.timeout_s,
                      max_line=opts.max_line_bytes, max_body=opts.max_response_bytes, pause=gevent.sleep)


def _client_failure(exc: BaseException, start_wall: float, stage: str, warmup: bool,
                    meter: StreamMeter | None) -> RequestRecord:
    """The record of a request whose answer broke the client itself: a failure, never a lost request."""
    opts = SENDER.options
    end = time.perf_counter()
    return RequestRecord(start_time=start_wall, model=opts.model if opts else "", ok=False,
                         status=meter.status if meter else None, error_kind="other",
                         error=f"the client could not measure this answer: {type(exc).__name__}: {exc}"[:300],
                         e2e_s=end - meter.t_sent if meter else None, stage=stage, warmup=warmup,
                         tokens_from="stream", extra=SENDER.extra)


ghc.install()
listeners.install()
