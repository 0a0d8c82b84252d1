"""OpenTelemetry spans per request: a server span with ``queued``, ``prefill`` and ``decode`` children.

With the exporter off (the default) no TracerProvider is built and nothing OpenTelemetry-related runs per
request. Spans are written when a request ends, with start and end times taken from the simulator's own
clock, so tracing adds nothing to the token path either.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from forge_slo.errors import RunnerError
from forge_slo.sim.config import TracingConfig


@dataclass(frozen=True)
class RequestTrace:
    """The times (event-loop clock, seconds) and facts of one finished request."""

    name: str
    route: str
    model: str
    arrival: float
    admitted: float | None
    first_token: float | None
    end: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    status_code: int
    stream: bool


class Tracing:
    """Builds spans when enabled; every method is a no-op when ``enabled`` is false."""

    def __init__(self, cfg: TracingConfig, loop_time_now: float, span_exporter: Any = None) -> None:
        self.enabled = cfg.exporter != "off" or span_exporter is not None
        self._provider: Any = None
        self._tracer: Any = None
        self._propagator: Any = None
        self._api: tuple[Any, Any, Any, Any] = (None, None, None, None)
        # loop.time() is monotonic; spans want epoch nanoseconds.
        self._offset_ns = time.time_ns() - int(loop_time_now * 1e9)
        if not self.enabled:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
        if span_exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        elif cfg.exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as e:  # pragma: no cover - a declared dependency
                raise RunnerError(
                    "tracing.exporter otlp needs opentelemetry-exporter-otlp-proto-http installed"
                ) from e
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=cfg.endpoint)))
        from opentelemetry import trace as otel_trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._provider = provider
        self._tracer = provider.get_tracer("forge_slo.sim")
        self._propagator = TraceContextTextMapPropagator()
        self._api = (otel_trace, SpanKind, Status, StatusCode)

    def extract(self, headers: Mapping[str, str]) -> Any:
        """The remote parent context from a W3C ``traceparent`` header (None when disabled)."""
        if not self.enabled:
            return None
        return self._propagator.extract(carrier=headers)

    def record(self, parent: Any, trace: RequestTrace) -> None:
        if not self.enabled:
            return
        otel_trace, SpanKind, Status, StatusCode = self._api
        ns = self._ns
        span = self._tracer.start_span(
            trace.name,
            context=parent,
            kind=SpanKind.SERVER,
            start_time=ns(trace.arrival),
            attributes={
                "http.request.method": "POST",
                "http.route": trace.route,
                "http.response.status_code": trace.status_code,
                "gen_ai.system": "vllm",
                "gen_ai.request.model": trace.model,
                "gen_ai.response.model": trace.model,
                "gen_ai.usage.input_tokens": trace.prompt_tokens,
                "gen_ai.usage.output_tokens": trace.completion_tokens,
                "gen_ai.response.finish_reasons": (trace.finish_reason,),
                "forge_slo.sim.stream": trace.stream,
            },
        )
        if trace.status_code >= 500 or trace.finish_reason == "abort":
            span.set_status(Status(StatusCode.ERROR, trace.finish_reason))
        ctx = otel_trace.set_span_in_context(span)
        phases: list[tuple[str, float, float]] = []
        admitted = trace.admitted
        if admitted is not None:
            phases.append(("queued", trace.arrival, admitted))
            first = trace.first_token
            if first is not None:
                phases.append(("prefill", admitted, first))
                phases.append(("decode", first, trace.end))
            else:
                phases.append(("prefill", admitted, trace.end))
        else:
            phases.append(("queued", trace.arrival, trace.end))
        for name, start, end in phases:
            child = self._tracer.start_span(name, context=ctx, start_time=ns(start))
            child.end(end_time=ns(end))
        span.end(end_time=ns(trace.end))

    def _ns(self, loop_seconds: float) -> int:
        return self._offset_ns + int(loop_seconds * 1e9)

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
