"""What the status page shows, read from Prometheus: every SLO's recorded numbers per group, its alerts, and
for one SLO its budget burn-down, error ratio over time and alert history.

Every number comes from the compiled recording rules (names from :mod:`forge_slo.conventions`), read at one
instant so a page is consistent. A number that cannot be read is ``None`` ("no data": no series, or Prometheus
could not be asked); NaN means the recording exists but had no traffic to judge. Neither is ever shown as zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.compile.rules import absent_alert_name, burn_alert_name
from forge_slo.durations import format_duration
from forge_slo.errors import SourceError
from forge_slo.oncall.history import Interval, intervals
from forge_slo.sources.prometheus import Alert, PrometheusClient, Sample
from forge_slo.spec.model import PAGE, SLO, TICKET, ServiceSpec

# Ranks of the default order, worst first.
RANK_PAGE, RANK_TICKET, RANK_NO_DATA, RANK_MEASURED, RANK_NO_TRAFFIC = range(5)
BURN_DOWN_POINTS = 120
ERROR_RATIO_POINTS = 200
HISTORY_POINTS = 2000


@dataclass(frozen=True)
class Firing:
    """An alert of an SLO, firing or pending, as Prometheus reports it."""

    name: str
    severity: str
    state: str
    windows: str  # "1h/5m", empty for the missing-SLI alert
    active_at: str


@dataclass(frozen=True)
class SloRow:
    """One SLO for one set of group labels: its recorded numbers at the page's instant, and its alerts."""

    spec: ServiceSpec
    slo: SLO
    group: Mapping[str, str]
    period_error_ratio: float | None
    remaining: float | None
    burn: Mapping[float, float | None]  # alert window (seconds) -> burn rate over it
    alerts: tuple[Firing, ...] = ()

    @property
    def attained(self) -> float | None:
        return None if self.period_error_ratio is None else 1.0 - self.period_error_ratio

    @property
    def frozen(self) -> bool:
        """Whether the spec's budget policy freezes releases because of this row."""
        policy = self.spec.budget_policy
        return (policy is not None and policy.covers(self.slo.name) and self.remaining is not None
                and not math.isnan(self.remaining) and self.remaining < policy.freeze_below_ratio)

    def firing(self, severity: str) -> bool:
        return any(a.state == "firing" and a.severity == severity for a in self.alerts)

    @property
    def rank(self) -> int:
        if self.firing(PAGE):
            return RANK_PAGE
        if self.firing(TICKET):
            return RANK_TICKET
        if self.remaining is None:
            return RANK_NO_DATA
        return RANK_NO_TRAFFIC if math.isnan(self.remaining) else RANK_MEASURED

    @property
    def max_burn(self) -> float:
        values = [b for b in self.burn.values() if b is not None and not math.isnan(b)]
        return max(values, default=0.0)

    def worst_key(self) -> tuple[int, float, float]:
        """Firing pages first, then tickets, missing data, the least budget left, the fastest burn."""
        remaining = self.remaining if self.remaining is not None and not math.isnan(self.remaining) else math.inf
        return self.rank, remaining, -self.max_burn

    def group_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.group.items()))


@dataclass(frozen=True)
class Status:
    """Every SLO's rows at ``at``; ``problem`` says why Prometheus could not be read (then every number is None)."""

    rows: tuple[SloRow, ...]
    at: float
    problem: str | None = None


def windows_of(spec: ServiceSpec) -> list[float]:
    return spec.windows_seconds() or [spec.base_window_seconds]


def _names(specs: Sequence[ServiceSpec]) -> list[str]:
    names = {cv.PERIOD_ERROR_RATIO, cv.ERROR_BUDGET_REMAINING}
    for spec in specs:
        names.update(cv.error_ratio(w) for w in windows_of(spec))
    return sorted(names)


def group_labels(labels: Mapping[str, str], spec: ServiceSpec, slo: SLO) -> dict[str, str]:
    """The labels that tell one group of an SLO from another (``group_by``, a gauge's ``by``)."""
    fixed = {"__name__", "alertname", "alertstate", cv.SERVICE_LABEL, cv.SLO_LABEL, cv.SEVERITY_LABEL,
             cv.LONG_WINDOW_LABEL, cv.SHORT_WINDOW_LABEL, *spec.labels, *slo.labels}
    for policy in spec.page_and_ticket(slo):
        fixed.update(policy.labels)
    return {k: v for k, v in labels.items() if k not in fixed}


def _firing(alert: Alert) -> Firing:
    labels = alert.labels
    long_w, short_w = labels.get(cv.LONG_WINDOW_LABEL, ""), labels.get(cv.SHORT_WINDOW_LABEL, "")
    return Firing(name=labels.get("alertname", ""), severity=labels.get(cv.SEVERITY_LABEL, ""), state=alert.state,
                  windows=f"{long_w}/{short_w}" if long_w else "", active_at=alert.active_at)


def _matches(alert: Alert, spec: ServiceSpec, slo: SLO, group: Mapping[str, str]) -> bool:
    labels = alert.labels
    if labels.get(cv.SERVICE_LABEL) != spec.service or labels.get(cv.SLO_LABEL) != slo.name:
        return False
    return all(labels[k] == v for k, v in group.items() if k in labels)


def rows_for(spec: ServiceSpec, slo: SLO, samples: Sequence[Sample], alerts: Sequence[Alert]) -> list[SloRow]:
    """The rows of one SLO from the samples of its recordings (one row without numbers when there are none)."""
    by_group: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
    for sample in samples:
        if sample.labels.get(cv.SERVICE_LABEL) != spec.service or sample.labels.get(cv.SLO_LABEL) != slo.name:
            continue
        key = tuple(sorted(group_labels(sample.labels, spec, slo).items()))
        by_group.setdefault(key, {})[sample.labels.get("__name__", "")] = sample.value
    if not by_group:
        by_group[()] = {}
    budget = slo.error_budget_ratio
    rows = []
    for key, values in sorted(by_group.items()):
        group = dict(key)
        burn: dict[float, float | None] = {}
        for window in windows_of(spec):
            ratio = values.get(cv.error_ratio(window))
            burn[window] = None if ratio is None else ratio / budget
        rows.append(SloRow(
            spec=spec, slo=slo, group=group, period_error_ratio=values.get(cv.PERIOD_ERROR_RATIO),
            remaining=values.get(cv.ERROR_BUDGET_REMAINING), burn=burn,
            alerts=tuple(_firing(a) for a in alerts if a.state in ("firing", "pending")
                         and _matches(a, spec, slo, group)),
        ))
    return rows


def read_status(client: PrometheusClient, specs: Sequence[ServiceSpec], at: float) -> Status:
    """Every SLO of ``specs`` at ``at``: two reads of Prometheus (the recordings, the alerts)."""
    services = sorted({spec.service for spec in specs})
    query = promql.selector("", None, [
        f"__name__=~{promql.quote(promql.any_of_regex(_names(specs)))}",
        promql.regex_matcher(cv.SERVICE_LABEL, promql.any_of_regex(services)),
    ])
    try:
        samples = client.query(query, at=at)
        alerts = client.alerts()
    except SourceError as exc:
        return unknown_status(specs, at, str(exc))
    rows = [row for spec in specs for slo in spec.slos for row in rows_for(spec, slo, samples, alerts)]
    return Status(tuple(rows), at)


def unknown_status(specs: Sequence[ServiceSpec], at: float, problem: str) -> Status:
    """Every SLO without numbers, and why (Prometheus could not be read)."""
    rows = [row for spec in specs for slo in spec.slos for row in rows_for(spec, slo, [], [])]
    return Status(tuple(rows), at, problem)


# One SLO's page ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """A time series for a chart: its group's labels and (unix seconds, value) points."""

    group: Mapping[str, str]
    points: tuple[tuple[float, float], ...]
    end_value: float | None = None  # the recorded value the line ends at, when one is known


@dataclass(frozen=True)
class Detail:
    """Everything the page of one SLO shows; ``problem`` lists what could not be read."""

    spec: ServiceSpec
    slo: SLO
    status: Status
    burn_down: tuple[Line, ...] = ()
    error_ratio: tuple[Line, ...] = ()
    error_ratio_window: float = 0.0
    error_ratio_range: float = 0.0
    history: tuple[Interval, ...] = ()
    history_step: float = 0.0
    problems: tuple[str, ...] = field(default_factory=tuple)


def _sel(spec: ServiceSpec, slo: SLO) -> dict[str, str]:
    return {cv.SERVICE_LABEL: spec.service, cv.SLO_LABEL: slo.name}


def burn_down(client: PrometheusClient, spec: ServiceSpec, slo: SLO, rows: Sequence[SloRow],
              at: float) -> list[Line]:
    """The budget left over the period that ends at ``at``, per group, from 100% at its start to the recorded
    ``error_budget_remaining`` now: what is spent by time t is the errors up to t over the errors allowed in the
    whole period, so the line steps down where the errors were and ends exactly on the recording."""
    period = spec.period_seconds
    step = max(1.0, round(period / BURN_DOWN_POINTS))
    errors = promql.selector(cv.error_rate(spec.base_window_seconds), _sel(spec, slo))
    series = client.query_range(f"sum_over_time({errors}[{format_duration(step)}])", at - period + step, at, step)
    sums = {tuple(sorted(group_labels(s.labels, spec, slo).items())): s.points for s in series}
    lines = []
    for row in rows:
        if row.remaining is None or math.isnan(row.remaining):
            continue
        points = [(p[0], p[1]) for p in sums.get(tuple(sorted(row.group.items())), ()) if math.isfinite(p[1])]
        total = sum(v for _, v in points)
        spent = 1.0 - row.remaining
        out = [(at - period, 1.0)]
        running = 0.0
        for t, value in points:
            running += value
            out.append((t, 1.0 - spent * running / total if total > 0 else row.remaining))
        if out[-1][0] < at:
            out.append((at, row.remaining))
        out[-1] = (at, row.remaining)
        lines.append(Line(row.group, tuple(out), row.remaining))
    return lines


def error_ratio_lines(client: PrometheusClient, spec: ServiceSpec, slo: SLO, at: float,
                      range_seconds: float) -> list[Line]:
    """The base window's error ratio over ``range_seconds`` before ``at``, per group."""
    step = max(1.0, round(range_seconds / ERROR_RATIO_POINTS))
    expr = promql.selector(cv.error_ratio(spec.base_window_seconds), _sel(spec, slo))
    series = client.query_range(expr, at - range_seconds, at, step)
    return [Line(group_labels(s.labels, spec, slo), tuple(p for p in s.points if math.isfinite(p[1])))
            for s in sorted(series, key=lambda s: sorted(s.labels.items()))]


def alert_history(client: PrometheusClient, spec: ServiceSpec, slo: SLO, at: float) -> tuple[list[Interval], float]:
    """When the SLO's alerts fired over its period (Prometheus' ``ALERTS`` series), and the step they are read at."""
    period = spec.period_seconds
    step = max(1.0, round(period / HISTORY_POINTS))
    names = promql.any_of_regex([burn_alert_name(spec, slo), absent_alert_name(spec, slo)])
    expr = promql.selector("ALERTS", {**_sel(spec, slo), "alertstate": "firing"},
                           [promql.regex_matcher("alertname", names)])
    return intervals(client, expr, at - period, at, step), step


def default_range(spec: ServiceSpec) -> float:
    """How far back the error-ratio chart looks: twice the longest alert window, within the period."""
    return min(spec.period_seconds, max(2 * max(windows_of(spec)), 10 * spec.base_window_seconds))


def unknown_detail(spec: ServiceSpec, slo: SLO, at: float, problem: str, range_seconds: float | None = None) -> Detail:
    """One SLO's page without data, and why."""
    rows = rows_for(spec, slo, [], [])
    return Detail(spec, slo, Status(tuple(rows), at, problem), error_ratio_window=spec.base_window_seconds,
                  error_ratio_range=range_seconds or default_range(spec), problems=(problem,))


def read_detail(client: PrometheusClient, spec: ServiceSpec, slo: SLO, at: float,
                range_seconds: float | None = None) -> Detail:
    """One SLO's page; each part that cannot be read is left empty and named in ``problems``."""
    status = read_status(client, [spec], at)
    rows = [r for r in status.rows if r.slo.name == slo.name]
    span = range_seconds or default_range(spec)
    detail = Detail(spec, slo, Status(tuple(rows), at, status.problem), error_ratio_window=spec.base_window_seconds,
                    error_ratio_range=span)
    if status.problem is not None:
        return replace(detail, problems=(status.problem,))
    try:
        detail = replace(detail, burn_down=tuple(burn_down(client, spec, slo, rows, at)))
        detail = replace(detail, error_ratio=tuple(error_ratio_lines(client, spec, slo, at, span)))
        history, step = alert_history(client, spec, slo, at)
        return replace(detail, history=tuple(history), history_step=step)
    except SourceError as exc:
        return replace(detail, problems=(str(exc),))
