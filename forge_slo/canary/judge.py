"""The judge: which checks a spec implies, and the verdict from both arms' data.

Every latency SLO gets three checks (``shift``: the typical request, ``p90`` and ``p99``: the tail), every
availability SLO one (``errors``). Ratio SLIs are user PromQL that cannot be split into arms, so they are
listed as skipped. The family-wise error rate ``alpha`` is split evenly over the checks (Bonferroni), and
every check uses a confidence sequence, so a clean canary fails with probability at most ``alpha`` however
many checks and however many looks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from forge_slo.canary import checks
from forge_slo.canary.model import (
    CHECK_KINDS,
    CanaryVerdict,
    CheckKind,
    CheckResult,
    Decision,
    ErrorData,
    InvalidData,
    JudgeConfig,
    LatencyData,
    MissingData,
    PlannedCheck,
    SkippedCheck,
    SloData,
    Status,
    VerdictName,
)
from forge_slo.canary.sources import CanarySource
from forge_slo.durations import format_duration
from forge_slo.errors import SourceError, UsageError
from forge_slo.spec.model import AvailabilitySLI, LatencySLI, ServiceSpec

LATENCY_CHECKS: tuple[CheckKind, ...] = ("shift", "p90", "p99")
_NOT_JUDGED = "not judged (fail closed): "


def plan_checks(spec: ServiceSpec, config: JudgeConfig) -> tuple[list[PlannedCheck], list[SkippedCheck]]:
    """The checks of a spec, in spec order, with their policies; and the SLOs that cannot be checked."""
    planned: list[PlannedCheck] = []
    skipped: list[SkippedCheck] = []
    for slo in spec.slos:
        if isinstance(slo.sli, LatencySLI):
            for kind in LATENCY_CHECKS:
                planned.append(PlannedCheck(slo.name, kind, config.policy(slo.name, kind)))
        elif isinstance(slo.sli, AvailabilitySLI):
            planned.append(PlannedCheck(slo.name, "errors", config.policy(slo.name, "errors")))
        else:
            skipped.append(SkippedCheck(f"{slo.name}.errors", "a ratio SLI is user PromQL that cannot be split "
                                                               "into baseline and canary; not judged"))
    return planned, skipped


def check_config_names(specs: Iterable[ServiceSpec], config: JudgeConfig) -> None:
    """Every name in --allow, --advisory and --direction must mean a check of some spec."""
    valid: set[str] = set(CHECK_KINDS)
    for spec in specs:
        planned, _ = plan_checks(spec, config)
        valid.update(c.slo for c in planned)
        valid.update(c.name for c in planned)
    for flag, names in (("--allow", config.allowed), ("--advisory", config.advisory),
                        ("--direction", config.directions)):
        for name in names:
            if name not in valid:
                raise UsageError(f"{flag}: {name!r} names no check; use a check kind ({', '.join(CHECK_KINDS)}), "
                                 f"an SLO or SLO.CHECK: {', '.join(sorted(valid - set(CHECK_KINDS)))}")


def judge(spec: ServiceSpec, data: Mapping[str, SloData], config: JudgeConfig, *, complete: bool,
          elapsed_seconds: float, window_seconds: float, source: str) -> CanaryVerdict:
    """Judge the canary against the baseline on every check of ``spec``.

    ``complete`` says the planned analysis window is over: only then may the absence of evidence of harm
    (with enough data on every critical check) pass the canary. Before that, a pass needs every check to be
    shown within its allowed limit; a fail needs one critical check shown beyond it.
    """
    planned, skipped = plan_checks(spec, config)
    alpha_each = config.alpha / max(len(planned), 1)
    objectives = {slo.name: slo.error_budget_ratio for slo in spec.slos}
    results = [_run_check(check, data.get(check.slo, MissingData("no data")), config, alpha_each,
                          config.errors_floor * objectives[check.slo]) for check in planned]
    return _verdict(spec.service, results, skipped, config, alpha_each, complete=complete,
                    elapsed_seconds=elapsed_seconds, window_seconds=window_seconds, source=source)


def unavailable(spec: ServiceSpec, config: JudgeConfig, reason: str, *, complete: bool, elapsed_seconds: float,
                window_seconds: float, source: str) -> CanaryVerdict:
    """Inconclusive, failing closed: the source could not be read, so nothing is judged."""
    planned, skipped = plan_checks(spec, config)
    return CanaryVerdict(
        service=spec.service, verdict="inconclusive", decision="hold", score=None,
        reason=f"the data source could not be read, so nothing was judged (fail closed): {reason}",
        complete=complete, alpha=config.alpha, alpha_per_check=config.alpha / max(len(planned), 1),
        elapsed_seconds=elapsed_seconds, window_seconds=window_seconds, source=source,
        checks=(), skipped=tuple(skipped),
    )


# ---------------------------------------------------------------------------------------------------------

def _run_check(check: PlannedCheck, data: SloData, config: JudgeConfig, alpha: float, floor: float
               ) -> CheckResult:
    policy = check.policy
    if isinstance(data, MissingData):
        return _result(check, "insufficient", None, None, None, 0.0, 0.0, None, None, "s", "",
                       f"no data: {data.reason}")
    problem = data.reason if isinstance(data, InvalidData) else data_problem(data)
    if isinstance(data, InvalidData) or problem:
        return _result(check, "invalid", None, None, None, 0.0, 0.0, None, None,
                       "ratio" if check.kind == "errors" else "s", "", _NOT_JUDGED + (problem or "invalid data"))
    if check.kind == "errors":
        if not isinstance(data, ErrorData):
            raise TypeError(f"{check.name} needs error counts")
        out = checks.errors_check(data.baseline_errors, data.baseline_total, data.canary_errors,
                                  data.canary_total, policy, alpha, config.min_samples, floor)
        method = ("error-rate ratio: an exact confidence sequence on which arm each error came from "
                  "(beta-binomial mixture); zero baseline errors allowed")
        unit = "ratio"
    else:
        if not isinstance(data, LatencyData):
            raise TypeError(f"{check.name} needs latency buckets")
        bounds = np.asarray(data.bounds, dtype=np.float64)
        base = np.asarray(data.baseline, dtype=np.float64)
        can = np.asarray(data.canary, dtype=np.float64)
        if check.kind == "shift":
            out = checks.shift_check(bounds, base, can, policy, alpha, config.design_samples, config.min_samples,
                                     interval=True)
            method = ("Hodges-Lehmann ratio with a Mann-Whitney confidence sequence (normal mixture, "
                      "asymptotically anytime-valid); values are medians")
        else:
            p = checks.quantile_of(check.kind)
            out = checks.quantile_check(bounds, base, can, p, policy, alpha, config.design_samples,
                                        config.min_samples)
            method = (f"ratio of {check.kind}s: exact quantile confidence sequences per arm (beta-binomial "
                      "mixture on the count below the quantile), bucket bounds taken conservatively")
        unit = "s"
        if data.note:
            method += f"; {data.note}"
    status: Status
    if bool(out.fail):
        status = "fail"
    elif bool(out.within):
        status = "pass"
    elif not bool(out.enough):
        status = "insufficient"
    else:
        status = "undecided"
    estimate, lower, upper = (float(x) - 1.0 for x in (out.ratio, out.lower, out.upper))
    explanation = _explain(check, status, estimate, lower, upper, float(out.baseline_n), float(out.canary_n),
                           config.min_samples, alpha, floor)
    return _result(check, status, estimate, lower, upper, float(out.baseline_n), float(out.canary_n),
                   _opt(float(out.baseline_value)), _opt(float(out.canary_value)), unit, method, explanation)


def data_problem(data: LatencyData | ErrorData) -> str:
    """Why a source's counts cannot be judged (not finite, negative, malformed buckets); empty when they can.

    Sources check their own values and say which query or field was wrong; this is the judge's own guard,
    so that a source that forgot still fails closed instead of judging NaN as a number.
    """
    if isinstance(data, ErrorData):
        for arm in ("baseline", "canary"):
            for what in ("errors", "total"):
                value = getattr(data, f"{arm}_{what}")
                if not math.isfinite(value) or value < 0:
                    return f"the {arm}'s {'error' if what == 'errors' else 'request'} count is {value!r}"
        return ""
    bounds = data.bounds
    if not bounds or len(data.baseline) != len(bounds) or len(data.canary) != len(bounds):
        return "the arms' bucket counts do not match their bounds"
    if any(math.isnan(b) for b in bounds) or bounds[-1] != math.inf \
            or any(lo >= hi for lo, hi in zip(bounds, bounds[1:], strict=False)):
        return f"the bucket bounds are not increasing up to +Inf: {bounds[:3]}...{bounds[-2:]}"
    for arm, counts in (("baseline", data.baseline), ("canary", data.canary)):
        for bound, count in zip(bounds, counts, strict=True):
            if not math.isfinite(count) or count < 0:
                return f"the {arm}'s count of the bucket le={bound:g} is {count!r}"
    return ""


def _result(check: PlannedCheck, status: Status, estimate: float | None, lower: float | None,
            upper: float | None, n_b: float, n_c: float, b_val: float | None, c_val: float | None, unit: str,
            method: str, explanation: str) -> CheckResult:
    return CheckResult(
        name=check.name, slo=check.slo, kind=check.kind, status=status, critical=check.policy.critical,
        direction=check.policy.direction, allowed=check.policy.allowed, estimate=_opt(estimate),
        lower=_opt(lower), upper=_opt(upper), baseline_samples=n_b, canary_samples=n_c, baseline_value=b_val,
        canary_value=c_val, unit=unit, method=method, explanation=explanation,
    )


def _opt(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return value


def duration_text(seconds: float) -> str:
    """Whole seconds for people: 9m59.8s reads 10m."""
    return format_duration(float(max(round(seconds), 1)))


def pct(value: float | None) -> str:
    """+12.3% / -4% / unbounded."""
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    text = f"{value * 100:+.1f}%"
    return text.replace(".0%", "%")


def interval_text(lower: float | None, upper: float | None) -> str:
    return f"{pct(lower)} .. {pct(upper)}"


def _explain(check: PlannedCheck, status: Status, estimate: float, lower: float, upper: float, n_b: float,
             n_c: float, min_samples: float, alpha: float, floor: float) -> str:
    what = {"shift": "typical (Hodges-Lehmann) latency", "p90": "p90 latency", "p99": "p99 latency",
            "errors": "error rate"}[check.kind]
    way = {"increase": "higher", "decrease": "lower", "both": "different"}[check.policy.direction]
    allowed = pct(check.policy.allowed) if check.policy.direction == "increase" else \
        f"±{check.policy.allowed * 100:g}%"
    level = f"{(1 - alpha) * 100:.4g}%"
    interval = interval_text(_opt(lower), _opt(upper))
    if status == "insufficient":
        need = f"at least {min_samples:g} samples a side"
        if check.kind in ("p90", "p99"):
            need += f" and enough to bound the {check.kind} above"
        return f"too little data to judge the {what}: baseline {n_b:g}, canary {n_c:g} samples ({need})"
    head = f"canary {what} {pct(_opt(estimate))} vs baseline ({level} confidence sequence {interval})"
    if status == "fail":
        tail = f"; {way} than allowed ({allowed}) with confidence"
        if check.kind == "errors" and floor > 0:
            tail += f", and the canary's error rate is above {floor:.4%} (share of the error budget)"
        return head + tail
    if status == "pass":
        return head + f"; shown within the allowed {allowed}"
    return head + f"; not beyond the allowed {allowed} with confidence, not yet shown within it"


def _verdict(service: str, results: Sequence[CheckResult], skipped: Sequence[SkippedCheck], config: JudgeConfig,
             alpha_each: float, *, complete: bool, elapsed_seconds: float, window_seconds: float, source: str
             ) -> CanaryVerdict:
    judged = [r for r in results if r.status != "insufficient"]
    score = 100.0 * sum(r.status != "fail" for r in judged) / len(judged) if judged else None
    critical_fails = [r for r in results if r.status == "fail" and r.critical]
    all_fails = [r for r in results if r.status == "fail"]
    missing_critical = [r for r in results if r.status == "insufficient" and r.critical]
    invalid = [r for r in results if r.status == "invalid"]
    took = f"{duration_text(elapsed_seconds)} of data"
    verdict: VerdictName
    decision: Decision
    if critical_fails or (score is not None and score < config.min_score and all_fails):
        verdict, decision = "fail", "rollback"
        failing = critical_fails or all_fails
        reason = "; ".join(f"{r.name}: {pct(r.estimate)} (interval {interval_text(r.lower, r.upper)}) is beyond "
                           f"the allowed {pct(r.allowed)}" for r in failing)
        if not critical_fails:
            reason = f"score {score:.0f} is below {config.min_score:g}: {reason}"
    elif invalid:
        # A source that answers NaN or negative counts is broken, not slow: waiting will not make the check
        # judgeable, so hold (as for an unreachable source), whether the check is critical or advisory.
        verdict, decision = "inconclusive", "hold"
        why: dict[str, list[str]] = {}  # one problem (an SLO's data) usually spoils several checks
        for r in invalid:
            why.setdefault(r.explanation.removeprefix(_NOT_JUDGED), []).append(r.name)
        reason = "the source's data cannot be judged (fail closed): " + "; ".join(
            f"{', '.join(names)}: {problem}" for problem, names in why.items())
    elif results and all(r.status == "pass" for r in results):
        verdict, decision = "pass", "promote"
        reason = f"every check is shown within its allowed limit ({took})"
    elif complete and results and not missing_critical:
        verdict, decision = "pass", "promote"
        reason = (f"no check showed a degradation beyond its allowed limit over {took} "
                  f"(alpha {config.alpha:g} across {len(results)} checks and every look)")
        undecided = [r for r in results if r.status == "undecided"]
        if undecided:
            reason += "; not yet shown within the limit: " + ", ".join(
                f"{r.name} (could be up to {pct(r.upper)})" for r in undecided)
        advisory_missing = [r for r in results if r.status == "insufficient"]
        if advisory_missing:
            reason += "; advisory checks without enough data: " + ", ".join(r.name for r in advisory_missing)
    else:
        verdict = "inconclusive"
        if not results:
            reason = "the spec has no check that can be judged on baseline and canary"
            decision = "hold"
        elif missing_critical:
            names = ", ".join(f"{r.name} (baseline {r.baseline_samples:g}, canary {r.canary_samples:g})"
                              for r in missing_critical)
            reason = f"too little data to judge {names}"
            decision = "hold" if complete else "continue"
            if not complete:
                reason = f"collecting ({took} of {duration_text(window_seconds)}); {reason}"
        else:
            reason = (f"collecting ({took} of {duration_text(window_seconds)}); nothing beyond the allowed "
                      "limits so far")
            decision = "continue"
    return CanaryVerdict(
        service=service, verdict=verdict, decision=decision, score=score, reason=reason, complete=complete,
        alpha=config.alpha, alpha_per_check=alpha_each, elapsed_seconds=elapsed_seconds,
        window_seconds=window_seconds, source=source, checks=tuple(results), skipped=tuple(skipped),
    )


def judge_source(spec: ServiceSpec, source: CanarySource, config: JudgeConfig, *, start: float, end: float,
                 complete: bool, window_seconds: float) -> CanaryVerdict:
    """Read both arms over [start, end] and judge; an unreadable source gives an inconclusive verdict."""
    try:
        data = source.collect(spec, start, end)
    except SourceError as exc:
        return unavailable(spec, config, str(exc), complete=complete, elapsed_seconds=end - start,
                           window_seconds=window_seconds, source=source.describe())
    return judge(spec, data, config, complete=complete, elapsed_seconds=end - start,
                 window_seconds=window_seconds, source=source.describe())
