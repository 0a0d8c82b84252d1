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

Each judged SLO also gets ``held_confidence``: how sure the stage is that the SLO holds, the probability
that the true share of good events is at least the objective given what was seen (a Beta posterior with
Jeffreys' prior, Beta(1/2, 1/2)). The values of a per-token quantity are not independent (one slow request
brings many slow gaps), so its evidence is counted per request: each request adds its own share of good
values, and the number of events is the number of requests.
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
    preset: str = "vllm"   # whose metric names the server exports

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "source": self.source, "criteria": [c.to_dict() for c in self.criteria],
                "preset": self.preset}

    @staticmethod
    def from_dict(data: object) -> SpecInfo:
        f = Fields(data, "spec")
        return SpecInfo(f.text("service"), f.text("source"),
                        tuple(Criterion.from_dict(c.data, c.what) for c in f.children("criteria")),
                        f.maybe_text("preset") or "vllm")


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
                                                     for slo in spec.slos), spec.preset.name)


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
            evidence = (float(good), float(events))
        else:
            thr = crit.threshold_s
            assert thr is not None
            row.update(metric=crit.metric, threshold_s=thr, field=crit.quantity.record_field)
            values = [v for r in ok for v in _values(r, crit.quantity)]
            events, good = len(values), sum(1 for v in values if v <= thr)
            evidence = _latency_evidence(ok, crit) if crit.quantity.per_token else (float(good), float(events))
        attainment = 100.0 * good / events if events else None
        met = attainment is not None and attainment >= crit.objective_percent
        row.update(judged=True, events=events, good=good, attainment_percent=attainment, met=met,
                   held_confidence=held_confidence(*evidence, crit.objective_percent))
        if attainment is None:
            row["reason"] = (f"no events to judge (no successful request has {crit.quantity.record_field})"
                             if crit.kind == "latency" else "no events to judge (no request counted)")
        results.append(row)
    return results


def good_requests(records: Sequence[RequestRecord], criteria: Sequence[Criterion]) -> int:
    """Successful requests that met every judged latency criterion."""
    latency = [c for c in criteria if c.kind == "latency"]
    return sum(1 for r in records if r.ok and all(request_meets(r, c) for c in latency))


def held_confidence(good: float, events: float, objective_percent: float) -> float:
    """The probability that the true share of good events is at least the objective, having seen ``good`` of
    ``events`` (Beta posterior, Jeffreys' prior): 0.5 with no events at all."""
    from scipy.special import betainc  # type: ignore[import-untyped,unused-ignore]  # here: the CLI starts light

    if events <= 0:
        return 0.5
    bad = max(0.0, events - good)
    return float(1.0 - betainc(good + 0.5, bad + 0.5, min(objective_percent / 100.0, 1.0)))


def _latency_evidence(ok: Sequence[RequestRecord], crit: Criterion) -> tuple[float, float]:
    """(good, events) of a per-token quantity counted per request: each request adds its share of good values."""
    thr = crit.threshold_s
    assert thr is not None
    good = events = 0.0
    for r in ok:
        values = _values(r, crit.quantity)
        if values:
            events += 1
            good += sum(1 for v in values if v <= thr) / len(values)
    return good, events


def _met(row: dict[str, Any]) -> bool:
    att = row.get("attainment_percent")
    return att is not None and float(att) >= float(row["objective_percent"])


def stage_verdict(rows: Sequence[dict[str, Any]], *, final: bool = True) -> tuple[str, float, list[str]]:
    """(verdict, confidence, names) of a stage from its SLO rows: ``held`` when every judged SLO met its
    objective, with the confidence of the least sure of them (named); ``missed`` otherwise, with the confidence
    of the surest miss, and the names of the SLOs missed. With ``final``, an SLO without any event is missed
    (a stage that served nothing misses its latency SLOs); before that, it is left out."""
    judged = [r for r in rows if r.get("judged")]
    empty = [r["name"] for r in judged if r.get("attainment_percent") is None]
    missed = [r for r in judged if r.get("attainment_percent") is not None and not _met(r)]
    if missed or (final and empty):
        confidence = max([1.0 - float(r["held_confidence"]) for r in missed] + ([1.0] if final and empty else []))
        return "missed", confidence, [r["name"] for r in missed] + (empty if final else [])
    counted = [r for r in judged if r.get("attainment_percent") is not None]
    if not counted:
        return "held", 0.0, []
    least = min(counted, key=lambda r: float(r["held_confidence"]))
    return "held", float(least["held_confidence"]), [least["name"]]


def longer_helps(rows: Sequence[dict[str, Any]], factor: float, confidence: float) -> bool:
    """Whether sending ``factor`` times as long could make an unsure SLO sure, if it went on as so far: an SLO
    that met its objective would then hold with ``confidence``, or one that missed would miss with it. (A 99.9%
    objective is never sure after a few hundred requests; waiting for it would only slow the search.)"""
    for row in rows:
        good, events = row.get("evidence_good"), row.get("evidence_events")
        if not row.get("judged") or not events or good is None:
            continue
        held = float(row["held_confidence"])
        sure = held if _met(row) else 1.0 - held
        if sure >= confidence:
            continue
        later = held_confidence(float(good) * factor, float(events) * factor, float(row["objective_percent"]))
        if (later if _met(row) else 1.0 - later) >= confidence:
            return True
    return False


class LiveJudge:
    """The attainment of every judged SLO over the records of a running stage, one record at a time (judging the
    stage's whole file again every second would stall the sending)."""

    def __init__(self, criteria: Sequence[Criterion]) -> None:
        self.criteria = tuple(c for c in criteria if c.kind != "unjudged")
        self.good = [0.0] * len(self.criteria)
        self.events = [0.0] * len(self.criteria)

    def add(self, record: RequestRecord) -> None:
        if record.warmup:
            return
        for i, crit in enumerate(self.criteria):
            if crit.kind == "availability":
                outcome = outcome_of(record)
                if outcome == "served":
                    self.good[i] += 1
                    self.events[i] += 1
                elif outcome == "server_error" or (outcome == "shed" and crit.count_shed):
                    self.events[i] += 1
                continue
            if not record.ok:
                continue
            values = _values(record, crit.quantity)
            if not values:
                continue
            thr = crit.threshold_s
            assert thr is not None
            within = sum(1 for v in values if v <= thr)
            if crit.quantity.per_token:
                self.events[i] += 1
                self.good[i] += within / len(values)
            else:
                self.events[i] += len(values)
                self.good[i] += within

    def rows(self) -> list[dict[str, Any]]:
        """Rows shaped as :func:`judge`'s (name, judged, objective and attainment percent, held_confidence), with
        the evidence behind the confidence (``evidence_good`` of ``evidence_events``)."""
        out = []
        for crit, good, events in zip(self.criteria, self.good, self.events, strict=True):
            out.append({"name": crit.name, "judged": True, "objective_percent": crit.objective_percent,
                        "attainment_percent": 100.0 * good / events if events else None,
                        "held_confidence": held_confidence(good, events, crit.objective_percent),
                        "evidence_good": good, "evidence_events": events})
        return out
