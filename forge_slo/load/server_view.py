"""The server's own view during a load run: its running and waiting requests, KV-cache usage and TTFT histogram,
read every second from its ``/metrics`` (or from a Prometheus) into ``server_metrics.jsonl`` in the run's
directory, then charted in the report beside the client's figures.

The metric names come from the preset (:data:`forge_slo.spec.presets.PRESETS`: the spec's, or
``--server-preset``), never typed here. The reading runs in a thread of the CLI's process, not in the Locust
engine, so parsing a large exposition never stalls the streams being measured.

The file's first line is ``{"meta": {...}}`` (the source and the series read); every other line one sample:
``{"t": unix seconds, "running", "waiting", "kv_cache_usage", "ttft_buckets": [[le, cumulative count], ...],
"ttft_count", "ttft_sum"}`` (a series the server does not have is null).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from forge_slo.spec.presets import PRESETS, Preset

SERVER_METRICS = "server_metrics.jsonl"
INTERVAL_S = 1.0
SCRAPE_TIMEOUT_S = 2.0
MAX_SAMPLES = 200_000  # a week at one a second: the file and the report stay bounded
Sample = dict[str, Any]


@dataclass(frozen=True)
class ServerSeries:
    """The series of one server, by the preset's names."""

    preset: str
    model_label: str | None
    running: str | None
    waiting: str | None
    kv_cache_usage: str | None
    ttft: str | None         # the TTFT histogram's metric name (without _bucket)

    @classmethod
    def of(cls, preset: Preset) -> ServerSeries:
        ttft = preset.histograms.get("ttft")
        return cls(preset.name, preset.model_label, preset.server.running, preset.server.waiting,
                   preset.server.kv_cache_usage, ttft.metric if ttft is not None else None)

    def names(self) -> dict[str, str | None]:
        return {"running": self.running, "waiting": self.waiting, "kv_cache_usage": self.kv_cache_usage,
                "ttft": self.ttft}


def series_for(preset: str) -> ServerSeries:
    return ServerSeries.of(PRESETS[preset])


# -- reading the text format


def parse_exposition(text: str, series: ServerSeries, models: Sequence[str]) -> Sample:
    """One sample from a Prometheus text exposition: gauges summed (KV usage: the highest), the TTFT buckets
    summed by bound; only the run's models when the series carry a model label."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {n for n in (series.running, series.waiting, series.kv_cache_usage) if n}
    hist = series.ttft
    gauges: dict[str, list[float]] = {}
    buckets: dict[float, float] = {}
    count = total = 0.0
    seen_hist = False
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if series.model_label and models and series.model_label in s.labels \
                    and s.labels[series.model_label] not in models:
                continue
            if s.name in wanted:
                gauges.setdefault(s.name, []).append(float(s.value))
            elif hist is not None and s.name == hist + "_bucket":
                le = float(s.labels.get("le", "inf"))
                buckets[le] = buckets.get(le, 0.0) + float(s.value)
                seen_hist = True
            elif hist is not None and s.name == hist + "_count":
                count += float(s.value)
            elif hist is not None and s.name == hist + "_sum":
                total += float(s.value)
    return _sample(gauges, series, sorted(buckets.items()) if seen_hist else None, count, total)


def _sample(gauges: dict[str, list[float]], series: ServerSeries, buckets: list[tuple[float, float]] | None,
            count: float, total: float) -> Sample:
    def summed(name: str | None) -> float | None:
        return sum(gauges[name]) if name and name in gauges else None

    kv = max(gauges[series.kv_cache_usage]) if series.kv_cache_usage in gauges else None
    return {"running": summed(series.running), "waiting": summed(series.waiting), "kv_cache_usage": kv,
            "ttft_buckets": [[_le(le), c] for le, c in buckets] if buckets is not None else None,
            "ttft_count": count if buckets is not None else None, "ttft_sum": total if buckets is not None else None}


def _le(bound: float) -> float | str:
    """A bucket bound as JSON can hold it: the last one is "+Inf", as Prometheus writes it."""
    return bound if math.isfinite(bound) else "+Inf"


def has_series(sample: Sample) -> bool:
    return any(sample.get(k) is not None for k in ("running", "waiting", "kv_cache_usage", "ttft_buckets"))


# -- sources


class ScrapeSource:
    """The server's ``/metrics``, read directly."""

    def __init__(self, url: str, series: ServerSeries, models: Sequence[str]) -> None:
        self.url = url
        self.series = series
        self.models = tuple(models)
        self.client = httpx.Client(timeout=SCRAPE_TIMEOUT_S, trust_env=False)

    def describe(self) -> str:
        return self.url

    def read(self) -> Sample:
        resp = self.client.get(self.url, headers={"Accept": "text/plain"})
        resp.raise_for_status()
        return parse_exposition(resp.text, self.series, self.models)

    def close(self) -> None:
        self.client.close()


class PrometheusSource:
    """The server's series as a Prometheus last scraped them (``--prometheus``, ``--prometheus-selector``)."""

    def __init__(self, url: str, selector: str, series: ServerSeries) -> None:
        from forge_slo.sources.prometheus import PrometheusClient

        self.url = url
        self.selector = selector.strip().strip("{}")
        self.series = series
        self.client = PrometheusClient(url, timeout_s=SCRAPE_TIMEOUT_S)

    def describe(self) -> str:
        return f"{self.url} ({{{self.selector}}})" if self.selector else self.url

    def _scalar(self, fn: str, name: str | None) -> float | None:
        if not name:
            return None
        samples = self.client.query(f"{fn}({name}{{{self.selector}}})")
        return float(samples[0].value) if samples else None

    def read(self) -> Sample:
        s = self.series
        sample: Sample = {"running": self._scalar("sum", s.running), "waiting": self._scalar("sum", s.waiting),
                          "kv_cache_usage": self._scalar("max", s.kv_cache_usage), "ttft_buckets": None,
                          "ttft_count": None, "ttft_sum": None}
        if s.ttft:
            rows = self.client.query(f"sum by (le) ({s.ttft}_bucket{{{self.selector}}})")
            if rows:
                buckets = sorted((float(r.labels.get("le", "inf")), float(r.value)) for r in rows)
                sample["ttft_buckets"] = [[_le(le), c] for le, c in buckets]
                sample["ttft_count"] = buckets[-1][1]
        return sample

    def close(self) -> None:
        self.client.close()


Source = ScrapeSource | PrometheusSource


class ServerView:
    """Reads ``source`` every second in a thread and appends each sample to ``path`` (``start``/``stop``)."""

    def __init__(self, source: Source, path: Path, interval_s: float = INTERVAL_S,
                 warn: Callable[[str], None] | None = None) -> None:
        self.source = source
        self.path = path
        self.interval_s = interval_s
        self.warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
        self.samples = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="forge-slo-server-view", daemon=True)

    def start(self) -> ServerView:
        meta = {"source": self.source.describe(), "preset": self.source.series.preset,
                "series": self.source.series.names(), "interval_s": self.interval_s}
        self.path.write_text(json.dumps({"meta": meta}, sort_keys=True) + "\n", encoding="utf-8")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=SCRAPE_TIMEOUT_S + 2)
        self.source.close()

    def _loop(self) -> None:
        next_at = time.monotonic()
        with self.path.open("a", encoding="utf-8") as out:
            while not self._stop.is_set() and self.samples < MAX_SAMPLES:
                self._once(out)
                next_at += self.interval_s
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _once(self, out: Any) -> None:
        t = time.time()
        try:
            sample = self.source.read()
        except Exception as exc:  # the server is busy or gone: the run goes on, the gap shows in the chart
            self.errors += 1
            if self.errors == 1:
                self.warn(f"server metrics: cannot read {self.source.describe()}: {type(exc).__name__}: {exc}")
            return
        if not has_series(sample):
            self.errors += 1
            if self.errors == 1:
                self.warn(f"server metrics: {self.source.describe()} has none of the {self.source.series.preset} "
                          "series (running, waiting, KV-cache usage, TTFT); --server-preset names another server")
            return
        try:
            out.write(json.dumps({"t": t, **sample}, allow_nan=False) + "\n")
            out.flush()
        except (ValueError, OSError) as exc:  # a NaN gauge, a full disk: the sample is lost, the run goes on
            self.errors += 1
            if self.errors == 1:
                self.warn(f"server metrics: cannot keep a sample: {exc}")
            return
        self.samples += 1


def read_samples(path: Path) -> tuple[dict[str, Any], list[Sample]]:
    """(meta, samples) of a ``server_metrics.jsonl``; a torn last line (a run still writing) is skipped, as is
    any line that is not a sample."""
    if not path.is_file():
        return {}, []
    meta: dict[str, Any] = {}
    samples: list[Sample] = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle):
            if number > MAX_SAMPLES or not line.endswith("\n"):
                break
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and isinstance(data.get("meta"), dict):
                meta = data["meta"]
            elif isinstance(data, dict) and isinstance(data.get("t"), int | float):
                samples.append(data)
    return meta, samples


# -- figures for the report


def bucket_quantile(q: float, buckets: Iterable[Sequence[float]]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolating linearly inside a bucket as Prometheus'
    ``histogram_quantile`` does; None without observations."""
    rows = sorted((float(le), float(c)) for le, c in buckets)
    if not rows or rows[-1][1] <= 0:
        return None
    rank = q * rows[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in rows:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return rows[-1][0] if math.isfinite(rows[-1][0]) else prev_le


def bucket_delta(before: Sample | None, after: Sample) -> list[list[float]] | None:
    """The TTFT observations between two samples (a server restart, whose counters fall, gives None)."""
    b1 = after.get("ttft_buckets")
    if not b1:
        return None
    if before is None or not before.get("ttft_buckets"):
        return [[float(le), float(c)] for le, c in b1]
    old = {float(le): float(c) for le, c in before["ttft_buckets"]}
    out = []
    for le, c in b1:
        diff = float(c) - old.get(float(le), 0.0)
        if diff < 0:
            return None
        out.append([float(le), diff])
    return out


def window_quantiles(samples: Sequence[Sample], start: float, end: float,
                     qs: Sequence[float] = (0.5, 0.99)) -> list[float | None]:
    """The server's TTFT quantiles over [start, end]: from the last sample at or before ``start`` to the last at
    or before ``end`` (None where there is nothing to tell)."""
    before = [s for s in samples if s["t"] <= start]
    upto = [s for s in samples if s["t"] <= end]
    if not upto:
        return [None] * len(qs)
    delta = bucket_delta(before[-1] if before else samples[0], upto[-1])
    if delta is None:
        return [None] * len(qs)
    return [bucket_quantile(q, delta) for q in qs]
