"""The timing model of one served model: a FIFO queue, ``max_num_seqs`` running slots, prefill and decode.

Nothing here computes anything heavy. Every token due is popped from one heap of ``(when, seq, stream)``
tuples (:class:`TokenClock`, one asyncio timer for the whole server) and costs one ``transport.write`` of
bytes built when the request arrived, so one core serves tens of thousands of tokens per second and the
schedule (TTFT, ITL) holds to within the event loop's lag, which :class:`~forge_slo.sim.metrics.LagStats`
records.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from forge_slo.sim.answers import OUTAGE_STATUS
from forge_slo.sim.config import ErrorsFault, ModelConfig, StallFault
from forge_slo.sim.metrics import HANGUP, GaugeReading, LagStats, ModelMetrics

# stop, length: served; abort: cut by the server (a fault, or the server stopping); outage: failed by an outage;
# cancelled: the client went away.
FinishReason = Literal["stop", "length", "abort", "outage", "cancelled"]


@dataclass(frozen=True)
class Modifiers:
    """The combined effect of the faults active on one model right now."""

    ttft_multiplier: float = 1.0
    ttft_add_s: float = 0.0
    itl_multiplier: float = 1.0
    itl_add_s: float = 0.0
    outage: bool = False
    errors: tuple[ErrorsFault, ...] = ()
    stalls: tuple[StallFault, ...] = ()


NO_FAULTS = Modifiers()


@dataclass(frozen=True)
class Plan:
    """What will happen to one request, decided when it arrives."""

    output_tokens: int
    finish_reason: Literal["stop", "length"]
    abort_after: int | None  # cut the stream after this many tokens
    stall_at: int | None  # pause before this token index
    stall_s: float


# epoll waits in whole milliseconds, rounded up, so a timer fires up to 1 ms late. Tokens due within this
# much of "now" are sent at once: the error becomes about +-0.5 ms instead of 0..+1 ms.
EARLY_S = 0.0005


class TokenClock:
    """One timer for every token of every stream: a heap of ``(when, seq, stream)`` tuples.

    ``asyncio``'s own timers compare ``TimerHandle`` objects in Python on every heap operation; tuples of a
    float and an int compare in C, which is most of what keeps the token path cheap. Entries of streams that
    ended are skipped when popped rather than removed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, TokenStream]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._firing = False
        # The default loop's time() is time.monotonic(); calling that directly saves a method call per token.
        same = abs(loop.time() - time.monotonic()) < 0.001
        self.now: Callable[[], float] = time.monotonic if same else loop.time

    def schedule(self, when: float, stream: TokenStream) -> None:
        heapq.heappush(self.heap, (when, next(self._seq), stream))
        if not self._firing and when < self._armed_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self.loop.call_at(when - EARLY_S, self._fire)

    def service(self) -> None:
        """Send the tokens already due, now. Request handlers call this before their own work, so that a
        burst of new requests handled in one event-loop pass does not hold back tokens due meanwhile."""
        heap = self.heap
        if heap and not self._firing and heap[0][0] <= self.now() + EARLY_S:
            self._fire()

    def _fire(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = math.inf
        heap = self.heap
        pop = heapq.heappop
        push = heapq.heappush
        seq = self._seq
        clock = self.now
        self._firing = True
        try:
            while heap and heap[0][0] <= clock() + EARLY_S:
                stream = pop(heap)[2]
                if stream.finish_reason is None:
                    when = stream.tick()
                    if when is not None:
                        push(heap, (when, next(seq), stream))
        finally:
            self._firing = False
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.heap.clear()


class ModelEngine:
    """Scheduler of one model; all methods run on the event loop thread."""

    def __init__(
        self,
        cfg: ModelConfig,
        seed: int,
        loop: asyncio.AbstractEventLoop,
        lags: LagStats,
        clock: TokenClock,
        metrics: ModelMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.lags = lags
        self.clock = clock
        # One generator per model: the same seed and arrival order give the same timings.
        self.rng = random.Random(f"{seed}:{cfg.name}")
        self.fault_rng = random.Random(f"{seed}:{cfg.name}:faults")
        self.metrics = metrics if metrics is not None else ModelMetrics()
        self.running = 0
        self.waiting: deque[TokenStream] = deque()
        self.kv_in_use = 0
        self.mods = NO_FAULTS
        self.streams: set[TokenStream] = set()
        cv = cfg.itl_stddev_s / cfg.itl_s if cfg.itl_s > 0 else 0.0
        self._cv = cv
        self._ln_sigma = math.sqrt(math.log1p(cv * cv))
        self._slow = cfg.batch_slowdown / cfg.max_num_seqs

    # -- timing -------------------------------------------------------------------------------------------

    def prefill_seconds(self, prompt_tokens: int) -> float:
        base = self.cfg.prefill_base_s + self.cfg.prefill_per_token_s * prompt_tokens
        return base * self.mods.ttft_multiplier + self.mods.ttft_add_s

    def sample_itl(self) -> float:
        """One decode step; its mean grows with the batch: ``itl_s * (1 + slowdown * running/max)``."""
        cfg = self.cfg
        mean = cfg.itl_s * (1.0 + self._slow * self.running)
        dist = cfg.itl_distribution
        if dist == "fixed" or self._cv == 0.0:
            value = mean
        elif dist == "normal":
            value = max(0.0, self.rng.gauss(mean, mean * self._cv))
        else:
            sigma = self._ln_sigma
            value = self.rng.lognormvariate(math.log(mean) - sigma * sigma / 2.0, sigma)
        mods = self.mods
        return value * mods.itl_multiplier + mods.itl_add_s

    def plan(self, max_tokens: int | None) -> Plan:
        out = self.cfg.output_tokens
        if max_tokens is not None:
            n, reason = max_tokens, "length"
        else:
            n = out.min if out.min == out.max else self.rng.randint(out.min, out.max)
            reason = "stop"
        abort_after: int | None = None
        for fault in self.mods.errors:
            if fault.mode == "abort_stream" and self.fault_rng.random() < fault.rate:
                wanted = fault.abort_after_tokens if fault.abort_after_tokens is not None else n // 2
                abort_after = min(wanted, n - 1)
                break
        stall_at: int | None = None
        stall_s = 0.0
        for stall in self.mods.stalls:
            if stall.at_token < n and self.fault_rng.random() < stall.probability:
                stall_at, stall_s = stall.at_token, stall.stall_s
                break
        return Plan(n, "length" if reason == "length" else "stop", abort_after, stall_at, stall_s)

    def http_error_due(self) -> bool:
        """Whether an ``errors`` fault in http_500 mode fails this request."""
        return any(f.mode == "http_500" and self.fault_rng.random() < f.rate for f in self.mods.errors)

    # -- scheduling ---------------------------------------------------------------------------------------

    def gauges(self) -> GaugeReading:
        usage = min(1.0, self.kv_in_use / self.cfg.kv_cache_tokens)
        return GaugeReading(self.running, len(self.waiting), usage)

    def full(self) -> bool:
        """Whether a request arriving now is shed: no slot is free for it and the queue is at its limit."""
        limit = self.cfg.max_queued_requests
        if limit is None:
            return False
        if not self.waiting and self.running < self.cfg.max_num_seqs:
            return False
        return len(self.waiting) >= limit

    def try_admit(self, stream: TokenStream) -> bool:
        """Start now if a slot is free, nobody waits and the prompt fits the KV cache; else queue (FIFO)."""
        self.streams.add(stream)
        if not self.waiting and self._fits(stream):
            self._start(stream)
            return True
        self.waiting.append(stream)
        return False

    def _fits(self, stream: TokenStream) -> bool:
        if self.running >= self.cfg.max_num_seqs:
            return False
        return self.running == 0 or self.kv_in_use + stream.prompt_tokens <= self.cfg.kv_cache_tokens

    def _start(self, stream: TokenStream) -> None:
        self.running += 1
        self.kv_in_use += stream.prompt_tokens
        stream.kv_held = stream.prompt_tokens
        stream.state = RUNNING
        stream.begin(self.loop.time())

    def release(self, stream: TokenStream) -> None:
        """Free the slot (or the queue place) of a finished stream and start whoever waits next."""
        self.streams.discard(stream)
        if stream.state == RUNNING:
            self.running -= 1
            self.kv_in_use -= stream.kv_held
            stream.kv_held = 0
        elif stream.state == WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(stream)
        stream.state = DONE
        while self.waiting and self._fits(self.waiting[0]):
            self._start(self.waiting.popleft())

    def cut_all(self, reason: FinishReason) -> None:
        """End every stream of this model now (an outage, or the server stopping)."""
        for stream in list(self.streams):
            stream.finish(reason)


WAITING, RUNNING, DONE = 0, 1, 2


class TokenStream:
    """One request from arrival to its last token. ``transport`` is None for non-streaming requests.

    Frames are complete HTTP/1.1 chunks (size line, data, CRLF) built once per request: every token costs one
    heap pop and push and one ``transport.write`` of a shared bytes object.
    """

    __slots__ = (
        "engine",
        "route",
        "prompt_tokens",
        "plan",
        "arrival",
        "transport",
        "first_frame",
        "mid_frame",
        "last_frame",
        "per_chunk",
        "state",
        "emitted",
        "deadline",
        "last_at",
        "first_at",
        "admitted_at",
        "kv_held",
        "handle",
        "done",
        "finish_reason",
        "cut",
    )

    def __init__(
        self,
        engine: ModelEngine,
        prompt_tokens: int,
        plan: Plan,
        arrival: float,
        transport: asyncio.Transport | None,
        frames: tuple[bytes, bytes, bytes],
        route: str = "/v1/completions",
    ) -> None:
        self.engine = engine
        self.route = route
        self.prompt_tokens = prompt_tokens
        self.plan = plan
        self.arrival = arrival
        self.transport = transport
        self.first_frame, self.mid_frame, self.last_frame = frames
        self.per_chunk = engine.cfg.tokens_per_chunk
        self.state = WAITING
        self.emitted = 0
        self.deadline = 0.0
        self.last_at = 0.0
        self.first_at = 0.0
        self.admitted_at = 0.0
        self.kv_held = 0
        self.handle: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[FinishReason] = engine.loop.create_future()
        self.finish_reason: FinishReason | None = None
        self.cut = False

    def begin(self, now: float) -> None:
        """Admitted: schedule the first token after prefill (and a stall placed before token 0)."""
        self.admitted_at = now
        eng = self.engine
        delay = eng.prefill_seconds(self.prompt_tokens)
        if self.plan.stall_at == 0:
            delay += self.plan.stall_s
        self.deadline = now + delay
        if self.plan.abort_after == 0:
            self.handle = eng.loop.call_at(self.deadline, self.finish, "abort")
        else:
            eng.clock.schedule(self.deadline, self)

    def tick(self) -> float | None:
        """Send the token(s) due now; returns when the next are due, or None when the stream ended."""
        eng = self.engine
        now = eng.clock.now()
        transport = self.transport
        if transport is not None and transport.is_closing():
            self.finish("cancelled")
            return None
        plan = self.plan
        i = self.emitted
        n = plan.output_tokens
        k = self.per_chunk if i + self.per_chunk < n else n - i
        last = i + k >= n
        if transport is not None:
            transport.write(self.last_frame if last else self.first_frame if i == 0 else self.mid_frame)
        m = eng.metrics
        lag = now - self.deadline
        lags = eng.lags
        if i == 0:
            self.first_at = now
            if m.ttft is not None:
                m.ttft.observe(now - self.arrival)
            m.prompt_tokens += self.prompt_tokens
            lags.first_token.record(lag)
        elif m.itl is not None:
            # Per token: a gap that brings k tokens is k gaps of gap / k (the first chunk's tokens have none).
            m.itl.observe_many((now - self.last_at) / k, k)
        lags.token.record(lag)
        self.last_at = now
        self.emitted = i + k
        m.generation_tokens += k
        eng.kv_in_use += k
        self.kv_held += k
        if last:
            self.finish(plan.finish_reason)
            return None
        if plan.abort_after is not None and self.emitted >= plan.abort_after:
            self.finish("abort")
            return None
        d = self.deadline
        nxt = self.emitted
        k_next = self.per_chunk if nxt + self.per_chunk < n else n - nxt
        for _ in range(k_next):
            d += eng.sample_itl()
        if plan.stall_at is not None and nxt <= plan.stall_at < nxt + k_next:
            d += plan.stall_s
        self.deadline = d
        return d

    def finish(self, reason: FinishReason) -> None:
        """End the request once: its outcome in the metrics, its slot, and for a stream cut by the server, the
        connection."""
        if self.finish_reason is not None:
            return
        self.finish_reason = reason
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        eng = self.engine
        m = eng.metrics
        streaming = self.transport is not None
        if reason == "stop" or reason == "length":
            self._observe_served(m, eng.loop.time())
            m.finished("served", eng.cfg.name, self.route, 200, reason)
        elif reason == "cancelled":
            m.finished("cancelled", eng.cfg.name, self.route, 200 if streaming else HANGUP, None)
        else:
            # A stream already answered 200, so the server cuts it; a full answer cut off gets no answer at all,
            # one failed by an outage gets a 500.
            status = 200 if streaming else OUTAGE_STATUS if reason == "outage" else None
            m.finished("server_error", eng.cfg.name, self.route, status, None)
            if streaming:
                reason = "abort"
        eng.release(self)
        if reason == "abort" and self.transport is not None and not self.transport.is_closing():
            # Close after the buffered tokens are flushed, without the terminating chunk: the client sees
            # a body cut short, as when a server process dies mid-stream.
            self.cut = True
            self.transport.close()
        if not self.done.done():
            self.done.set_result(reason)

    def _observe_served(self, m: ModelMetrics, now: float) -> None:
        """The per-request histograms, observed (as the servers do) for requests that finished normally."""
        n = self.emitted
        if m.e2e is not None:
            m.e2e.observe(now - self.arrival)
        if m.queue is not None:
            m.queue.observe((self.admitted_at or now) - self.arrival)
        if m.tpot is not None:
            if n > 1:
                m.tpot.observe((self.last_at - self.first_at) / (n - 1))
            elif m.tpot_one_token is not None:
                m.tpot.observe(m.tpot_one_token)
        if m.time_per_token is not None and n:
            m.time_per_token.observe((now - (self.admitted_at or now)) / n)
