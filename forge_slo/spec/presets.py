"""What each inference server exports: metric names, labels and histogram bucket bounds.

A latency SLI can only count "requests faster than T" exactly when T is a bucket bound of the histogram,
so the bounds here are the servers' own, copied from their source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# vLLM (v1 engine), vllm/v1/metrics/loggers.py
VLLM_TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
)
VLLM_ITL_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
VLLM_REQUEST_LATENCY_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0,
)


@dataclass(frozen=True)
class Histogram:
    """A latency histogram of a server. ``unit_seconds`` is the length of one unit (0.001 for ms)."""

    metric: str
    buckets: tuple[float, ...]
    unit_seconds: float = 1.0


@dataclass(frozen=True)
class CounterTerm:
    """One counter summed into an availability SLI.

    ``matchers`` are raw PromQL matchers (already quoted). ``lacks`` names labels this counter does not
    carry (vLLM's HTTP counter has no ``model_name``): when the SLO is grouped by one of them, the term is
    charged to every group that shares the remaining labels.
    """

    metric: str
    matchers: tuple[str, ...] = ()
    lacks: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ExampleSeries:
    """A series the server exports, for synthetic test data: ``role`` says which rate it carries.

    ``good`` carries the successful requests, ``bad`` the failed ones and ``total`` all of them.
    """

    metric: str
    labels: tuple[tuple[str, str], ...]
    role: str


@dataclass(frozen=True)
class Availability:
    errors: tuple[CounterTerm, ...]
    total: tuple[CounterTerm, ...]
    description: str
    examples: tuple[ExampleSeries, ...] = ()


@dataclass(frozen=True)
class Breakdown:
    """A counter of requests broken down by one label (status, finish reason, error kind)."""

    metric: str
    label: str
    title: str
    lacks: frozenset[str] = frozenset()  # labels the counter does not carry (vLLM's HTTP counter: model_name)


@dataclass(frozen=True)
class ServerMetrics:
    prompt_tokens: str | None = None  # counters
    generation_tokens: str | None = None
    breakdowns: tuple[Breakdown, ...] = ()
    running: str | None = None  # gauges
    waiting: str | None = None
    kv_cache_usage: str | None = None  # gauge, 0..1


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    model_label: str | None
    histograms: dict[str, Histogram] = field(default_factory=dict)  # alias -> histogram
    availability: Availability | None = None
    server: ServerMetrics = field(default_factory=lambda: ServerMetrics())  # traffic and saturation series

    def histogram(self, alias_or_metric: str) -> Histogram | None:
        """A histogram by alias (``ttft``) or by its full metric name."""
        if alias_or_metric in self.histograms:
            return self.histograms[alias_or_metric]
        for h in self.histograms.values():
            if h.metric == alias_or_metric:
                return h
        return None

    def aliases(self) -> list[str]:
        return sorted(self.histograms)


_vllm_ttft = Histogram("vllm:time_to_first_token_seconds", VLLM_TTFT_BUCKETS)
_vllm_itl = Histogram("vllm:inter_token_latency_seconds", VLLM_ITL_BUCKETS)
_vllm_e2e = Histogram("vllm:e2e_request_latency_seconds", VLLM_REQUEST_LATENCY_BUCKETS)

VLLM = Preset(
    name="vllm",
    title="vLLM",
    model_label="model_name",
    server=ServerMetrics(
        prompt_tokens="vllm:prompt_tokens_total",
        generation_tokens="vllm:generation_tokens_total",
        breakdowns=(
            Breakdown("http_requests_total", "status", "HTTP responses by status", lacks=frozenset({"model_name"})),
            Breakdown("vllm:request_success_total", "finished_reason", "Finished requests by reason"),
        ),
        running="vllm:num_requests_running",
        waiting="vllm:num_requests_waiting",
        kv_cache_usage="vllm:kv_cache_usage_perc",
    ),
    histograms={
        "ttft": _vllm_ttft,
        "tpot": _vllm_itl,
        "itl": _vllm_itl,
        # Older vLLM releases export the same per-token gaps under this name.
        "tpot_legacy": Histogram("vllm:time_per_output_token_seconds", VLLM_ITL_BUCKETS),
        "e2e": _vllm_e2e,
        "queue": Histogram("vllm:request_queue_time_seconds", VLLM_REQUEST_LATENCY_BUCKETS),
    },
    availability=Availability(
        errors=(
            CounterTerm("vllm:request_success_total", ('finished_reason=~"abort|error"',)),
            CounterTerm("http_requests_total", ('status="5xx"',), lacks=frozenset({"model_name"})),
        ),
        total=(
            CounterTerm("vllm:request_success_total"),
            CounterTerm("http_requests_total", ('status="5xx"',), lacks=frozenset({"model_name"})),
        ),
        description=(
            "aborted or failed requests (vllm:request_success_total{finished_reason=~\"abort|error\"}) plus HTTP 5xx "
            "(http_requests_total{status=\"5xx\"}) over finished requests plus 5xx answers"
        ),
        examples=(
            ExampleSeries("vllm:request_success_total", (("finished_reason", "stop"),), "good"),
            ExampleSeries("vllm:request_success_total", (("finished_reason", "abort"),), "bad"),
        ),
    ),
)

# SGLang python/sglang/srt/metrics/collector.py, recent defaults (--bucket-* flags override them).
_SGLANG_TTFT_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0, 400.0,
)
_SGLANG_ITL_BUCKETS: tuple[float, ...] = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080, 0.100, 0.200,
    0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0,
)
_SGLANG_E2E_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0, 400.0, 600.0,
    1200.0, 1800.0, 2400.0,
)
_SGLANG_QUEUE_BUCKETS: tuple[float, ...] = (
    0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0,
    100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1200.0, 1400.0, 1600.0, 1800.0,
    2000.0, 2500.0, 3000.0,
)

SGLANG = Preset(
    name="sglang",
    title="SGLang",
    model_label="model_name",
    server=ServerMetrics(
        prompt_tokens="sglang:prompt_tokens_total",
        generation_tokens="sglang:generation_tokens_total",
        running="sglang:num_running_reqs",
        waiting="sglang:num_queue_reqs",
        kv_cache_usage="sglang:token_usage",
    ),
    histograms={
        "ttft": Histogram("sglang:time_to_first_token_seconds", _SGLANG_TTFT_BUCKETS),
        "tpot": Histogram("sglang:inter_token_latency_seconds", _SGLANG_ITL_BUCKETS),
        "itl": Histogram("sglang:inter_token_latency_seconds", _SGLANG_ITL_BUCKETS),
        "e2e": Histogram("sglang:e2e_request_latency_seconds", _SGLANG_E2E_BUCKETS),
        "queue": Histogram("sglang:queue_time_seconds", _SGLANG_QUEUE_BUCKETS),
    },
    availability=Availability(
        errors=(CounterTerm("sglang:num_aborted_requests_total"),),
        total=(CounterTerm("sglang:num_requests_total"),),
        description=(
            "aborted requests (sglang:num_aborted_requests_total) over all requests (sglang:num_requests_total)"
        ),
        examples=(
            ExampleSeries("sglang:num_requests_total", (), "total"),
            ExampleSeries("sglang:num_aborted_requests_total", (), "bad"),
        ),
    ),
)

# TGI's router (text-generation-inference router/src/server.rs) gives every histogram whose name ends in
# "duration" 35 buckets, 0.0001 * 1.5^k for k = 1..35 (multiplied before the first one is pushed).
def _tgi_duration_buckets() -> tuple[float, ...]:
    # Repeated multiplication, as the router does, so every bound is the same float its `le` label prints.
    bounds, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        bounds.append(value)
    return tuple(bounds)


_TGI_DURATION_BUCKETS = _tgi_duration_buckets()

TGI = Preset(
    name="tgi",
    title="Text Generation Inference",
    model_label=None,
    server=ServerMetrics(
        breakdowns=(Breakdown("tgi_request_failure", "err", "Failed requests by error kind"),),
        running="tgi_batch_current_size",
        waiting="tgi_queue_size",
    ),
    histograms={
        "e2e": Histogram("tgi_request_duration", _TGI_DURATION_BUCKETS),
        "tpot": Histogram("tgi_request_mean_time_per_token_duration", _TGI_DURATION_BUCKETS),
        "queue": Histogram("tgi_request_queue_duration", _TGI_DURATION_BUCKETS),
    },
    availability=Availability(
        errors=(CounterTerm("tgi_request_failure", ('err!="validation"',)),),
        total=(CounterTerm("tgi_request_count"),),
        description="failed requests except invalid ones (tgi_request_failure{err!=\"validation\"}) over all requests",
        examples=(
            ExampleSeries("tgi_request_count", (), "total"),
            ExampleSeries("tgi_request_failure", (("err", "generation"),), "bad"),
        ),
    ),
)

TRITON = Preset(
    name="triton",
    title="Triton Inference Server",
    model_label="model",
    server=ServerMetrics(
        breakdowns=(Breakdown("nv_inference_request_failure", "reason", "Failed requests by reason"),),
        waiting="nv_inference_pending_request_count",
    ),
    histograms={
        # Exported with --metrics-config histogram_latencies=true; milliseconds.
        "ttft": Histogram(
            "nv_inference_first_response_histogram_ms", (100.0, 500.0, 2000.0, 5000.0), unit_seconds=0.001
        ),
    },
    availability=Availability(
        errors=(CounterTerm("nv_inference_request_failure", ('reason!="CANCELED"',)),),
        total=(CounterTerm("nv_inference_request_success"), CounterTerm("nv_inference_request_failure")),
        description=(
            "failed requests not cancelled by the client (nv_inference_request_failure{reason!=\"CANCELED\"}) over "
            "successful plus failed ones"
        ),
        examples=(
            ExampleSeries("nv_inference_request_success", (("version", "1"),), "good"),
            ExampleSeries("nv_inference_request_failure", (("reason", "BACKEND"), ("version", "1")), "bad"),
        ),
    ),
)

CUSTOM = Preset(name="custom", title="custom metrics", model_label=None)

PRESETS: dict[str, Preset] = {p.name: p for p in (VLLM, SGLANG, TGI, TRITON, CUSTOM)}
