"""A spec's error-budget policy at the canary gate: no promotion while releases are frozen.

``budget_policy.freeze_releases.below_percent`` in a spec freezes releases while any SLO it covers (any of its
groups) has less than that share of its error budget left, as the recording ``forge_slo:error_budget_remaining``
says. While the freeze holds, the gate answers ``inconclusive`` with the decision ``hold`` (Argo Rollouts
pauses, Flagger halts) and the reason in budget terms; a canary the judge fails still fails. When the
remaining budget cannot be read (Prometheus down, the rules not loaded), the freeze holds: fail closed.

An override is explicit: a request's ``budget_override`` field says who overrides and why. The judge's verdict
then stands, its reason names the override, and the gate logs it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.canary.judge import hold_promotion
from forge_slo.canary.model import CanaryVerdict
from forge_slo.durations import format_duration
from forge_slo.errors import SourceError
from forge_slo.sources.prometheus import PrometheusClient
from forge_slo.spec.model import BudgetPolicy, ServiceSpec

OVERRIDE_FIELD = "budget_override"
MAX_OVERRIDE_CHARS = 500


@dataclass(frozen=True)
class Freeze:
    """Whether the policy freezes releases now, and why (in budget terms)."""

    holds: bool
    reason: str


def parse_override(value: object) -> str | None:
    """A request's override reason (None when absent); ValueError when it says nothing."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError("say who overrides the budget policy and why, e.g. 'alice: hotfix for INC-123'")
    if len(value) > MAX_OVERRIDE_CHARS or not value.isprintable():
        raise ValueError(f"must be one line of printable text, at most {MAX_OVERRIDE_CHARS} characters")
    return value.strip()


def _selector(spec: ServiceSpec, policy: BudgetPolicy) -> str:
    extra = [promql.regex_matcher(cv.SLO_LABEL, promql.any_of_regex(policy.slos))] if policy.slos else []
    return promql.selector(cv.ERROR_BUDGET_REMAINING, {cv.SERVICE_LABEL: spec.service}, extra)


def _group(labels: dict[str, str], spec: ServiceSpec) -> str:
    shown = [f"{key}={labels[key]}" for key in spec.group_by if key in labels]
    return f" ({', '.join(shown)})" if shown else ""


def freeze(spec: ServiceSpec, client: PrometheusClient, at: float) -> Freeze:
    """What ``spec``'s policy says at ``at`` (no policy: no freeze)."""
    policy = spec.budget_policy
    if policy is None:
        return Freeze(False, "")
    limit = policy.freeze_below_ratio
    terms = (f"the budget policy of {spec.service} freezes releases while an SLO has less than {limit:.0%} of its "
             f"{format_duration(spec.period_seconds)} error budget left")
    query = _selector(spec, policy)
    try:
        samples = client.query(query, at=at)
    except SourceError as exc:
        return Freeze(True, f"release freeze (fail closed): {terms}, and the remaining budget cannot be read: {exc}")
    covered = [slo.name for slo in spec.slos if policy.covers(slo.name)]
    seen = {s.labels.get(cv.SLO_LABEL, "") for s in samples}
    missing = [name for name in covered if name not in seen]
    if missing:
        return Freeze(True, f"release freeze (fail closed): {terms}, and {query} has no data for "
                            f"{', '.join(missing)} (are the compiled rules loaded into Prometheus?)")
    # NaN: no request in the period, so nothing of the budget is spent.
    short = sorted((s.value, s.labels.get(cv.SLO_LABEL, ""), _group(dict(s.labels), spec)) for s in samples
                   if not math.isnan(s.value) and s.value < limit)
    if not short:
        return Freeze(False, f"{terms}; every SLO has at least that left")
    listed = "; ".join(f"{name}{group} has {value:.1%} left" for value, name, group in short)
    return Freeze(True, f"release freeze: {terms}: {listed}")


def enforce(spec: ServiceSpec, client: PrometheusClient, verdict: CanaryVerdict, override: str | None,
            at: float) -> CanaryVerdict:
    """The judge's verdict under ``spec``'s budget policy: held while the freeze holds, unless overridden."""
    if spec.budget_policy is None or verdict.verdict == "fail":
        return verdict
    state = freeze(spec, client, at)
    if not state.holds:
        return verdict
    if override is not None:
        print(f"gate: budget policy of {spec.service} overridden by request ({OVERRIDE_FIELD}: {override!r}); "
              f"{state.reason}", file=sys.stderr, flush=True)
        return replace(verdict, reason=f"budget policy overridden ({override}): {state.reason}. "
                                       f"The judge: {verdict.reason}")
    return hold_promotion(verdict, [f"{state.reason}; promotion refused (send {OVERRIDE_FIELD} with who and "
                                    "why to override)"])
