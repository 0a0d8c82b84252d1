"""Judging load-test records against the SLOs of a spec, client-side.

A latency SLO whose metric alias is ``ttft``, ``tpot``, ``itl`` or ``e2e`` is judged on the records: the
share of successful requests (for ``itl``: of their token gaps; for ``tpot``: the per-request TPOT) at or
under the threshold, against the objective. An availability SLO is the share of requests that did not
fail. Ratio SLIs (arbitrary PromQL) and other latency aliases cannot be judged from the client and are
listed as such. Goodput is the rate of successful requests that met every judged latency SLO (vLLM's
definition); for ``itl`` a request meets it when its own share of gaps under the threshold reaches the
objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from forge_slo.errors import UsageError
from forge_slo.load.wire import Fields
from forge_slo.sources.records import RequestRecord
from forge_slo.spec.model import AvailabilitySLI, LatencySLI, ServiceSpec

CLIENT_METRICS = ("ttft", "tpot", "itl", "e2e")
NOT_JUDGED = "not judged client-side"


@dataclass(frozen=True)
class Criterion:
    """One SLO of the spec as the client can judge it."""

    name: str
    kind: str                      # "latency", "availability" or "unjudged"
    objective_percent: float
    metric: str | None = None      # ttft, tpot, itl, e2e (latency only)
    threshold_s: float | None = None
    reason: str = ""               # why it is not judged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: object, what: str = "criterion") -> Criterion:
        c = Fields(data, what)
        return Criterion(c.text("name"), c.choice("kind", ("latency", "availability", "unjudged")),
                         c.number("objective_percent"), c.maybe_text("metric"), c.maybe_number("threshold_s"),
                         c.text("reason"))


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
    out: list[Criterion] = []
    for slo in spec.slos:
        sli = slo.sli
        if isinstance(sli, LatencySLI):
            if sli.alias in CLIENT_METRICS:
                out.append(Criterion(slo.name, "latency", slo.objective_percent, sli.alias, sli.threshold_seconds))
            else:
                out.append(Criterion(slo.name, "unjudged", slo.objective_percent,
                                     reason=f"{NOT_JUDGED}: latency metric {sli.alias!r} is not measured by the "
                                            "client (ttft, tpot, itl and e2e are)"))
        elif isinstance(sli, AvailabilitySLI):
            out.append(Criterion(slo.name, "availability", slo.objective_percent))
        else:
            out.append(Criterion(slo.name, "unjudged", slo.objective_percent,
                                 reason=f"{NOT_JUDGED}: a ratio SLI reads server-side PromQL"))
    return SpecInfo(spec.service, spec.source, tuple(out))


def _value_ok(value: float | None, threshold: float) -> bool:
    return value is not None and value <= threshold


def request_meets(record: RequestRecord, crit: Criterion) -> bool:
    """Whether one successful request met one latency criterion (the goodput test)."""
    thr = crit.threshold_s
    assert thr is not None
    if crit.metric == "ttft":
        return _value_ok(record.ttft_s, thr)
    if crit.metric == "e2e":
        return _value_ok(record.e2e_s, thr)
    if crit.metric == "tpot":
        return record.tpot_s is None or record.tpot_s <= thr
    gaps = record.itl_s
    if not gaps:
        return True
    good = sum(1 for g in gaps if g <= thr)
    return good * 100.0 >= crit.objective_percent * len(gaps)


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
            events, good = len(records), len(ok)
        else:
            thr = crit.threshold_s
            assert thr is not None
            row.update(metric=crit.metric, threshold_s=thr)
            if crit.metric == "ttft":
                events, good = len(ok), sum(1 for r in ok if _value_ok(r.ttft_s, thr))
            elif crit.metric == "e2e":
                events, good = len(ok), sum(1 for r in ok if _value_ok(r.e2e_s, thr))
            elif crit.metric == "tpot":
                values = [r.tpot_s for r in ok if r.tpot_s is not None]
                events, good = len(values), sum(1 for v in values if v <= thr)
            else:
                events = sum(len(r.itl_s) for r in ok)
                good = sum(1 for r in ok for g in r.itl_s if g <= thr)
        attainment = 100.0 * good / events if events else None
        met = attainment is not None and attainment >= crit.objective_percent
        row.update(judged=True, events=events, good=good, attainment_percent=attainment, met=met)
        if attainment is None:
            row["reason"] = "no events to judge (no successful requests)"
        results.append(row)
    return results


def good_requests(records: Sequence[RequestRecord], criteria: Sequence[Criterion]) -> int:
    """Successful requests that met every judged latency criterion."""
    latency = [c for c in criteria if c.kind == "latency"]
    return sum(1 for r in records if r.ok and all(request_meets(r, c) for c in latency))
