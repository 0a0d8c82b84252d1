"""A server's Prometheus series, shaped by its preset, kept as plain numbers on the hot path.

What the simulator exports comes from :mod:`forge_slo.spec.presets`, never from here: the latency histograms
(names, bounds, unit), the counters each request outcome moves (``Outcomes.examples``, echo series and
double counts included) and the token counters and gauges (``ServerMetrics``). A ``prometheus_client``
histogram takes a lock and walks its buckets on every observation; the simulator observes once per token, so
it keeps its own counts (one ``bisect`` per observation) and writes the text format only when /metrics is
scraped.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.utils import floatToGoString

from forge_slo.spec.presets import QUANTITIES, ExampleSeries, Preset

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The simulator's own generation routes; a preset's example written for one of them stands for both.
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
# The status of a request whose client left before the answer: the server's own record of such a request is
# the one its examples show (vLLM answers 200, SGLang 400).
HANGUP = 0
FINISH_REASONS = ("stop", "length")
_STATUS = re.compile(r"^[1-5](?:[0-9]{2}|xx)$")
_Key = tuple[str, tuple[tuple[str, str], ...]]


def _go_float(value: float) -> str:
    """A number as prometheus_client writes it (``0.001``, ``1.0``, ``+Inf``)."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class Hist:
    """A Prometheus histogram as plain numbers: per-bucket counts (last one is +Inf) and a sum, in the
    histogram's unit. A unit other than the second is counted in whole units, as Triton truncates to ms."""

    __slots__ = ("bounds", "counts", "sum", "scale", "whole")

    def __init__(self, bounds: tuple[float, ...], unit_seconds: float = 1.0) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.scale = 1.0 / unit_seconds
        self.whole = unit_seconds != 1.0

    def observe(self, seconds: float) -> None:
        value = math.floor(seconds * self.scale) if self.whole else seconds
        # bisect_left puts a value equal to a bound into that bound's bucket, as `le` means.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, seconds: float, k: int) -> None:
        """``k`` observations of ``seconds`` (the k tokens one gap brought, each gap / k)."""
        value = math.floor(seconds * self.scale) if self.whole else seconds
        self.counts[bisect_left(self.bounds, value)] += k
        self.sum += value * k

    def le(self, bound: float) -> str:
        # Whole-unit histograms come from servers that print 100, not 100.0 (Triton's prometheus-cpp).
        return str(int(bound)) if self.whole and bound.is_integer() else _go_float(bound)

    def cumulative(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            out.append((self.le(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


Recorder = Callable[[str, str | None, str, int | None, str | None], None]


def _ignore(outcome: str, model: str | None, route: str, status: int | None, reason: str | None) -> None:
    return None


class ModelMetrics:
    """What one model's engine feeds: the preset's histogram of each quantity (None where the server has
    none; shared by every model when the server has no model label), token counts, and the outcome of each
    finished request (``finished``)."""

    __slots__ = ("ttft", "tpot", "itl", "e2e", "queue", "time_per_token", "tpot_one_token",
                 "prompt_tokens", "generation_tokens", "finished")

    def __init__(self, histograms: Mapping[str, Hist] | None = None, *, tpot_one_token: float | None = None,
                 recorder: Recorder = _ignore) -> None:
        h = histograms or {}
        self.ttft, self.tpot, self.itl = h.get("ttft"), h.get("tpot"), h.get("itl")
        self.e2e, self.queue, self.time_per_token = h.get("e2e"), h.get("queue"), h.get("time_per_token")
        self.tpot_one_token = tpot_one_token
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished = recorder


@dataclass(frozen=True)
class GaugeReading:
    running: int
    waiting: int
    kv_cache_usage: float


@dataclass(frozen=True)
class _Series:
    """One example series of an outcome, ready to count: which of its labels take the request's route,
    recorded HTTP status and finish reason (found by their example values)."""

    metric: str
    labels: tuple[tuple[str, str], ...]
    per_request: float
    model: bool
    route: str | None
    status: str | None
    status_class: bool
    reason: str | None

    @classmethod
    def of(cls, example: ExampleSeries, outcome: str, model_label: str | None) -> _Series:
        route = status = reason = None
        status_class = False
        for name, value in example.labels:
            if value in GENERATION_ROUTES:
                route = name
            elif _STATUS.match(value):
                status, status_class = name, value.endswith("xx")
            elif outcome == "served" and value == "stop":  # the served examples show a request that stopped
                reason = name
        with_model = model_label is not None and model_label not in example.lacks
        return cls(example.metric, example.labels, example.per_request, with_model, route, status, status_class,
                   reason)

    def key(self, model_label: str | None, model: str | None, route: str, status: int | None,
            reason: str | None) -> _Key | None:
        """The series this request moves, or None when it moves none (an HTTP series of an unanswered request,
        a model's series of a request that named no known model)."""
        labels = dict(self.labels)
        if self.model:
            if model is None or model_label is None:
                return None
            labels[model_label] = model
        if self.route is not None:
            labels[self.route] = route
        if self.status is not None:
            if status is None:
                return None
            if status != HANGUP:
                labels[self.status] = f"{status // 100}xx" if self.status_class else str(status)
        if self.reason is not None and reason is not None:
            labels[self.reason] = reason
        return self.metric, tuple(sorted(labels.items()))

    @property
    def created_at_start(self) -> bool:
        # Series keyed by route or status appear with their first request, as HTTP instrumentation does.
        return self.route is None and self.status is None


class Exposition:
    """Everything one simulated server exports, as its preset says: ``model(name)`` is what an engine feeds,
    ``record`` counts a finished request, ``render`` writes the text format."""

    def __init__(self, preset: Preset, models: Sequence[str], *, tpot_one_token: float | None = None) -> None:
        self.preset = preset
        self.model_label = preset.model_label
        self.models = tuple(models)
        self._hists: dict[str, dict[str | None, Hist]] = {}
        for alias, h in preset.histograms.items():
            owners: Sequence[str | None] = self.models if self.model_label else (None,)
            self._hists[alias] = {owner: Hist(h.buckets, h.unit_seconds) for owner in owners}
        self._models = {
            name: ModelMetrics({alias: per[name if self.model_label else None] for alias, per in self._hists.items()},
                               tpot_one_token=tpot_one_token, recorder=self.record)
            for name in self.models
        }
        examples = preset.outcomes.examples if preset.outcomes is not None else {}
        self._plans = {outcome: tuple(_Series.of(e, outcome, self.model_label) for e in series)
                       for outcome, series in examples.items()}
        self.counters: dict[_Key, float] = {}
        self._counter_metrics = list(dict.fromkeys(s.metric for plan in self._plans.values() for s in plan))
        self._create_at_start()

    def model(self, name: str) -> ModelMetrics:
        return self._models[name]

    def _create_at_start(self) -> None:
        owners: Sequence[str | None] = self.models or (None,)
        for plan in self._plans.values():
            for series in plan:
                if not series.created_at_start:
                    continue
                reasons: Sequence[str | None] = FINISH_REASONS if series.reason else (None,)
                for owner in owners:
                    for reason in reasons:
                        key = series.key(self.model_label, owner, GENERATION_ROUTES[0], None, reason)
                        if key is not None:
                            self.counters.setdefault(key, 0.0)

    def record(self, outcome: str, model: str | None, route: str, status: int | None, reason: str | None) -> None:
        """Count one finished request of ``outcome`` in every series its server moves for it. ``status``: the
        HTTP status the server recorded (None: it answered nothing; :data:`HANGUP`: the client left)."""
        for series in self._plans.get(outcome, ()):
            key = series.key(self.model_label, model, route, status, reason)
            if key is not None:
                self.counters[key] = self.counters.get(key, 0.0) + series.per_request

    # -- the text format ---------------------------------------------------------------------------------

    def render(self, gauges: Mapping[str, GaugeReading]) -> bytes:
        out: list[str] = []
        for alias, per_owner in self._hists.items():
            self._histogram(out, alias, per_owner)
        for metric in self._counter_metrics:
            self._counter_family(out, metric)
        server = self.preset.server
        tokens = {name: (float(m.prompt_tokens), float(m.generation_tokens)) for name, m in self._models.items()}
        if server.prompt_tokens is not None:
            self._per_model(out, server.prompt_tokens, "counter", "Prompt tokens processed.",
                            {n: v[0] for n, v in tokens.items()}, sum)
        if server.generation_tokens is not None:
            self._per_model(out, server.generation_tokens, "counter", "Tokens generated.",
                            {n: v[1] for n, v in tokens.items()}, sum)
        readings = {name: gauges[name] for name in self.models if name in gauges}
        if server.running is not None:
            self._per_model(out, server.running, "gauge", "Requests running.",
                            {n: float(g.running) for n, g in readings.items()}, sum)
        if server.waiting is not None:
            self._per_model(out, server.waiting, "gauge", "Requests waiting for a slot.",
                            {n: float(g.waiting) for n, g in readings.items()}, sum)
        if server.kv_cache_usage is not None:
            self._per_model(out, server.kv_cache_usage, "gauge", "KV-cache usage, 0..1.",
                            {n: g.kv_cache_usage for n, g in readings.items()}, max)
        return "".join(out).encode()

    def _labels(self, owner: str | None, extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
        own = ((self.model_label, owner),) if self.model_label and owner is not None else ()
        return tuple(sorted((*own, *extra)))

    def _histogram(self, out: list[str], alias: str, per_owner: Mapping[str | None, Hist]) -> None:
        metric = self.preset.histograms[alias].metric
        quantity = QUANTITIES.get(alias)
        _head(out, metric, "histogram", f"Histogram of {quantity.title if quantity else alias}.")
        for owner, hist in per_owner.items():
            for le, count in hist.cumulative():
                out.append(_line(f"{metric}_bucket", self._labels(owner, (("le", le),)), str(count)))
            out.append(_line(f"{metric}_sum", self._labels(owner), _go_float(hist.sum)))
            out.append(_line(f"{metric}_count", self._labels(owner), str(hist.count)))

    def _counter_family(self, out: list[str], metric: str) -> None:
        samples = sorted((labels, value) for (name, labels), value in self.counters.items() if name == metric)
        if not samples:
            return
        titles = [b.title for b in self.preset.server.breakdowns if b.metric == metric]
        _head(out, metric, "counter", titles[0] + "." if titles else "Requests, by how they ended.")
        for labels, value in samples:
            out.append(_line(metric, labels, _go_float(value)))

    def _per_model(self, out: list[str], metric: str, kind: str, help_text: str, values: Mapping[str, float],
                   combine: Callable[[list[float]], float]) -> None:
        _head(out, metric, kind, help_text)
        if self.model_label is None:
            out.append(_line(metric, (), _go_float(combine(list(values.values())) if values else 0.0)))
            return
        for name, value in values.items():
            out.append(_line(metric, self._labels(name), _go_float(value)))


def _head(out: list[str], metric: str, kind: str, help_text: str) -> None:
    # The name as the server prints it: prometheus_client's `x_total` for vLLM and SGLang, a bare name for
    # TGI's and Triton's counters.
    out.append(f"# HELP {metric} {help_text}\n# TYPE {metric} {kind}\n")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _line(name: str, labels: tuple[tuple[str, str], ...], value: str) -> str:
    if not labels:
        return f"{name} {value}\n"
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}} {value}\n"


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
