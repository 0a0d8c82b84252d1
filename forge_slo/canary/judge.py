"""The judge: which checks a spec implies, and the verdict from both arms' data.

Every latency SLO gets two checks (``shift``: the typical request; ``tail``: the requests over the SLO's
threshold, counted), every availability SLO one (``errors``: the failed requests, counted). Count checks judge
the canary against the error budget the SLO's objective allows as well as against the baseline, and explain
themselves in budget terms. Ratio SLIs are user PromQL that cannot be split into arms, so they are listed as
skipped. The family-wise error rate ``alpha`` is split evenly over the checks (Bonferroni), and every check
is a test martingale, so a canary as good as its baseline fails with probability at most ``alpha`` however
many checks and however many looks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from forge_slo.canary import checks
from forge_slo.canary.model import (
    CHECK_KINDS,
    BudgetView,
    CanaryVerdict,
    Cause,
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
from forge_slo.spec.model import SLO, AvailabilitySLI, LatencySLI, ServiceSpec

LATENCY_CHECKS: tuple[CheckKind, ...] = ("shift", "tail")
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
          elapsed_seconds: float, window_seconds: float, source: str, stage: str | None = None
          ) -> CanaryVerdict:
    """Judge the canary against the baseline and the error budgets on every check of ``spec``.

    ``complete`` says the planned analysis window is over: only then may the absence of evidence of harm
    (with enough data on every critical check, and no check leaning towards a fail) pass the canary. Before
    that, a pass needs every check to be shown within its limits; a fail needs one critical check shown
    beyond them.
    """
    planned, skipped = plan_checks(spec, config)
    alpha_each = config.alpha / max(len(planned), 1)
    slos = {slo.name: slo for slo in spec.slos}
    results = [_run_check(check, slos[check.slo], data.get(check.slo, MissingData("no data")), config, alpha_each)
               for check in planned]
    return _verdict(spec.service, results, skipped, config, alpha_each, complete=complete,
                    elapsed_seconds=elapsed_seconds, window_seconds=window_seconds, source=source, stage=stage)


def unavailable(spec: ServiceSpec, config: JudgeConfig, reason: str, *, complete: bool, elapsed_seconds: float,
                window_seconds: float, source: str, stage: str | None = None) -> CanaryVerdict:
    """Inconclusive, failing closed: the source could not be read, so nothing is judged."""
    planned, skipped = plan_checks(spec, config)
    return CanaryVerdict(
        service=spec.service, verdict="inconclusive", decision="hold", score=None,
        reason=f"the data source could not be read, so nothing was judged (fail closed): {reason}",
        complete=complete, alpha=config.alpha, alpha_per_check=config.alpha / max(len(planned), 1),
        elapsed_seconds=elapsed_seconds, window_seconds=window_seconds, source=source,
        checks=(), skipped=tuple(skipped), stage=stage,
    )


def hold_promotion(verdict: CanaryVerdict, reasons: Sequence[str]) -> CanaryVerdict:
    """The verdict with promotion held for ``reasons`` from outside the canary comparison (a policy of the
    spec, such as an error budget already spent): a pass becomes inconclusive with decision ``hold``; a
    fail stays a fail. The place for gates that judge the service rather than the canary."""
    if not reasons or verdict.verdict != "pass":
        return verdict
    return dataclasses.replace(verdict, verdict="inconclusive", decision="hold",
                               reason=f"promotion held: {'; '.join(reasons)} (the canary itself: {verdict.reason})")


# ---------------------------------------------------------------------------------------------------------

def _run_check(check: PlannedCheck, slo: SLO, data: SloData, config: JudgeConfig, alpha: float) -> CheckResult:
    unit = "s" if check.kind == "shift" else "ratio"
    if isinstance(data, MissingData):
        return _result(check, "insufficient", None, None, None, 0.0, 0.0, None, None, unit, "",
                       f"no data: {data.reason}")
    problem = data.reason if isinstance(data, InvalidData) else data_problem(data)
    if isinstance(data, InvalidData) or problem:
        return _result(check, "invalid", None, None, None, 0.0, 0.0, None, None, unit, "",
                       _NOT_JUDGED + (problem or "invalid data"))
    if check.kind == "shift":
        if not isinstance(data, LatencyData):
            raise TypeError(f"{check.name} needs latency buckets")
        return _shift(check, data, config, alpha)
    if check.kind == "errors":
        if not isinstance(data, ErrorData):
            raise TypeError(f"{check.name} needs error counts")
        counts = (data.baseline_errors, data.baseline_total, data.canary_errors, data.canary_total)
        return _count(check, slo, counts, "failed requests", None, data.note, config, alpha)
    if not isinstance(data, LatencyData) or not isinstance(slo.sli, LatencySLI):
        raise TypeError(f"{check.name} needs latency buckets of a latency SLO")
    threshold = slo.sli.threshold_seconds
    tail = _over_threshold(data, threshold)
    if tail is None:
        return _result(check, "insufficient", None, None, None, 0.0, 0.0, None, None, unit, "",
                       f"no data: the SLO's threshold {_seconds(threshold)} is not a bucket bound both arms share, "
                       "so the requests over it cannot be counted")
    return _count(check, slo, tail, f"requests over {_seconds(threshold)}", threshold, data.note, config, alpha)


def _over_threshold(data: LatencyData, threshold: float) -> tuple[float, float, float, float] | None:
    """(baseline over, baseline total, canary over, canary total) at a bucket bound equal to ``threshold``."""
    index = next((i for i, b in enumerate(data.bounds) if math.isclose(b, threshold, rel_tol=1e-9)), None)
    if index is None:
        return None
    out: list[float] = []
    for counts in (data.baseline, data.canary):
        total = float(sum(counts))
        out.extend((max(total - float(sum(counts[:index + 1])), 0.0), total))
    return out[0], out[1], out[2], out[3]


def _shift(check: PlannedCheck, data: LatencyData, config: JudgeConfig, alpha: float) -> CheckResult:
    bounds = np.asarray(data.bounds, dtype=np.float64)
    out = checks.shift_check(bounds, np.asarray(data.baseline, dtype=np.float64),
                             np.asarray(data.canary, dtype=np.float64), check.policy, alpha, config.design_samples,
                             config.min_samples, interval=True)
    method = ("Hodges-Lehmann ratio; slower with confidence by a one-sided normal-mixture test of the "
              "Mann-Whitney statistic (asymptotically anytime-valid); values are medians")
    if data.note:
        method += f"; {data.note}"
    status = _status(out)
    estimate, lower, upper = (float(x) - 1.0 for x in (out.ratio, out.lower, out.upper))
    sides = 2 if check.policy.direction == "both" else 1
    explanation = _explain_shift(check, status, estimate, lower, upper, float(out.baseline_n), float(out.canary_n),
                                 config.min_samples, 1.0 - 2.0 * alpha / sides)
    return _result(check, status, estimate, lower, upper, float(out.baseline_n), float(out.canary_n),
                   _opt(float(out.baseline_value)), _opt(float(out.canary_value)), "s", method, explanation)


def _count(check: PlannedCheck, slo: SLO, counts: tuple[float, float, float, float], what: str,
           threshold: float | None, note: str, config: JudgeConfig, alpha: float) -> CheckResult:
    e_b, n_b, e_c, n_c = counts
    budget = checks.Budget(slo.error_budget_ratio, config.burn_factor, config.errors_floor)
    out = checks.count_check(e_b, n_b, e_c, n_c, check.policy, alpha, config.min_samples, budget, interval=True)
    view = BudgetView(
        objective_percent=slo.objective_percent, burn_factor=config.burn_factor, what=what, baseline_bad=e_b,
        baseline_total=n_b, canary_bad=e_c, canary_total=n_c, baseline_burn=_opt(float(out.baseline_burn)),
        canary_burn=_opt(float(out.canary_burn)), canary_burn_lower=_opt(float(out.burn_lower)),
        canary_burn_upper=_opt(float(out.burn_upper)), threshold_seconds=threshold)
    method = (f"{what} counted: the canary's ratio against the error budget (an exact one-sided test of its "
              "binomial count) and against the baseline's (exact, conditionally on the bad events: which arm "
              "each came from), the two e-values averaged")
    if note:
        method += f"; {note}"
    status = _status(out)
    cause: Cause = ("budget" if bool(out.by_budget) else "baseline" if bool(out.by_ratio)
                    else "shared" if bool(out.shared) else "")
    estimate, lower, upper = (float(x) - 1.0 for x in (out.ratio, out.lower, out.upper))
    explanation = _explain_count(check, slo.name, status, cause, view, estimate, lower, upper, float(n_b), float(n_c),
                                 config)
    return _result(check, status, estimate, lower, upper, float(n_b), float(n_c), _opt(float(out.baseline_value)),
                   _opt(float(out.canary_value)), "ratio", method, explanation, budget=view, cause=cause)


def _status(out: checks.Outcome) -> Status:
    shared = bool(out.shared) if isinstance(out, checks.CountOutcome) else False
    if bool(out.fail):
        return "fail"
    if bool(out.within):
        return "pass"
    if not bool(out.enough):
        return "insufficient"
    if bool(out.lean) or shared:
        return "doubt"
    return "undecided"


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
            method: str, explanation: str, budget: BudgetView | None = None, cause: Cause = "") -> CheckResult:
    return CheckResult(
        name=check.name, slo=check.slo, kind=check.kind, status=status, critical=check.policy.critical,
        direction=check.policy.direction, allowed=check.policy.allowed, estimate=_opt(estimate),
        lower=_opt(lower), upper=_opt(upper), baseline_samples=n_b, canary_samples=n_c, baseline_value=b_val,
        canary_value=c_val, unit=unit, method=method, explanation=explanation, budget=budget, cause=cause,
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


def burn_text(value: float | None) -> str:
    """A burn rate for people: 12x, 6.2x, 0.8x, 0.06x."""
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0x"
    if value >= 9.95:
        return f"{value:.0f}x"
    if value >= 0.095:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


def share_text(value: float | None) -> str:
    """A ratio of requests as a percentage with three significant digits: 1.29%, 0.1%."""
    if value is None:
        return "n/a"
    return f"{value * 100:.3g}%"


def _seconds(value: float) -> str:
    return f"{value * 1000:g} ms" if value < 1.0 else f"{value:g} s"


def _explain_shift(check: PlannedCheck, status: Status, estimate: float, lower: float, upper: float, n_b: float,
                   n_c: float, min_samples: float, level: float) -> str:
    way = {"increase": "slower", "decrease": "faster", "both": "different"}[check.policy.direction]
    allowed = _allowed_text(check.policy.direction, check.policy.allowed)
    if status == "insufficient":
        return (f"too little data to judge the typical latency: baseline {n_b:g}, canary {n_c:g} samples (at least "
                f"{min_samples:g} a side)")
    head = (f"canary typical (Hodges-Lehmann) latency {pct(_opt(estimate))} vs baseline "
            f"({level * 100:.4g}% confidence sequence {interval_text(_opt(lower), _opt(upper))})")
    tail = {
        "fail": f"; {way} with confidence and beyond the allowed {allowed}",
        "pass": f"; shown within the allowed {allowed}",
        "doubt": f"; leans {way} beyond the allowed {allowed}, not shown with confidence",
    }.get(status, f"; not shown {way} beyond the allowed {allowed} with confidence, not yet shown within it")
    return head + tail


def _allowed_text(direction: str, allowed: float) -> str:
    return pct(allowed) if direction == "increase" else pct(-allowed) if direction == "decrease" \
        else f"±{allowed * 100:g}%"


def budget_text(slo: str, view: BudgetView) -> str:
    """'canary burns ttft budget at 6.2x, baseline 0.8x'."""
    return (f"canary burns {slo} budget at {burn_text(view.canary_burn)}, baseline "
            f"{burn_text(view.baseline_burn)}")


def _ratios_text(view: BudgetView) -> str:
    """'requests over 500 ms: canary 6.2% (31 of 500), baseline 0.8% (4 of 500); the 99% objective allows 1%'."""
    arms = []
    for arm, bad, total in (("canary", view.canary_bad, view.canary_total),
                            ("baseline", view.baseline_bad, view.baseline_total)):
        share = share_text(bad / total) if total > 0 else "n/a"
        arms.append(f"{arm} {share} ({bad:.6g} of {total:.6g})")
    return (f"{view.what}: {', '.join(arms)}; the {view.objective_percent:g}% objective allows "
            f"{share_text(view.allowed_ratio)}")


def _explain_count(check: PlannedCheck, slo: str, status: Status, cause: Cause, view: BudgetView, estimate: float,
                   lower: float, upper: float, n_b: float, n_c: float, config: JudgeConfig) -> str:
    if status == "insufficient":
        return (f"too little data to judge {view.what}: baseline {n_b:g}, canary {n_c:g} requests (at least "
                f"{config.min_samples:g} a side)")
    factor = f"burn factor {config.burn_factor:g}"
    burn = budget_text(slo, view)
    ratios = _ratios_text(view)
    relative = (f"{view.what} {pct(_opt(estimate))} vs baseline (interval {interval_text(_opt(lower), _opt(upper))}"
                f", allowed {_allowed_text(check.policy.direction, check.policy.allowed)})")
    if status == "fail" and cause == "budget":
        return (f"{burn}: beyond {factor} with confidence (canary at least {burn_text(view.canary_burn_lower)}) and "
                f"faster than the baseline; {ratios}")
    if status == "fail":
        return (f"worse than the baseline with confidence: {relative}, above {config.errors_floor:g} of the budget; "
                f"{burn}; {ratios}")
    if cause == "shared":
        return (f"both arms burn {slo} budget beyond {factor} (canary {burn_text(view.canary_burn)}, at least "
                f"{burn_text(view.canary_burn_lower)}; baseline {burn_text(view.baseline_burn)}): an incident that "
                f"is not the canary's; {ratios}")
    if status == "doubt":
        return f"leans towards failing, not shown with confidence: {burn}; {relative}; {ratios}"
    if status == "pass":
        return (f"{burn} (at most {burn_text(view.canary_burn_upper)} with confidence): shown within {factor} and "
                f"the allowed change from the baseline; {ratios}")
    return (f"{burn} (canary up to {burn_text(view.canary_burn_upper)} with confidence); {relative}; not shown "
            f"beyond or within the limits yet; {ratios}")


def _summary(r: CheckResult) -> str:
    """One check in a verdict's reason."""
    if r.budget is not None and r.status != "insufficient":
        burn = budget_text(r.slo, r.budget)
        if r.cause == "budget":
            return f"{r.name}: {burn}, beyond burn factor {r.budget.burn_factor:g} ({_ratios_text(r.budget)})"
        if r.cause == "baseline":
            return (f"{r.name}: {burn}; {r.budget.what} {pct(r.estimate)} vs baseline (interval "
                    f"{interval_text(r.lower, r.upper)}), beyond the allowed {pct(r.allowed)}")
        if r.cause == "shared":
            return (f"{r.name}: both arms burn {r.slo} budget beyond burn factor {r.budget.burn_factor:g} (canary "
                    f"{burn_text(r.budget.canary_burn)}, baseline {burn_text(r.budget.baseline_burn)}): an incident "
                    "that is not the canary's")
        return f"{r.name}: leans towards failing ({burn})"
    if r.status == "fail":
        return (f"{r.name}: {pct(r.estimate)} (interval {interval_text(r.lower, r.upper)}) is beyond the allowed "
                f"{pct(r.allowed)}")
    return f"{r.name}: leans beyond the allowed {pct(r.allowed)} ({pct(r.estimate)}, interval " \
           f"{interval_text(r.lower, r.upper)})"


def _budgets(results: Sequence[CheckResult]) -> str:
    """'budgets: ttft 0.4x (baseline 0.4x), availability 1.1x (baseline 0.9x)'."""
    parts = [f"{r.slo} {burn_text(r.budget.canary_burn)} (baseline {burn_text(r.budget.baseline_burn)})"
             for r in results if r.budget is not None and r.status not in ("insufficient", "invalid")]
    return f"; burn rates: {', '.join(parts)}" if parts else ""


def _verdict(service: str, results: Sequence[CheckResult], skipped: Sequence[SkippedCheck], config: JudgeConfig,
             alpha_each: float, *, complete: bool, elapsed_seconds: float, window_seconds: float, source: str,
             stage: str | None) -> CanaryVerdict:
    judged = [r for r in results if r.status != "insufficient"]
    score = 100.0 * sum(r.status != "fail" for r in judged) / len(judged) if judged else None
    critical_fails = [r for r in results if r.status == "fail" and r.critical]
    all_fails = [r for r in results if r.status == "fail"]
    missing_critical = [r for r in results if r.status == "insufficient" and r.critical]
    doubts = [r for r in results if r.status == "doubt" and r.critical]
    invalid = [r for r in results if r.status == "invalid"]
    took = f"{duration_text(elapsed_seconds)} of data"
    verdict: VerdictName
    decision: Decision
    if critical_fails or (score is not None and score < config.min_score and all_fails):
        verdict, decision = "fail", "rollback"
        reason = "; ".join(_summary(r) for r in critical_fails or all_fails)
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
        reason = f"every check is shown within its limits ({took}){_budgets(results)}"
    elif complete and results and not missing_critical and not doubts:
        verdict, decision = "pass", "promote"
        reason = (f"no check showed a degradation or a burn beyond its limits over {took} (alpha {config.alpha:g} "
                  f"across {len(results)} checks and every look){_budgets(results)}")
        undecided = [r for r in results if r.status in ("undecided", "doubt")]
        if undecided:
            reason += "; not yet shown within the limits: " + ", ".join(r.name for r in undecided)
        advisory_missing = [r for r in results if r.status == "insufficient"]
        if advisory_missing:
            reason += "; advisory checks without enough data: " + ", ".join(r.name for r in advisory_missing)
    else:
        verdict = "inconclusive"
        decision = "hold" if complete or not results else "continue"
        if not results:
            reason = "the spec has no check that can be judged on baseline and canary"
        elif missing_critical:
            reason = "too little data to judge " + ", ".join(
                f"{r.name} (baseline {r.baseline_samples:g}, canary {r.canary_samples:g})" for r in missing_critical)
        elif doubts and complete:
            reason = f"real doubt after {took}: " + "; ".join(_summary(r) for r in doubts)
        else:
            reason = "nothing beyond the limits so far"
            if doubts:
                reason += "; " + "; ".join(_summary(r) for r in doubts)
        if results and not complete:
            reason = f"collecting ({took} of {duration_text(window_seconds)}); {reason}"
    return CanaryVerdict(
        service=service, verdict=verdict, decision=decision, score=score, reason=reason, complete=complete,
        alpha=config.alpha, alpha_per_check=alpha_each, elapsed_seconds=elapsed_seconds,
        window_seconds=window_seconds, source=source, checks=tuple(results), skipped=tuple(skipped), stage=stage,
    )

def judge_source(spec: ServiceSpec, source: CanarySource, config: JudgeConfig, *, start: float, end: float,
                 complete: bool, window_seconds: float) -> CanaryVerdict:
    """Read both arms over [start, end] and judge; an unreadable source gives an inconclusive verdict."""
    try:
        data = source.collect(spec, start, end)
    except SourceError as exc:
        return unavailable(spec, config, str(exc), complete=complete, elapsed_seconds=end - start,
                           window_seconds=window_seconds, source=source.describe(), stage=source.stage)
    return judge(spec, data, config, complete=complete, elapsed_seconds=end - start,
                 window_seconds=window_seconds, source=source.describe(), stage=source.stage)
