"""PromQL for an SLI: the rate of failed requests and the rate of all requests over a window."""

from __future__ import annotations

from dataclasses import dataclass

from forge_slo import promql
from forge_slo.spec.model import SLO, AvailabilitySLI, GaugeSLI, LatencySLI, RatioSLI, ServiceSpec
from forge_slo.spec.presets import CounterTerm


@dataclass(frozen=True)
class SliQueries:
    """Per-second rates of failed and of all requests for one SLO, with ``{{window}}`` left open."""

    errors: str
    total: str

    def errors_over(self, window: str) -> str:
        return promql.fill_window(self.errors, window)

    def total_over(self, window: str) -> str:
        return promql.fill_window(self.total, window)


W = promql.WINDOW_PLACEHOLDER


def sli_queries(spec: ServiceSpec, slo: SLO) -> SliQueries:
    sli = slo.sli
    if isinstance(sli, LatencySLI):
        return _latency(spec, sli)
    if isinstance(sli, AvailabilitySLI):
        return _availability(spec, sli)
    if isinstance(sli, GaugeSLI):
        return _gauge(sli)
    assert isinstance(sli, RatioSLI)
    if sli.errors is not None:
        return SliQueries(errors=sli.errors, total=sli.total)
    assert sli.good is not None
    return SliQueries(errors=f"({sli.total}) - ({sli.good})", total=sli.total)


def _latency(spec: ServiceSpec, sli: LatencySLI) -> SliQueries:
    metric = sli.histogram.metric
    total = promql.sum_by(spec.group_by, promql.rate(promql.selector(f"{metric}_count", spec.selector), W))
    good = promql.sum_by(
        spec.group_by,
        promql.rate(promql.selector(f"{metric}_bucket", spec.selector, [promql.le_matcher(sli.bucket_bound)]), W),
    )
    return SliQueries(errors=f"{total} - {good}", total=total)


_BAD_WHEN = {">=": "<", ">": "<=", "<=": ">", "<": ">="}


def _gauge(sli: GaugeSLI) -> SliQueries:
    """Each second is an event; it fails while the aggregated gauge is on the bad side of the threshold."""
    value = f"{sli.aggregate} {promql.by_clause(sli.by)} ({promql.selector(sli.metric, sli.selector)})" if sli.by \
        else f"{sli.aggregate}({promql.selector(sli.metric, sli.selector)})"
    bad = f"({value} {_BAD_WHEN[sli.good_when]} bool {promql.number(sli.threshold)})"
    seconds = f"({value} * 0 + 1)"
    return SliQueries(errors=f"avg_over_time({bad}[{W}:])", total=f"avg_over_time({seconds}[{W}:])")


def _availability(spec: ServiceSpec, sli: AvailabilitySLI) -> SliQueries:
    """Failed over counted requests. When the failures are counted per server (vLLM's HTTP counter has no
    model label) but the total per group, each group is charged the server's failures."""
    errors = _sum_terms(spec, sli.counters.errors)
    total = _sum_terms(spec, sli.counters.total)
    frame = f"({total}) * 0"  # every group of the total, at zero
    missing = _missing(spec, sli.counters.errors)
    if missing and not _missing(spec, sli.counters.total):
        shared = ", ".join(label for label in spec.group_by if label not in missing)
        errors = f"(({frame}) + on({shared}) group_left() ({errors}))"
    # Servers create a failure counter's series with the first failure: until then, zero errors, not no data.
    return SliQueries(errors=f"({errors}) or ({frame})", total=total)


def grouped_by(spec: ServiceSpec, slo: SLO) -> tuple[str, ...]:
    """The group_by labels an SLO's series carry: all of them, except those no counter of an availability
    SLI has (SGLang's HTTP counter has no model label: that SLO is computed per server)."""
    if isinstance(slo.sli, AvailabilitySLI):
        missing = _missing(spec, slo.sli.counters.total)
        return tuple(label for label in spec.group_by if label not in missing)
    return spec.group_by


def _missing(spec: ServiceSpec, terms: tuple[CounterTerm, ...]) -> set[str]:
    """group_by labels that none of the terms carries."""
    return {label for label in spec.group_by if all(label in term.lacks for term in terms)}


def _term(spec: ServiceSpec, term: CounterTerm) -> tuple[str, tuple[str, ...]]:
    labels = tuple(label for label in spec.group_by if label not in term.lacks)
    expr = promql.sum_by(labels, promql.rate(promql.selector(term.metric, spec.selector, term.matchers), W))
    return expr, labels


def _sum_terms(spec: ServiceSpec, terms: tuple[CounterTerm, ...]) -> str:
    """Add counters; a term missing for a group adds nothing instead of erasing the group.

    A term without some group_by labels (a server-wide HTTP counter) is charged to every group that shares
    its remaining labels: ``A + on(<shared>) group_left() B``.
    """
    expr, _ = _term(spec, terms[0])
    for term in terms[1:]:
        other, shared = _term(spec, term)
        if len(shared) == len(spec.group_by):
            combined = f"({expr} + {other})"
        else:
            combined = f"({expr} + on({', '.join(shared)}) group_left() {other})"
        expr = f"({combined} or {expr})"
    return expr
