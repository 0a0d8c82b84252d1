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
from forge_slo.canary.model import ErrorData, InvalidData, LatencyData, MissingData, SloData
from forge_slo.canary.selectors import format_selector
from forge_slo.compile.sli import sli_queries
from forge_slo.durations import format_duration
from forge_slo.errors import SourceError
from forge_slo.sources.prometheus import PrometheusClient, Sample
from forge_slo.sources.records import RequestRecord, outcome_of
from forge_slo.spec.model import SLO, AvailabilitySLI, LatencySLI, ServiceSpec, frozen_map
from forge_slo.spec.presets import QUANTITIES, Histogram

ARMS = ("baseline", "canary")

class CanarySource(Protocol):
    """A source of both arms' data. ``collect`` raises SourceError when the source cannot be read; ``stage``
    names the load-test stage judged (None: not a staged source)."""

    stage: str | None

    def describe(self) -> str: ...

    def collect(self, spec: ServiceSpec, start: float, end: float) -> dict[str, SloData]: ...


# ---------------------------------------------------------------------------------------------- Prometheus

class PrometheusSource:
    """Both arms from Prometheus: each arm's matchers are added to the spec's selector (and win on a clash)."""

    stage: str | None = None

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
        for arm in ARMS:
            sel = promql.selector(f"{histogram.metric}_bucket", self._matchers(spec, arm))
            query = f"sum by (le) (increase({sel}[{window}]))"
            by_bound = _buckets(self.client.query(query, at=at), arm, query)
            if isinstance(by_bound, InvalidData):
                return by_bound
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
        if _per_token(spec, histogram):
            scaled = self._per_token_scale(spec, window, at, counts)
            if not isinstance(scaled, str):
                return scaled
            note = "; ".join(filter(None, [note, scaled]))
        bounds = tuple(float(b) * histogram.unit_seconds if math.isfinite(b) else math.inf for b in common)
        return LatencyData(bounds, tuple(counts["baseline"].tolist()), tuple(counts["canary"].tolist()), note)

    def _per_token_scale(self, spec: ServiceSpec, window: str, at: float, counts: dict[str, np.ndarray]
                         ) -> str | MissingData | InvalidData:
        """Scale each arm's per-token counts down to its number of requests (in place); the note, or why not."""
        request_hist = spec.preset.histograms.get("e2e") or spec.preset.histograms.get("ttft")
        if request_hist is None:
            return "per-token observations judged as independent (no request histogram to scale them by)"
        for arm in ARMS:
            sel = promql.selector(f"{request_hist.metric}_count", self._matchers(spec, arm))
            query = f"sum(increase({sel}[{window}]))"
            requests = self.client.scalar(query, default=None, at=at)
            if requests is None:
                # Judging per-token observations as independent would overstate the evidence: not judged.
                return MissingData(f"no {request_hist.metric}_count for the {arm} "
                                   f"{format_selector(self._matchers(spec, arm))} in the last {window} to scale "
                                   "its per-token observations by")
            problem = _count_problem(requests, f"the {arm}'s request count (to scale per-token observations)",
                                     query)
            if problem:
                return problem
            tokens = float(counts[arm].sum())
            if tokens > requests:
                counts[arm] = counts[arm] * (requests / tokens)
        return "per-token observations scaled to the number of requests (tokens of one request are not independent)"

    def _errors(self, spec: ServiceSpec, slo: SLO, window: str, at: float, span: float) -> SloData:
        values: dict[str, tuple[float, float]] = {}
        for arm in ARMS:
            arm_spec = dataclasses.replace(spec, selector=frozen_map(self._matchers(spec, arm)), group_by=())
            queries = sli_queries(arm_spec, slo)
            total_query = f"sum({queries.total_over(window)}) * {promql.number(span)}"
            total = self.client.scalar(total_query, default=None, at=at)
            if total is None:
                return MissingData(f"no request counters for the {arm} "
                                   f"{format_selector(self._matchers(spec, arm))} in the last {window}")
            errors_query = f"sum({queries.errors_over(window)}) * {promql.number(span)}"
            # No series at all is zero errors: error counters often appear with the first error.
            errors = self.client.scalar(errors_query, default=0.0, at=at)
            for value, what, query in ((total, "request count", total_query),
                                       (errors, "error count", errors_query)):
                problem = _count_problem(value, f"the {arm}'s {what}", query)
                if problem:
                    return problem
            values[arm] = (float(errors or 0.0), total)
        (e_b, n_b), (e_c, n_c) = values["baseline"], values["canary"]
        return ErrorData(e_b, n_b, e_c, n_c)


def _count_problem(value: float | None, what: str, query: str) -> InvalidData | None:
    """A count Prometheus returned must be a finite number >= 0; NaN or Inf is never read as zero."""
    if value is not None and math.isfinite(value) and value >= 0:
        return None
    return InvalidData(f"{what} is {_value_text(value)}, not a count: {query}")


def _value_text(value: float | None) -> str:
    if value is None:
        return "missing"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:g}"


def _buckets(samples: Sequence[Sample], arm: str, query: str) -> dict[float, float] | InvalidData:
    """Cumulative counts by bucket bound (``le``); InvalidData naming the bucket when one is not a count."""
    by_bound: dict[float, float] = {}
    for sample in samples:
        le = sample.labels.get("le")
        try:
            bound = float(le) if le is not None else math.nan
        except ValueError:
            bound = math.nan
        if math.isnan(bound) or bound == -math.inf:
            return InvalidData(f"the {arm}'s series {dict(sample.labels)} has no bucket bound (le): {query}")
        problem = _count_problem(sample.value, f'the {arm}\'s bucket le="{le}"', query)
        if problem:
            return problem
        by_bound[bound] = by_bound.get(bound, 0.0) + sample.value
    return by_bound


# ------------------------------------------------------------------------------------------------- records

class RecordsSource:
    """Both arms from per-request load-test records (warm-up records are left out). ``stage`` names the sweep
    stage the records were picked from (the caller picks them), for the verdict to say which.

    A record whose start time is not finite raises SourceError (it could not be placed in any look); a
    latency that is not a finite number of seconds makes that SLO's checks invalid, naming the record.
    """

    def __init__(self, baseline: Sequence[RequestRecord], canary: Sequence[RequestRecord],
                 names: tuple[str, str] = ("baseline records", "canary records"), stage: str | None = None) -> None:
        self.arms = {"baseline": [r for r in baseline if not r.warmup],
                     "canary": [r for r in canary if not r.warmup]}
        self.names = names
        self.stage = stage
        for (arm, records), name in zip(self.arms.items(), names, strict=True):
            bad = next((r for r in records if not _is_seconds(r.start_time)), None)
            if bad is not None:
                raise SourceError(f"{name}: the {arm} record {_record_name(bad)} has start_time "
                                  f"{bad.start_time!r}, not a time")

    def describe(self) -> str:
        stage = f" of stage {self.stage}" if self.stage is not None else ""
        return (f"load-test records{stage}: {self.names[0]} ({len(self.arms['baseline'])} baseline requests), "
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
                out[slo.name] = _record_latency(slo.sli, arms)
            elif isinstance(slo.sli, AvailabilitySLI):
                out[slo.name] = _record_errors(slo.sli, arms)
        return out


def _record_errors(sli: AvailabilitySLI, arms: Mapping[str, Sequence[RequestRecord]]) -> ErrorData:
    """Failed requests over counted ones, sorted by outcome as the server's counters sort them: client errors
    never count; shed requests (429, 503) count as failures or not at all, as the spec's policy says."""
    failing = {"server_error", "shed"} if sli.policy.count_shed else {"server_error"}
    counted = failing | {"served"}
    counts = {}
    for arm, recs in arms.items():
        outcomes = [outcome_of(r) for r in recs]
        counts[arm] = (float(sum(o in failing for o in outcomes)), float(sum(o in counted for o in outcomes)))
    (e_b, n_b), (e_c, n_c) = counts["baseline"], counts["canary"]
    shed = "shed requests (429, 503) count as failures" if sli.policy.count_shed else "shed requests left out"
    return ErrorData(e_b, n_b, e_c, n_c, f"failed requests over served and failed ones; client errors left out, {shed}")


def _per_token(spec: ServiceSpec, histogram: Histogram) -> bool:
    quantity = QUANTITIES.get(spec.preset.alias_of(histogram)) if histogram in spec.preset.histograms.values() \
        else None
    return quantity is not None and quantity.per_token


def _record_latency(sli: LatencySLI, arms: Mapping[str, Sequence[RequestRecord]]) -> SloData:
    """One arm's latencies from the record field that measures the alias's quantity; per-token values (ITL)
    are weighted down to the number of requests, since the gaps of one request are not independent. The SLO's
    threshold is a bound of the grid, so the requests over it are counted exactly."""
    alias = sli.alias
    quantity = QUANTITIES.get(alias)
    field = quantity.record_field if quantity is not None else None
    if quantity is None or field is None:
        measured = ", ".join(q.alias for q in QUANTITIES.values() if q.record_field)
        return MissingData(f"load-test records do not measure {alias!r} (they measure {measured})")
    values: dict[str, np.ndarray] = {}
    requests: dict[str, int] = {}
    for arm, recs in arms.items():
        picked = [(r, getattr(r, field)) for r in recs if r.ok and getattr(r, field) is not None]
        flat = [(r, v) for r, value in picked for v in (value if quantity.per_token else (value,))]
        bad = next(((r, v) for r, v in flat if not _is_seconds(v)), None)
        if bad is not None:
            return InvalidData(f"the {arm} record {_record_name(bad[0])} has {field} = {bad[1]!r}, "
                               "not a finite number of seconds >= 0")
        values[arm] = np.array([v for _, v in flat], dtype=np.float64)
        requests[arm] = len(picked)
    both = np.concatenate([values["baseline"], values["canary"]])
    if both.size == 0:
        return MissingData(f"no successful requests with {field} in the records")
    grid = np.union1d(stats.log_grid(both), [sli.threshold_seconds])
    counts = {arm: stats.bin_counts(grid, values[arm]) for arm in arms}
    note = "per-request values binned on a 0.1% log grid"
    if quantity.per_token:
        for arm in arms:
            if values[arm].size > requests[arm] > 0:
                counts[arm] = counts[arm] * (requests[arm] / values[arm].size)
        note = "per-token gaps binned on a 0.1% log grid, weighted to the number of requests (the gaps of one " \
               "request are not independent)"
    return LatencyData(tuple(grid.tolist()), tuple(counts["baseline"].tolist()), tuple(counts["canary"].tolist()),
                       note)


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _record_name(record: RequestRecord) -> str:
    return f"with trace id {record.trace_id!r}" if record.trace_id else f"sent at {record.start_time!r}"
