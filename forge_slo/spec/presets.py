"""What each inference server exports and how it counts: metric names, labels, bucket bounds, outcomes.

Every fact here was read from the servers' own source (versions and files in the comments); rules,
dashboards, the simulator, the load judge and the canary all take them from this module, so an SLO means
the same in each of them.

- A latency SLI counts "requests faster than T" exactly only when T is a bucket bound of the histogram, so
  the bounds are the servers' own defaults (a spec may override them, as the servers allow).
- Each latency alias has one meaning (:data:`QUANTITIES`); a server without a histogram of that meaning
  has no such alias, and a spec asking for it is refused with the aliases it does have.
- Availability counts every request once, by outcome (:class:`Outcomes`): served, failed by the server,
  shed under load, cancelled by the client; invalid requests (4xx) never count. Whether shed and cancelled
  requests count as failures is the spec's choice (:class:`AvailabilityPolicy`), the same for every server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

# Latency -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantity:
    """What a latency alias measures. ``record_field``: the load-test record field that measures the same
    thing client-side (None: only the server sees it). ``per_token``: observed once per output token, so
    the observations of one request are not independent."""

    alias: str
    title: str
    meaning: str
    record_field: str | None = None
    per_token: bool = False


QUANTITIES: Mapping[str, Quantity] = MappingProxyType({q.alias: q for q in (
    Quantity("ttft", "time to first token", "request arrival to the first output token, one value per request",
             "ttft_s"),
    Quantity("tpot", "time per output token", "per request, (last token - first token) / (output tokens - 1)",
             "tpot_s"),
    Quantity("itl", "inter-token latency", "every gap between output tokens; a gap that brings k tokens at once "
             "counts k times, each gap/k", "itl_s", per_token=True),
    Quantity("e2e", "end-to-end latency", "request arrival to the last output token, one value per request",
             "e2e_s"),
    Quantity("queue", "queue time", "time a request waits before the engine schedules it (server-side only)"),
    Quantity("time_per_token", "TGI time per token", "TGI's own quantity: prefill and decode time divided by "
             "every generated token (not TPOT: the first token's time is in it)"),
)})


@dataclass(frozen=True)
class Histogram:
    """A latency histogram of a server.

    ``unit_seconds`` is the length of one unit (0.001 for ms). ``family``: the server's name for the bucket
    list it shares with other histograms (vLLM's ``inter_token_latency`` serves ITL and TPOT), so an
    override applies to every histogram of the family, as the server's own flag does. ``overridable``: the
    server lets its operator change the bounds.
    """

    metric: str
    buckets: tuple[float, ...]
    unit_seconds: float = 1.0
    family: str = ""
    overridable: bool = True


# Availability --------------------------------------------------------------------------------------------


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
    """A series the server exports for one kind of outcome, for synthetic test data and the simulator.

    ``per_request`` is how much it grows per request of that outcome (TGI counts a chat request twice in
    ``tgi_request_count``); ``counted`` is false for series the SLI must leave alone (they repeat what a
    counted series already holds, like vLLM's HTTP 500 for a request that finished with ``error``).
    """

    metric: str
    labels: tuple[tuple[str, str], ...]
    per_request: float = 1.0
    counted: bool = True
    lacks: frozenset[str] = frozenset()  # labels of the spec (group_by, selector) this series does not carry


OUTCOMES = ("served", "server_error", "shed", "cancelled", "client_error")


@dataclass(frozen=True)
class AvailabilityPolicy:
    """Whether requests shed under load and requests cancelled by their client count as failures.

    Default: shedding counts (the user got no answer), cancellations do not (the client chose to stop).
    Left out means out of both sides of the ratio, never counted as successes.
    """

    count_shed: bool = True
    count_cancelled: bool = False


@dataclass(frozen=True)
class Outcomes:
    """How a server counts finished requests: one set of counter terms per outcome, disjoint, so each
    request is counted once. ``None``: the server does not count that outcome apart (its requests fall
    under another outcome or under none), so a policy that needs it cannot be honoured."""

    served: tuple[CounterTerm, ...]
    server_error: tuple[CounterTerm, ...]
    shed: tuple[CounterTerm, ...] | None
    cancelled: tuple[CounterTerm, ...] | None
    source: str                 # where this was read, for the README and error messages
    notes: str = ""             # what the counters cannot tell apart
    # Outcomes the server counts under another one (vLLM's shed 503s are among its 5xx): outcome -> the one.
    indistinct: Mapping[str, str] = field(default_factory=dict)
    examples: Mapping[str, tuple[ExampleSeries, ...]] = field(default_factory=dict)  # outcome -> series

    def terms(self, policy: AvailabilityPolicy) -> tuple[tuple[CounterTerm, ...], tuple[CounterTerm, ...]]:
        """(errors, total) under ``policy``."""
        errors = list(self.server_error)
        if policy.count_shed and self.shed:
            errors.extend(self.shed)
        if policy.count_cancelled and self.cancelled:
            errors.extend(self.cancelled)
        return tuple(errors), (*self.served, *errors)

    def unsupported(self, policy: AvailabilityPolicy) -> str | None:
        """Why ``policy`` cannot be honoured with these counters, or None."""
        if policy.count_cancelled and self.cancelled is None:
            return "the server does not count client cancellations apart from other requests"
        if not policy.count_shed and self.shed is None:
            return "the server does not count shed requests apart from failed ones"
        return None

    def counts_as(self, outcome: str, policy: AvailabilityPolicy) -> str | None:
        """Where a request of ``outcome`` lands in the SLI: "error", "good" or None (left out)."""
        outcome = self.indistinct.get(outcome, outcome)
        if outcome == "served":
            return "good"
        if outcome == "server_error" or (outcome == "shed" and policy.count_shed) or \
                (outcome == "cancelled" and policy.count_cancelled):
            return "error"
        return None


@dataclass(frozen=True)
class Availability:
    """An availability SLI as counters: ``errors`` over ``total``, after the policy."""

    errors: tuple[CounterTerm, ...]
    total: tuple[CounterTerm, ...]
    outcomes: Outcomes
    policy: AvailabilityPolicy


# Saturation and traffic ----------------------------------------------------------------------------------


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
    histograms: Mapping[str, Histogram] = field(default_factory=dict)  # alias -> histogram
    outcomes: Outcomes | None = None
    server: ServerMetrics = field(default_factory=lambda: ServerMetrics())  # traffic and saturation series
    bucket_note: str = ""  # how the server's operator changes bucket bounds

    def histogram(self, alias_or_metric: str) -> Histogram | None:
        """A histogram by alias (``ttft``) or by its full metric name."""
        if alias_or_metric in self.histograms:
            return self.histograms[alias_or_metric]
        for h in self.histograms.values():
            if h.metric == alias_or_metric:
                return h
        return None

    def alias_of(self, histogram: Histogram) -> str:
        return next(alias for alias, h in self.histograms.items() if h.metric == histogram.metric)

    def aliases(self) -> list[str]:
        return sorted(self.histograms)

    def with_buckets(self, family: str, buckets: tuple[float, ...]) -> Preset:
        """The preset with every histogram of ``family`` using ``buckets`` (the server's override)."""
        histograms = {alias: replace(h, buckets=buckets) if h.family == family else h
                      for alias, h in self.histograms.items()}
        return replace(self, histograms=MappingProxyType(histograms))


def _histograms(**items: Histogram) -> Mapping[str, Histogram]:
    return MappingProxyType(items)


# vLLM 0.33 (v1 engine): vllm/v1/metrics/buckets.py, loggers.py, stats.py; --custom-histogram-buckets
# overrides a whole family (request_latency, time_to_first_token, inter_token_latency).
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

_VLLM_HTTP = "http_requests_total"
_VLLM_GENERATE = 'handler=~"/v1/chat/completions|/v1/completions|/v1/responses"'


_NO_MODEL = frozenset({"model_name"})


def _vllm_http(status: str, *, counted: bool = True, lacks: frozenset[str] = frozenset()) -> ExampleSeries:
    """vLLM's HTTP counter (prometheus-fastapi-instrumentator): route template, method, status class."""
    labels = (("handler", "/v1/chat/completions"), ("method", "POST"), ("status", status))
    return ExampleSeries(_VLLM_HTTP, labels, counted=counted, lacks=lacks)


VLLM = Preset(
    name="vllm",
    title="vLLM",
    model_label="model_name",
    bucket_note="vllm serve --custom-histogram-buckets '{\"<family>\": [...]}' (one list per family)",
    server=ServerMetrics(
        prompt_tokens="vllm:prompt_tokens_total",
        generation_tokens="vllm:generation_tokens_total",
        breakdowns=(
            Breakdown(_VLLM_HTTP, "status", "HTTP responses by status", lacks=_NO_MODEL),
            Breakdown("vllm:request_success_total", "finished_reason", "Finished requests by reason"),
        ),
        running="vllm:num_requests_running",
        waiting="vllm:num_requests_waiting",
        kv_cache_usage="vllm:kv_cache_usage_perc",
    ),
    histograms=_histograms(
        ttft=Histogram("vllm:time_to_first_token_seconds", VLLM_TTFT_BUCKETS, family="time_to_first_token"),
        tpot=Histogram("vllm:request_time_per_output_token_seconds", VLLM_ITL_BUCKETS, family="inter_token_latency"),
        itl=Histogram("vllm:inter_token_latency_seconds", VLLM_ITL_BUCKETS, family="inter_token_latency"),
        e2e=Histogram("vllm:e2e_request_latency_seconds", VLLM_REQUEST_LATENCY_BUCKETS, family="request_latency"),
        queue=Histogram("vllm:request_queue_time_seconds", VLLM_REQUEST_LATENCY_BUCKETS, family="request_latency"),
    ),
    outcomes=Outcomes(
        # Served: requests the engine finished well (per model). Failed: the HTTP 5xx of the generation routes,
        # which holds a non-streaming request that finished with "error" once (request_success{error} repeats
        # it and is not read) and the 500s of requests that never reached the engine (a dead engine): an
        # outage shows. Shed requests (503) are 5xx too: vLLM's status label cannot tell them apart.
        served=(CounterTerm("vllm:request_success_total", ('finished_reason!~"error|abort"',)),),
        server_error=(CounterTerm(_VLLM_HTTP, (_VLLM_GENERATE, 'status="5xx"'), lacks=_NO_MODEL),),
        shed=None,
        cancelled=None,
        indistinct={"shed": "server_error"},
        source="vLLM 0.33 vllm/v1/metrics/loggers.py (request_success), vllm/v1/engine/__init__.py "
               "(FinishReason: error is always a 500), entrypoints instrumentator (http_requests_total, status "
               "grouped as 5xx), v1/engine/output_processor.py (client aborts reach no counter)",
        notes="shed requests (503 from --max-num-queued-reqs) are 5xx like any other failure; a client that "
              "hangs up is counted nowhere (left out); an error inside a stream that already answered 200 is "
              "not visible; the HTTP counter has no model label, so its failures are charged to every model "
              "of the server",
        examples={
            "served": (ExampleSeries("vllm:request_success_total", (("finished_reason", "stop"),)),
                       _vllm_http("2xx", counted=False, lacks=_NO_MODEL)),
            "server_error": (_vllm_http("5xx", lacks=_NO_MODEL),
                             ExampleSeries("vllm:request_success_total", (("finished_reason", "error"),),
                                           counted=False)),
            "shed": (_vllm_http("5xx", lacks=_NO_MODEL),
                     ExampleSeries("vllm:admission_rejections_total", (("reason", "max_num_queued_reqs"),),
                                   counted=False)),
            "cancelled": (_vllm_http("2xx", counted=False, lacks=_NO_MODEL),),
            "client_error": (_vllm_http("4xx", counted=False, lacks=_NO_MODEL),),
        },
    ),
)

# SGLang 0.5.23 (--enable-metrics): sglang/srt/observability/metrics_collector.py, http_request_metrics.py;
# --bucket-time-to-first-token, --bucket-inter-token-latency (ITL and TPOT), --bucket-e2e-request-latency.
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
    0.0, 0.001, 0.005, 0.010, 0.050, 0.100, 0.200, 0.500, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1200.0,
    1400.0, 1600.0, 1800.0, 2000.0, 2500.0, 3000.0,
)
_SGLANG_HTTP = "sglang:http_responses_total"
_SGLANG_GENERATE = 'endpoint=~"/v1/chat/completions|/v1/completions|/generate"'
_NO_SGLANG_MODEL = frozenset({"model_name"})


def _sglang_status(matcher: str) -> tuple[CounterTerm, ...]:
    return (CounterTerm(_SGLANG_HTTP, (_SGLANG_GENERATE, matcher), lacks=_NO_SGLANG_MODEL),)


SGLANG = Preset(
    name="sglang",
    title="SGLang",
    model_label="model_name",
    bucket_note="sglang --bucket-time-to-first-token / --bucket-inter-token-latency / --bucket-e2e-request-latency",
    server=ServerMetrics(
        prompt_tokens="sglang:prompt_tokens_total",
        generation_tokens="sglang:generation_tokens_total",
        breakdowns=(Breakdown(_SGLANG_HTTP, "status_code", "HTTP responses by status", lacks=_NO_SGLANG_MODEL),),
        running="sglang:num_running_reqs",
        waiting="sglang:num_queue_reqs",
        kv_cache_usage="sglang:token_usage",
    ),
    histograms=_histograms(
        ttft=Histogram("sglang:time_to_first_token_seconds", _SGLANG_TTFT_BUCKETS, family="time_to_first_token"),
        tpot=Histogram("sglang:request_time_per_output_token_seconds", _SGLANG_ITL_BUCKETS,
                       family="inter_token_latency"),
        itl=Histogram("sglang:inter_token_latency_seconds", _SGLANG_ITL_BUCKETS, family="inter_token_latency"),
        e2e=Histogram("sglang:e2e_request_latency_seconds", _SGLANG_E2E_BUCKETS, family="e2e_request_latency"),
        queue=Histogram("sglang:queue_time_seconds", _SGLANG_QUEUE_BUCKETS, family="queue_time", overridable=False),
    ),
    outcomes=Outcomes(
        # The HTTP responses of the generation endpoints, by exact status: SGLang's request counters count an
        # aborted running request twice and a queue-full rejection not at all.
        served=_sglang_status('status_code=~"[123].."'),
        server_error=_sglang_status('status_code=~"5..",status_code!="503"'),
        shed=_sglang_status('status_code="503"'),
        cancelled=None,
        source="SGLang 0.5.23 sglang/srt/observability/http_request_metrics.py (http_responses_total), "
               "srt/managers/tokenizer_manager.py and scheduler.py (aborts, queue limits)",
        notes="a 503 is also what SGLang answers for its request timeouts, counted as shedding; a client that "
              "disconnects from a non-streaming request gets a 400, counted with invalid requests (never part "
              "of the SLI); errors inside a stream that already answered 200 are not visible",
        examples={
            "served": (ExampleSeries(_SGLANG_HTTP, (("endpoint", "/v1/chat/completions"), ("method", "POST"),
                                                    ("status_code", "200")), lacks=_NO_SGLANG_MODEL),
                       ExampleSeries("sglang:num_requests_total", (), counted=False)),
            "server_error": (ExampleSeries(_SGLANG_HTTP, (("endpoint", "/v1/chat/completions"), ("method", "POST"),
                                                          ("status_code", "500")), lacks=_NO_SGLANG_MODEL),),
            "shed": (ExampleSeries(_SGLANG_HTTP, (("endpoint", "/v1/chat/completions"), ("method", "POST"),
                                                  ("status_code", "503")), lacks=_NO_SGLANG_MODEL),),
            "cancelled": (ExampleSeries(_SGLANG_HTTP, (("endpoint", "/v1/chat/completions"), ("method", "POST"),
                                                       ("status_code", "400")), counted=False,
                          lacks=_NO_SGLANG_MODEL),
                          ExampleSeries("sglang:num_aborted_requests_total", (), counted=False)),
            "client_error": (ExampleSeries(_SGLANG_HTTP, (("endpoint", "/v1/chat/completions"), ("method", "POST"),
                                                          ("status_code", "400")), counted=False,
                          lacks=_NO_SGLANG_MODEL),),
        },
    ),
)


# TGI (router/src/server.rs at db931fcf, after v3.3.7): every histogram whose name ends in "duration" gets 35
# buckets, 0.0001 * 1.5^k for k = 1..35 (multiplied before the first one is pushed); no flag changes them.
def _tgi_duration_buckets() -> tuple[float, ...]:
    # Repeated multiplication, as the router does, so every bound is the same float its `le` label prints.
    bounds, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        bounds.append(value)
    return tuple(bounds)


_TGI_DURATION_BUCKETS = _tgi_duration_buckets()


def _tgi(name: str) -> Histogram:
    return Histogram(name, _TGI_DURATION_BUCKETS, family="duration", overridable=False)


def _tgi_failure(kinds: str) -> tuple[CounterTerm, ...]:
    return (CounterTerm("tgi_request_failure", (f'err=~"{kinds}"',)),)


TGI = Preset(
    name="tgi",
    title="Text Generation Inference",
    model_label=None,
    bucket_note="none: TGI's router fixes its buckets",
    server=ServerMetrics(
        breakdowns=(Breakdown("tgi_request_failure", "err", "Failed requests by error kind"),),
        running="tgi_batch_current_size",
        waiting="tgi_queue_size",
    ),
    histograms=_histograms(
        e2e=_tgi("tgi_request_duration"),
        queue=_tgi("tgi_request_queue_duration"),
        time_per_token=_tgi("tgi_request_mean_time_per_token_duration"),
    ),
    outcomes=Outcomes(
        # tgi_request_count is raised twice per chat request (handler and generate) and by /chat_tokenize, so
        # the total is the outcomes themselves: successes plus failures of the counted kinds.
        served=(CounterTerm("tgi_request_success"),),
        server_error=_tgi_failure("generation|incomplete"),
        shed=_tgi_failure("overloaded"),
        cancelled=_tgi_failure("dropped"),
        source="TGI router/src/server.rs (tgi_request_count, tgi_request_success), router/src/infer/mod.rs and "
               "backends/v3/src/{queue,backend}.rs (tgi_request_failure err=overloaded|validation|template|"
               "generation|incomplete|dropped)",
        notes="validation and template errors (422) are invalid requests, never part of the SLI",
        examples={
            "served": (ExampleSeries("tgi_request_success", ()),
                       ExampleSeries("tgi_request_count", (), per_request=2, counted=False)),
            "server_error": (ExampleSeries("tgi_request_failure", (("err", "generation"),)),
                             ExampleSeries("tgi_request_count", (), per_request=2, counted=False)),
            "shed": (ExampleSeries("tgi_request_failure", (("err", "overloaded"),)),
                     ExampleSeries("tgi_request_count", (), per_request=2, counted=False)),
            "cancelled": (ExampleSeries("tgi_request_failure", (("err", "dropped"),)),
                          ExampleSeries("tgi_request_count", (), per_request=2, counted=False)),
            "client_error": (ExampleSeries("tgi_request_failure", (("err", "validation"),), counted=False),
                             ExampleSeries("tgi_request_count", (), per_request=2, counted=False)),
        },
    ),
)

# Triton core (src/metrics.cc, metric_model_reporter.*, infer_stats.cc): the first-response histogram needs
# --metrics-config histogram_latencies=true; milliseconds; per-model bounds in config.pbtxt model_metrics.
_TRITON_FAILURE = "nv_inference_request_failure"
TRITON = Preset(
    name="triton",
    title="Triton Inference Server",
    model_label="model",
    bucket_note="config.pbtxt model_metrics { metric_control: [{ metric_identifier: { family: "
                "\"nv_inference_first_response_histogram_ms\" } histogram_options: { buckets: [...] } }] }",
    server=ServerMetrics(
        breakdowns=(Breakdown(_TRITON_FAILURE, "reason", "Failed requests by reason"),),
        waiting="nv_inference_pending_request_count",
    ),
    histograms=_histograms(
        ttft=Histogram("nv_inference_first_response_histogram_ms", (100.0, 500.0, 2000.0, 5000.0),
                       unit_seconds=0.001, family="nv_inference_first_response_histogram_ms"),
    ),
    outcomes=Outcomes(
        served=(CounterTerm("nv_inference_request_success"),),
        server_error=(CounterTerm(_TRITON_FAILURE, ('reason=~"BACKEND|OTHER"',)),),
        shed=(CounterTerm(_TRITON_FAILURE, ('reason="REJECTED"',)),),
        cancelled=(CounterTerm(_TRITON_FAILURE, ('reason="CANCELED"',)),),
        source="Triton core src/metric_model_reporter.cc, src/infer_stats.cc; server docs/user_guide/metrics.md "
               "(failure reasons REJECTED, CANCELED, BACKEND, OTHER)",
        notes="a request refused because max_queue_size is full gets a 503 but no failure count; invalid "
              "requests (400) are not counted",
        examples={
            "served": (ExampleSeries("nv_inference_request_success", (("version", "1"),)),),
            "server_error": (ExampleSeries(_TRITON_FAILURE, (("reason", "BACKEND"), ("version", "1"))),),
            "shed": (ExampleSeries(_TRITON_FAILURE, (("reason", "REJECTED"), ("version", "1"))),),
            "cancelled": (ExampleSeries(_TRITON_FAILURE, (("reason", "CANCELED"), ("version", "1"))),),
            "client_error": (),
        },
    ),
)

CUSTOM = Preset(name="custom", title="custom metrics", model_label=None)

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (VLLM, SGLANG, TGI, TRITON, CUSTOM)})
