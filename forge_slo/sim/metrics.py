"""vLLM's Prometheus series, kept as plain numbers on the hot path and rendered by a custom collector.

A ``prometheus_client.Histogram`` takes a lock and walks its buckets on every observation; the simulator
observes once per token, so it keeps its own counts (one ``bisect`` per observation) and turns them into
metric families only when /metrics is scraped. Names, types, labels and bucket bounds are vLLM's (v1
engine); the bounds come from :mod:`forge_slo.spec.presets`, never from here.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from forge_slo.spec.presets import VLLM_ITL_BUCKETS, VLLM_REQUEST_LATENCY_BUCKETS, VLLM_TTFT_BUCKETS

ENGINE_INDEX = "0"
FINISHED_REASONS = ("stop", "length", "abort", "error")
# Like vLLM's prometheus-fastapi-instrumentator: these handlers are not counted.
EXCLUDED_HANDLERS = frozenset({"/metrics", "/health"})


def _go_float(value: float) -> str:
    """A bound as prometheus_client writes ``le`` (``0.001``, ``1.0``), so the text matches vLLM's."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class Hist:
    """A Prometheus histogram as plain numbers: per-bucket counts (last one is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left puts a value equal to a bound into that bound's bucket, as `le` means.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            out.append((_go_float(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


class ModelMetrics:
    """Everything vLLM exports per model. Gauges are read from the engine at scrape time."""

    __slots__ = ("ttft", "itl", "e2e", "queue", "success", "prompt_tokens", "generation_tokens")

    def __init__(self) -> None:
        self.ttft = Hist(VLLM_TTFT_BUCKETS)
        self.itl = Hist(VLLM_ITL_BUCKETS)
        self.e2e = Hist(VLLM_REQUEST_LATENCY_BUCKETS)
        self.queue = Hist(VLLM_REQUEST_LATENCY_BUCKETS)
        self.success = dict.fromkeys(FINISHED_REASONS, 0)
        self.prompt_tokens = 0
        self.generation_tokens = 0


@dataclass(frozen=True)
class GaugeReading:
    running: int
    waiting: int
    kv_cache_usage: float


class HttpMetrics:
    """``http_requests_total{handler,method,status}`` with status classes (2xx, 4xx, 5xx), no model label."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}

    def inc(self, handler: str, method: str, status: int) -> None:
        key = (handler, method, f"{status // 100}xx")
        self.requests[key] = self.requests.get(key, 0) + 1


ModelSource = Callable[[], Iterator[tuple[str, ModelMetrics, GaugeReading]]]


class SimCollector:
    """Renders the simulator's numbers as vLLM's metric families."""

    def __init__(self, models: ModelSource, http: HttpMetrics) -> None:
        self._models = models
        self._http = http

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name", "engine"]
        ttft = HistogramMetricFamily(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", labels=labels
        )
        itl = HistogramMetricFamily(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", labels=labels
        )
        e2e = HistogramMetricFamily(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", labels=labels
        )
        queue = HistogramMetricFamily(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            labels=labels,
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=["model_name", "engine", "finished_reason"],
        )
        prompt = CounterMetricFamily(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels=labels
        )
        generation = CounterMetricFamily(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels=labels
        )
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Number of requests in model execution batches.", labels=labels
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels=labels
        )
        kv = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=labels
        )
        for name, m, g in self._models():
            values = [name, ENGINE_INDEX]
            for family, hist in ((ttft, m.ttft), (itl, m.itl), (e2e, m.e2e), (queue, m.queue)):
                family.add_metric(values, buckets=hist.cumulative(), sum_value=hist.sum)
            for reason in FINISHED_REASONS:
                success.add_metric([*values, reason], m.success[reason])
            prompt.add_metric(values, m.prompt_tokens)
            generation.add_metric(values, m.generation_tokens)
            running.add_metric(values, g.running)
            waiting.add_metric(values, g.waiting)
            kv.add_metric(values, g.kv_cache_usage)
        yield from (ttft, itl, e2e, queue, success, prompt, generation, running, waiting, kv)
        http = CounterMetricFamily(
            "http_requests",
            "Total number of requests by method, status and handler.",
            labels=["handler", "method", "status"],
        )
        for (handler, method, status), count in sorted(self._http.requests.items()):
            http.add_metric([handler, method, status], count)
        yield http


def build_registry(collector: SimCollector) -> CollectorRegistry:
    """A registry of its own per server, so several simulators can share a process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


class LagHistogram:
    """Scheduling lags in 50 us bins from -1 ms to +100 ms (beyond: the edge bins), plus count and max.

    Fixed bins keep recording O(1) and reading O(bins): reading never stalls the loop it measures.
    """

    __slots__ = ("counts", "count", "max")

    LOW_S = -0.001
    BIN_S = 0.00005
    BINS = 2020

    def __init__(self) -> None:
        self.counts = [0] * self.BINS
        self.count = 0
        self.max = -math.inf

    def record(self, lag: float) -> None:
        i = int((lag - self.LOW_S) * 20000.0)  # 1 / BIN_S
        self.counts[0 if i < 0 else i if i < 2020 else 2019] += 1
        self.count += 1
        if lag > self.max:
            self.max = lag

    def summary(self) -> dict[str, float]:
        out = {"count": float(self.count), "max": self.max if self.count else 0.0}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
            out[name] = self._quantile(q)
        return out

    def sparse_bins(self) -> list[list[int]]:
        """Non-empty bins as ``[index, count]``; bin i covers ``LOW_S + i*BIN_S .. + BIN_S``."""
        return [[i, c] for i, c in enumerate(self.counts) if c]

    def _quantile(self, q: float) -> float:
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return self.LOW_S + (i + 1) * self.BIN_S  # the bin's upper edge: never optimistic
        return self.max


class LagStats:
    """How late the simulator sent tokens against its own schedule (its scheduling error), for the first
    token of each request and for every token. ``GET /debug/stats?reset=1`` reads and starts a new window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.first_token = LagHistogram()
        self.token = LagHistogram()

    def summary(self) -> dict[str, dict[str, float]]:
        return {"first_token_lag_s": self.first_token.summary(), "token_lag_s": self.token.summary()}

    def bins(self) -> dict[str, Any]:
        """The raw histograms, for merging windows exactly (the benchmark does)."""
        return {
            "low_s": LagHistogram.LOW_S,
            "bin_s": LagHistogram.BIN_S,
            "first_token": self.first_token.sparse_bins(),
            "token": self.token.sparse_bins(),
        }
