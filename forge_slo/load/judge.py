"""Judging load-test records against the SLOs of a spec, client-side, with the meanings every part shares.

- A latency SLO is judged on the record field that measures its alias's quantity
  (:data:`forge_slo.spec.presets.QUANTITIES`: ``ttft`` -> ``ttft_s``, ``tpot`` -> ``tpot_s`` per request,
  ``itl`` -> ``itl_s`` per token, ``e2e`` -> ``e2e_s``): the share of values at or under the threshold (``le``,
  as the servers' buckets count) among successful requests, against the objective. A request without a value
  (TPOT of a one-token answer) is left out, as the servers leave it out of their histograms. Aliases only
  the server measures (``queue``, custom histograms) are listed as not judged.
- An availability SLO sorts requests by :func:`forge_slo.sources.records.outcome_of`, as the presets sort a
  server's counters: served requests are good, server errors bad, shed requests (429, 503) bad or left out as
  the spec's policy says, client errors (other 4xx) left out of both sides.
- Ratio SLIs (arbitrary PromQL) cannot be judged from the client.

Goodput is the rate of successful requests that met every judged latency SLO (vLLM's definition); for a
per-token quantity (``itl``) a request meets it when its own share of values within the threshold reaches
the objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from forge_slo.errors import RunnerError, UsageError
from forge_slo.load.wire import Fields
from forge_slo.sources.records import RequestRecord, outcome_of
from forge_slo.spec.model import AvailabilitySLI, LatencySLI, ServiceSpec
from forge_slo.spec.presets import QUANTITIES, Quantity

NOT_JUDGED = "not judged client-side"
# The aliases whose quantity a load-test record measures, in QUANTITIES' order.
MEASURED = tuple(q.alias for q in QUANTITIES.values() if q.record_field is not None)


@dataclass(frozen=True)
class Criterion:
    """One SLO of the spec as the client can judge it."""

    name: str
    kind: str                      # "latency", "availability" or "unjudged"
    objective_percent: float
    metric: str | None = None      # a latency alias of MEASURED (latency only)
    threshold_s: float | None = None
    reason: str = ""               # why it is not judged
    count_shed: bool = True        # availability: shed requests (429, 503) are failures (else left out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: object, what: str = "criterion") -> Criterion:
        c = Fields(data, what)
        crit = Criterion(c.text("name"), c.choice("kind", ("latency", "availability", "unjudged")),
                         c.number("objective_percent"), c.maybe_text("metric"), c.maybe_number("threshold_s"),
                         c.text("reason"), c.flag("count_shed"))
        if crit.kind == "latency" and (crit.metric not in MEASURED or crit.threshold_s is None):
            raise RunnerError(f"malformed {what}: a latency criterion needs a 'metric' of {', '.join(MEASURED)} "
                              "and a 'threshold_s'")
        return crit

    @property
    def quantity(self) -> Quantity:
        """What a latency criterion measures (its alias's one meaning)."""
        assert self.metric is not None
        return QUANTITIES[self.metric]


@dataclass(frozen=True)
class SpecInfo:
    """The spec a run is judged against, as the client judges it: what the engine receives from the CLI."""

    service: str
    source: str
    criteria: tuple[Criterion, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "source": self.source, "criteria": [c.to_dict() for c in self.criteria]}

    @staticmethod
    def from_dict(data: object) -> SpecInfo:
        f = Fields(data, "spec")
        return SpecInfo(f.text("service"), f.text("source"),
                        tuple(Criterion.from_dict(c.data, c.what) for c in f.children("criteria")))


def select_spec(path: str, service: str | None) -> ServiceSpec:
    """The one service of a spec file to judge; raises SpecErrors (bad spec) or UsageError (which one)."""
    from forge_slo.spec import load_specs

    specs = load_specs([Path(path)])
    if service is not None:
        for spec in specs:
            if spec.service == service:
                return spec
        names = ", ".join(s.service for s in specs) or "none"
        raise UsageError(f"--service: {path} has no service {service!r} (it has: {names})")
    if len(specs) != 1:
        names = ", ".join(s.service for s in specs) or "none"
        raise UsageError(f"--spec: {path} describes {len(specs)} services ({names}); pick one with --service")
    return specs[0]


def judged_spec(path: str | None, service: str | None) -> SpecInfo | None:
    """The criteria of ``--spec`` (and ``--service``), or None without a spec; SpecErrors or UsageError."""
    return criteria_from_spec(select_spec(path, service)) if path else None


def criteria_from_spec(spec: ServiceSpec) -> SpecInfo:
    return SpecInfo(spec.service, spec.source, tuple(_criterion(slo.name, slo.objective_percent, slo.sli)
                                                     for slo in spec.slos))


def _criterion(name: str, objective: float, sli: object) -> Criterion:
    if isinstance(sli, LatencySLI):
        quantity = sli.quantity
        if quantity is not None and quantity.record_field is not None:
            return Criterion(name, "latency", objective, quantity.alias, sli.threshold_seconds)
        what = f"{quantity.title!r}" if quantity is not None else "a custom histogram"
        return Criterion(name, "unjudged", objective,
                         reason=f"{NOT_JUDGED}: latency metric {sli.alias!r} is {what}, which only the server "
                                f"measures (the client measures {', '.join(MEASURED)})")
    if isinstance(sli, AvailabilitySLI):
        return Criterion(name, "availability", objective, count_shed=sli.policy.count_shed)
    return Criterion(name, "unjudged", objective, reason=f"{NOT_JUDGED}: a ratio SLI reads server-side PromQL")


def _values(record: RequestRecord, quantity: Quantity) -> tuple[float, ...]:
    """The record's values of a quantity: every per-token value, or the one per-request value (if any)."""
    assert quantity.record_field is not None
    value = getattr(record, quantity.record_field)
    if quantity.per_token:
        return tuple(value)
    return () if value is None else (float(value),)


def request_meets(record: RequestRecord, crit: Criterion) -> bool:
    """Whether one successful request met one latency criterion (the goodput test)."""
    thr = crit.threshold_s
    assert thr is not None
    values = _values(record, crit.quantity)
    if not values:
        return True  # nothing the server would count either
    good = sum(1 for v in values if v <= thr)
    if crit.quantity.per_token:
        return good * 100.0 >= crit.objective_percent * len(values)
    return good == len(values)


def _availability(records: Sequence[RequestRecord], crit: Criterion) -> tuple[int, int, int]:
    """(good, events, left out): served over served and failed; client errors, and shed requests when the
    policy says so, are left out of both sides."""
    failing = {"server_error", "shed"} if crit.count_shed else {"server_error"}
    outcomes = [outcome_of(r) for r in records]
    good = sum(1 for o in outcomes if o == "served")
    events = good + sum(1 for o in outcomes if o in failing)
    return good, events, len(outcomes) - events


def judge(records: Sequence[RequestRecord], criteria: Sequence[Criterion]) -> list[dict[str, Any]]:
    """Attainment of every criterion over the measured records of one stage."""
    ok = [r for r in records if r.ok]
    results: list[dict[str, Any]] = []
    for crit in criteria:
        row: dict[str, Any] = {"name": crit.name, "kind": crit.kind, "objective_percent": crit.objective_percent}
        if crit.kind == "unjudged":
            row.update(judged=False, met=None, reason=crit.reason)
            results.append(row)
            continue
        if crit.kind == "availability":
            good, events, left_out = _availability(records, crit)
            row.update(left_out=left_out, count_shed=crit.count_shed)
        else:
            thr = crit.threshold_s
            assert thr is not None
            row.update(metric=crit.metric, threshold_s=thr, field=crit.quantity.record_field)
            values = [v for r in ok for v in _values(r, crit.quantity)]
            events, good = len(values), sum(1 for v in values if v <= thr)
        attainment = 100.0 * good / events if events else None
        met = attainment is not None and attainment >= crit.objective_percent
        row.update(judged=True, events=events, good=good, attainment_percent=attainment, met=met)
        if attainment is None:
            row["reason"] = (f"no events to judge (no successful request has {crit.quantity.record_field})"
                             if crit.kind == "latency" else "no events to judge (no request counted)")
        results.append(row)
    return results


def good_requests(records: Sequence[RequestRecord], criteria: Sequence[Criterion]) -> int:
    """Successful requests that met every judged latency criterion."""
    latency = [c for c in criteria if c.kind == "latency"]
    return sum(1 for r in records if r.ok and all(request_meets(r, c) for c in latency))
