"""Where the judge's data comes from: Prometheus (histogram buckets and counters per arm) or load-test records.

Both give, for each SLO of a spec, the two arms' observations over a time range [start, end]: latency as
bucket counts over shared bounds (seconds), errors as counts. A Prometheus failure raises
:class:`~forge_slo.errors.SourceError`; the callers turn it into an inconclusive verdict (fail closed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from forge_slo import promql
from forge_slo.canary import stats
from forge_slo.canary.model import ErrorData, LatencyData, MissingData, SloData
from forge_slo.canary.selectors import format_selector
from forge_slo.compile.sli import sli_queries
from forge_slo.durations import format_duration
from forge_slo.sources.prometheus import PrometheusClient
from forge_slo.sources.records import RequestRecord
from forge_slo.spec.model import SLO, AvailabilitySLI, LatencySLI, ServiceSpec, frozen_map
from forge_slo.spec.presets import Histogram

# Histograms observed once per generated token: a request's observations are not independent, so their
# counts are scaled down to the number of requests before judging (conservative).
PER_TOKEN_METRICS = frozenset({
    "vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds", "sglang:inter_token_latency_seconds",
})

# Record field per latency alias (tpot/itl use the per-request TPOT: per-gap values are not independent).
RECORD_FIELDS = {"ttft": "ttft_s", "e2e": "e2e_s", "tpot": "tpot_s", "itl": "tpot_s", "tpot_legacy": "tpot_s"}


class CanarySource(Protocol):
    """A source of both arms' data. ``collect`` raises SourceError when the source cannot be read."""

    def describe(self) -> str: ...

    def collect(self, spec: ServiceSpec, start: float, end: float) -> dict[str, SloData]: ...


# ---------------------------------------------------------------------------------------------- Prometheus

class PrometheusSource:
    """Both arms from Prometheus: each arm's matchers are added to the spec's selector (and win on a clash)."""

    def __init__(self, client: PrometheusClient, baseline: Mapping[str, str], canary: Mapping[str, str]) -> None:
        self.client = client
        self.arms = {"baseline": dict(baseline), "canary": dict(canary)}

    def describe(self) -> str:
        return (f"Prometheus {self.client.url}, baseline {format_selector(self.arms['baseline'])}, "
                f"canary {format_selector(self.arms['canary'])}")

    def collect(self, spec: ServiceSpec, start: float, end: float) -> dict[str, SloData]:
        span = end - start
        out: dict[str, SloData] = {}
        if span < 1.0:
            self.client.query("vector(1)", at=end)  # nothing to read yet, but fail closed if Prometheus is down
            return {slo.name: MissingData("the analysis has just started: no time range to read yet")
                    for slo in spec.slos}
        window = format_duration(float(math.ceil(span)))
        for slo in spec.slos:
            if isinstance(slo.sli, LatencySLI):
                out[slo.name] = self._latency(spec, slo.sli.histogram, window, end)
            elif isinstance(slo.sli, AvailabilitySLI):
                out[slo.name] = self._errors(spec, slo, window, end, span)
        return out

    def _matchers(self, spec: ServiceSpec, arm: str) -> dict[str, str]:
        return {**dict(spec.selector), **self.arms[arm]}

    def _latency(self, spec: ServiceSpec, histogram: Histogram, window: str, at: float) -> SloData:
        cumulative: dict[str, dict[float, float]] = {}
        for arm in ("baseline", "canary"):
            sel = promql.selector(f"{histogram.metric}_bucket", self._matchers(spec, arm))
            samples = self.client.query(f"sum by (le) (increase({sel}[{window}]))", at=at)
            by_bound: dict[float, float] = {}
            for sample in samples:
                try:
                    bound = float(sample.labels.get("le", ""))
                except ValueError:
                    continue
                if math.isfinite(sample.value):
                    by_bound[bound] = by_bound.get(bound, 0.0) + max(sample.value, 0.0)
            if not by_bound or math.inf not in by_bound:
                return MissingData(f"no {histogram.metric} buckets for the {arm} "
                                   f"{format_selector(self._matchers(spec, arm))} in the last {window}")
            cumulative[arm] = by_bound
        common = sorted(set(cumulative["baseline"]) & set(cumulative["canary"]))
        note = ""
        if len(common) < max(len(cumulative["baseline"]), len(cumulative["canary"])):
            note = "the arms' bucket bounds differ: compared on the bounds they share"
        counts = {}
        for arm, by_bound in cumulative.items():
            cum = np.maximum.accumulate(np.array([by_bound[b] for b in common], dtype=np.float64))
            counts[arm] = np.diff(np.concatenate([[0.0], cum]))
        if histogram.metric in PER_TOKEN_METRICS:
            scaled = self._per_token_scale(spec, window, at, counts)
            if scaled:
                note = "; ".join(filter(None, [note, scaled]))
        bounds = tuple(float(b) * histogram.unit_seconds if math.isfinite(b) else math.inf for b in common)
        return LatencyData(bounds, tuple(counts["baseline"].tolist()), tuple(counts["canary"].tolist()), note)

    def _per_token_scale(self, spec: ServiceSpec, window: str, at: float, counts: dict[str, np.ndarray]) -> str:
        request_hist = spec.preset.histograms.get("e2e") or spec.preset.histograms.get("ttft")
        if request_hist is None:
            return "per-token observations judged as independent (no request histogram to scale them by)"
        for arm in ("baseline", "canary"):
            sel = promql.selector(f"{request_hist.metric}_count", self._matchers(spec, arm))
            requests = self.client.scalar(f"sum(increase({sel}[{window}]))", default=None)
            tokens = float(counts[arm].sum())
            if requests is None or not math.isfinite(requests) or requests <= 0 or tokens <= requests:
                continue
            counts[arm] = counts[arm] * (requests / tokens)
        return "per-token observations scaled to the number of requests (tokens of one request are not independent)"

    def _errors(self, spec: ServiceSpec, slo: SLO, window: str, at: float, span: float) -> SloData:
        values: dict[str, tuple[float, float]] = {}
        for arm in ("baseline", "canary"):
            arm_spec = dataclasses.replace(spec, selector=frozen_map(self._matchers(spec, arm)), group_by=())
            queries = sli_queries(arm_spec, slo)
            total = self.client.scalar(f"sum({queries.total_over(window)}) * {promql.number(span)}", default=None)
            if total is None or not math.isfinite(total):
                return MissingData(f"no request counters for the {arm} "
                                   f"{format_selector(self._matchers(spec, arm))} in the last {window}")
            errors = self.client.scalar(f"sum({queries.errors_over(window)}) * {promql.number(span)}", default=0.0)
            values[arm] = (max(errors or 0.0, 0.0) if errors is not None and math.isfinite(errors) else 0.0,
                           max(total, 0.0))
        (e_b, n_b), (e_c, n_c) = values["baseline"], values["canary"]
        return ErrorData(e_b, n_b, e_c, n_c)


# ------------------------------------------------------------------------------------------------- records

def is_server_error(record: RequestRecord) -> bool:
    """A failed request the server is to blame for: not a client error (4xx other than 429)."""
    if record.ok:
        return False
    status = record.status
    return not (status is not None and 400 <= status < 500 and status != 429)


class RecordsSource:
    """Both arms from per-request load-test records (warm-up records are left out)."""

    def __init__(self, baseline: Sequence[RequestRecord], canary: Sequence[RequestRecord],
                 names: tuple[str, str] = ("baseline records", "canary records")) -> None:
        self.arms = {"baseline": [r for r in baseline if not r.warmup],
                     "canary": [r for r in canary if not r.warmup]}
        self.names = names

    def describe(self) -> str:
        return (f"load-test records: {self.names[0]} ({len(self.arms['baseline'])} baseline requests), "
                f"{self.names[1]} ({len(self.arms['canary'])} canary requests)")

    def time_range(self) -> tuple[float, float]:
        times = [r.start_time for arm in self.arms.values() for r in arm]
        if not times:
            return 0.0, 0.0
        return min(times), max(times)

    def collect(self, spec: ServiceSpec, start: float, end: float) -> dict[str, SloData]:
        arms = {arm: [r for r in recs if start <= r.start_time <= end] for arm, recs in self.arms.items()}
        out: dict[str, SloData] = {}
        for slo in spec.slos:
            if isinstance(slo.sli, LatencySLI):
                field = RECORD_FIELDS.get(slo.sli.alias)
                if field is None:
                    out[slo.name] = MissingData(f"load-test records carry no {slo.sli.alias!r} latency "
                                                f"(they have {', '.join(sorted(set(RECORD_FIELDS.values())))})")
                    continue
                values = {arm: np.array([getattr(r, field) for r in recs if r.ok and getattr(r, field) is not None],
                                        dtype=np.float64) for arm, recs in arms.items()}
                both = np.concatenate([values["baseline"], values["canary"]])
                if both.size == 0:
                    out[slo.name] = MissingData(f"no successful requests with {field} in the records")
                    continue
                grid = stats.log_grid(both)
                note = "per-request values binned on a 0.1% log grid"
                if field == "tpot_s" and slo.sli.alias in ("itl", "tpot_legacy"):
                    note += "; per-request TPOT stands for the per-token gaps (they are not independent)"
                out[slo.name] = LatencyData(
                    tuple(grid.tolist()), tuple(stats.bin_counts(grid, values["baseline"]).tolist()),
                    tuple(stats.bin_counts(grid, values["canary"]).tolist()), note)
            elif isinstance(slo.sli, AvailabilitySLI):
                counts = {arm: (float(sum(is_server_error(r) for r in recs)), float(len(recs)))
                          for arm, recs in arms.items()}
                (e_b, n_b), (e_c, n_c) = counts["baseline"], counts["canary"]
                out[slo.name] = ErrorData(e_b, n_b, e_c, n_c,
                                          "failed requests except client errors (4xx other than 429)")
        return out
