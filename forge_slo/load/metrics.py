"""Client-side Prometheus metrics of a load run, named ``forge_load_*``.

Histograms use vLLM's own bucket bounds (from :mod:`forge_slo.spec.presets`) and vLLM's ``model_name``
label, so a dashboard can put the client's TTFT next to the server's ``vllm:time_to_first_token_seconds``;
the difference is queueing in front of the server, the network and the client itself.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from forge_slo.conventions import LOAD_METRIC_PREFIX
from forge_slo.sources.records import RequestRecord
from forge_slo.spec.presets import VLLM_ITL_BUCKETS, VLLM_REQUEST_LATENCY_BUCKETS, VLLM_TTFT_BUCKETS

TTFT = f"{LOAD_METRIC_PREFIX}time_to_first_token_seconds"
ITL = f"{LOAD_METRIC_PREFIX}inter_token_latency_seconds"
TPOT = f"{LOAD_METRIC_PREFIX}time_per_output_token_seconds"
E2E = f"{LOAD_METRIC_PREFIX}e2e_request_latency_seconds"
REQUESTS = f"{LOAD_METRIC_PREFIX}requests"            # _total added by prometheus_client
PROMPT_TOKENS = f"{LOAD_METRIC_PREFIX}prompt_tokens"
GENERATION_TOKENS = f"{LOAD_METRIC_PREFIX}generation_tokens"
IN_FLIGHT = f"{LOAD_METRIC_PREFIX}requests_in_flight"
LABELS = ("model_name", "stage")


class LoadMetrics:
    """The registry the load generator serves on ``--metrics-port``; fed one record at a time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(TTFT, "Client-side time to first token: request sent to the first token chunk.",
                              LABELS, buckets=VLLM_TTFT_BUCKETS, registry=r)
        self.itl = Histogram(ITL, "Client-side inter-token latency, per token: a chunk of k tokens after a gap g "
                                   "is k observations of g/k.",
                             LABELS, buckets=VLLM_ITL_BUCKETS, registry=r)
        self.tpot = Histogram(TPOT, "Client-side time per output token of each request: (last token chunk - "
                                    "first token chunk) / (output tokens - 1).", LABELS, buckets=VLLM_ITL_BUCKETS,
                              registry=r)
        self.e2e = Histogram(E2E, "Client-side request latency: request sent to the last token chunk.",
                             LABELS, buckets=VLLM_REQUEST_LATENCY_BUCKETS, registry=r)
        self.requests = Counter(REQUESTS, "Finished requests by result: ok or the error kind.",
                                (*LABELS, "result"), registry=r)
        self.prompt_tokens = Counter(PROMPT_TOKENS, "Prompt tokens of successful requests (server usage).",
                                     LABELS, registry=r)
        self.generation_tokens = Counter(GENERATION_TOKENS, "Output tokens of successful requests.",
                                         LABELS, registry=r)
        self.in_flight = Gauge(IN_FLIGHT, "Requests sent and not yet finished.", ("model_name",), registry=r)
        self._children: dict[tuple[str, str], tuple[Any, ...]] = {}

    def observe(self, record: RequestRecord) -> None:
        key = (record.model, record.stage)
        children = self._children.get(key)
        if children is None:
            labels = {"model_name": record.model, "stage": record.stage}
            children = (self.ttft.labels(**labels), self.itl.labels(**labels), self.tpot.labels(**labels),
                        self.e2e.labels(**labels), self.prompt_tokens.labels(**labels),
                        self.generation_tokens.labels(**labels))
            self._children[key] = children
        ttft, itl, tpot, e2e, prompt, gen = children
        self.requests.labels(record.model, record.stage, "ok" if record.ok else (record.error_kind or "other")).inc()
        if not record.ok:
            return
        if record.ttft_s is not None:
            ttft.observe(record.ttft_s)
        if record.tpot_s is not None:
            tpot.observe(record.tpot_s)
        if record.e2e_s is not None:
            e2e.observe(record.e2e_s)
        for value in record.itl_s:
            itl.observe(value)
        if record.prompt_tokens:
            prompt.inc(record.prompt_tokens)
        if record.output_tokens:
            gen.inc(record.output_tokens)

    def set_in_flight(self, model: str, value: int) -> None:
        self.in_flight.labels(model).set(value)
