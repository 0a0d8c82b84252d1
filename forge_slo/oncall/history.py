"""When an expression held: range queries (in chunks Prometheus accepts) turned into intervals per series.

The alert history of the page reads ``ALERTS``; the report evaluates the compiled alert conditions themselves,
so it also works on backfilled data, where no alert was ever evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from forge_slo.sources.prometheus import PrometheusClient

# Prometheus refuses a range query of more than 11,000 points per series.
MAX_POINTS = 10_000


@dataclass(frozen=True)
class Interval:
    """A series had a value from ``start`` until ``end`` (the first step without one; None: still at the end)."""

    labels: Mapping[str, str]
    start: float
    end: float | None

    def duration(self, until: float) -> float:
        return (self.end if self.end is not None else until) - self.start


@dataclass(frozen=True)
class Merged:
    """Overlapping intervals of one kind (a page, a ticket) seen as one: the union of their times."""

    start: float
    end: float | None
    members: tuple[Interval, ...]

    def duration(self, until: float) -> float:
        return (self.end if self.end is not None else until) - self.start


def _runs(points: Sequence[float], step: float, end: float) -> list[tuple[float, float | None]]:
    """Consecutive sample times as (start, end): a gap longer than a step ends a run."""
    runs: list[tuple[float, float | None]] = []
    first = previous = points[0]
    for t in points[1:]:
        if t - previous > 1.5 * step:
            runs.append((first, previous + step))
            first = t
        previous = t
    runs.append((first, None if previous >= end - step / 2 else previous + step))
    return runs


def intervals(client: PrometheusClient, expr: str, start: float, end: float, step: float,
              hold_seconds: float = 0.0) -> list[Interval]:
    """Where ``expr`` had a value in [start, end], per series, evaluated every ``step`` seconds.

    ``hold_seconds``: an alert's ``for``: a run counts from that long after it began, and shorter runs not at
    all (a run still going at ``start`` is taken to have begun then).
    """
    times: dict[tuple[tuple[str, str], ...], list[float]] = {}
    span = step * (MAX_POINTS - 1)
    chunk_start = start
    while chunk_start <= end:
        chunk_end = min(chunk_start + span, end)
        for series in client.query_range(expr, chunk_start, chunk_end, step):
            key = tuple(sorted(series.labels.items()))
            times.setdefault(key, []).extend(t for t, _ in series.points)
        chunk_start = chunk_end + step
    out: list[Interval] = []
    for key, points in times.items():
        for run_start, run_end in _runs(sorted(set(points)), step, end):
            held = run_start + hold_seconds if run_start > start else run_start
            if run_end is not None and run_end <= held:
                continue
            out.append(Interval(dict(key), held, run_end))
    return sorted(out, key=lambda i: (i.start, sorted(i.labels.items())))


def merge(items: Iterable[Interval], step: float) -> list[Merged]:
    """The union of ``items``: intervals that overlap or touch (within a step) become one."""
    out: list[Merged] = []
    for item in sorted(items, key=lambda i: i.start):
        if out:
            last = out[-1]
            if last.end is None or item.start <= last.end + step / 2:
                end = None if last.end is None or item.end is None else max(last.end, item.end)
                out[-1] = Merged(last.start, end, (*last.members, item))
                continue
        out.append(Merged(item.start, item.end, (item,)))
    return out
