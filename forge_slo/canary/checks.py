"""The two kinds of check, vectorised over any leading axes so the judge and the benchmark share them.

- :func:`shift_check`: the typical request (location), Mann-Whitney / Hodges-Lehmann.
- :func:`count_check`: bad events (failed requests; requests over a latency SLO's threshold) compared as
  counts: against the error budget the SLO's objective allows, and against the baseline.

Each takes both arms' data, a policy (allowed relative change, direction) and the check's error rate
``alpha``, and returns which comparisons fail, which lean towards failing, which are shown to be within the
limits, and whether there is enough data to call either. Decisions come from the test martingales in
:mod:`forge_slo.canary.stats` and hold at every look.

A comparison with the baseline fails when the canary is worse *with confidence* (the test is against no
change, which is where a canary as good as its baseline sits) and its estimate is beyond the allowed change
(a floor on what is worth failing for, as Kayenta's effect sizes are): a canary as good as its baseline
fails with probability at most ``alpha``, and a real but immaterial change never fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from forge_slo.canary import stats
from forge_slo.canary.model import Direction, Policy

FloatArray = NDArray[np.float64]
ArrayLike = Any
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class Outcome:
    """Per-comparison results; ratios are canary / baseline (1.1 = 10% higher), NaN where not computed.

    ``lean``: not failed, but the evidence for a fail is at least the square root of what a fail needs
    (the judge does not pass such a canary at the end of its window: real doubt).
    """

    fail: BoolArray
    lean: BoolArray
    within: BoolArray
    enough: BoolArray
    ratio: FloatArray
    lower: FloatArray
    upper: FloatArray
    baseline_n: FloatArray
    canary_n: FloatArray
    baseline_value: FloatArray
    canary_value: FloatArray


@dataclass(frozen=True)
class CountOutcome(Outcome):
    """A count check's results, with the error budget's view: burn rates are bad-event ratio / budget.

    ``by_budget``: failed because the canary burns the budget faster than the burn factor (with confidence)
    and faster than the baseline appears to; ``by_ratio``: failed as worse than the baseline beyond the
    allowed change; ``shared``: the canary burns beyond the factor with confidence, but the baseline burns
    as fast (an incident that is not the canary's).
    """

    baseline_bad: FloatArray
    canary_bad: FloatArray
    baseline_burn: FloatArray
    canary_burn: FloatArray
    burn_lower: FloatArray
    burn_upper: FloatArray
    by_budget: BoolArray
    by_ratio: BoolArray
    shared: BoolArray


def _sides(direction: Direction) -> tuple[bool, bool]:
    """(judge higher as worse, judge lower as worse)."""
    return direction in ("increase", "both"), direction in ("decrease", "both")


def _design_info(design_samples: float) -> float:
    """Fisher information of the AUC with ``design_samples`` a side."""
    return 12.0 * design_samples * design_samples / (2.0 * design_samples + 1.0)


def shift_check(bounds: FloatArray, baseline: FloatArray, canary: FloatArray, policy: Policy, alpha: float,
                design_samples: float, min_samples: float, interval: bool = False) -> Outcome:
    """Location: the Mann-Whitney statistic of canary against baseline, Hodges-Lehmann estimate.

    Fails when the canary is slower than the baseline with confidence (a one-sided normal-mixture test of the
    Mann-Whitney statistic) and its Hodges-Lehmann ratio is above ``1 + allowed``; shown within when the
    ratio's confidence sequence lies below ``1 + allowed``. ``interval`` computes the estimate and interval
    (one comparison only).
    """
    b = np.asarray(baseline, dtype=np.float64)
    c = np.asarray(canary, dtype=np.float64)
    n_b, n_c = b.sum(-1), c.sum(-1)
    info = stats.location_info(b, c)
    design = _design_info(design_samples)
    up, down = _sides(policy.direction)
    side_alpha = alpha / (up + down)
    threshold = math.log(1.0 / side_alpha)
    hi, lo = 1.0 + policy.allowed, 1.0 / (1.0 + policy.allowed)

    def z_at(auc: FloatArray) -> FloatArray:
        """The standardised Mann-Whitney statistic from an AUC (positive: canary slower)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            z: FloatArray = np.where(info > 0, (auc - 0.5) * np.sqrt(info), 0.0)
        return z

    fail = np.zeros(n_b.shape, dtype=bool)
    lean = np.zeros(n_b.shape, dtype=bool)
    within = np.ones(n_b.shape, dtype=bool)
    z_same = z_at(stats.auc(bounds, b, c, 1.0))
    for worse, limit, sign in ((up, hi, 1.0), (down, lo, -1.0)):  # slower is worse, or faster is
        if not worse:
            continue
        auc_limit = stats.auc(bounds, b, c, limit)
        evidence = stats.location_log_evidence(sign * z_same, info, side_alpha, design)
        beyond = sign * (auc_limit - 0.5) > 0  # the Hodges-Lehmann ratio is beyond the limit
        fail |= (evidence >= threshold) & beyond
        lean |= (evidence >= threshold / 2.0) & beyond
        within &= stats.location_log_evidence(-sign * z_at(auc_limit), info, side_alpha, design) >= threshold
    decide = (n_b >= min_samples) & (n_c >= min_samples)
    ratio = np.full(n_b.shape, np.nan)
    lower = np.full(n_b.shape, np.nan)
    upper = np.full(n_b.shape, np.nan)
    if interval:
        if n_b.ndim:
            raise ValueError("the interval is computed for one comparison at a time")
        if n_b > 0 and n_c > 0:
            z_bound = float(stats.location_z_bound(info, side_alpha, design))
            est, low, high = stats.shift_interval(bounds, b, c, z_bound)
            ratio, lower, upper = np.array(est), np.array(low), np.array(high)
    fail &= decide
    return Outcome(
        fail=fail, lean=lean & decide & ~fail, within=within & decide, enough=decide, ratio=ratio, lower=lower,
        upper=upper, baseline_n=n_b, canary_n=n_c,
        baseline_value=stats.quantile_estimate(bounds, b, 0.5),
        canary_value=stats.quantile_estimate(bounds, c, 0.5),
    )


@dataclass(frozen=True)
class Budget:
    """What the SLO allows: ``ratio`` of bad events (1 - objective), ``factor`` the burn rate a canary may
    reach, ``floor`` the share of the budget below which a canary worse than its baseline is not failed."""

    ratio: float
    factor: float = 1.0
    floor: float = 0.1


def count_check(baseline_bad: ArrayLike, baseline_total: ArrayLike, canary_bad: ArrayLike,
                canary_total: ArrayLike, policy: Policy, alpha: float, min_samples: float, budget: Budget,
                interval: bool = False) -> CountOutcome:
    """Bad events compared as counts, against the error budget and against the baseline.

    Two test martingales, averaged into one e-value held against ``1/alpha`` (so a canary as good as its
    baseline and within the budget fails with probability at most ``alpha``, and evidence from both adds up):

    - **Budget**: the canary's bad-event ratio is above ``factor x budget`` (an exact one-sided test of its
      binomial count), counted only as far as it is above the baseline's observed ratio too; when the
      baseline burns as fast, the canary is not failed and the outcome says ``shared``.
    - **Baseline**: given the bad events so far, each is the canary's with probability w psi / (w psi + 1 - w)
      (w its share of requests, psi the ratio of the arms' rates): an exact test that psi > 1, counted when
      the estimate is beyond ``1 + allowed`` and the canary's ratio is above ``floor x budget`` with
      confidence. Zero baseline events are no special case.

    ``interval`` computes the ends of the ratio's and of the burn rate's confidence sequences.
    """
    e_b, n_b, e_c, n_c = (np.asarray(x, dtype=np.float64) for x in (baseline_bad, baseline_total, canary_bad,
                                                                     canary_total))
    e_b, n_b, e_c, n_c = np.broadcast_arrays(e_b, n_b, e_c, n_c)
    e_b, e_c = np.clip(e_b, 0.0, n_b), np.clip(e_c, 0.0, n_c)
    threshold = math.log(1.0 / alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_b = np.where(n_b > 0, e_b / np.where(n_b > 0, n_b, 1.0), np.nan)
        rate_c = np.where(n_c > 0, e_c / np.where(n_c > 0, n_c, 1.0), np.nan)
        ratio = np.where(e_b + e_c > 0, np.where(e_b > 0, rate_c / rate_b, np.inf), np.nan)
    level = min(budget.factor * budget.ratio, 1.0 - 1e-12)
    judged = _sides(policy.direction)[0] and budget.ratio > 0
    vs_baseline = _VsBaseline(e_b, e_c, n_b, n_c, ratio, policy, budget, threshold)
    if judged:
        burning, past_baseline, within_budget = _budget_evidence(e_c, n_c, rate_b, level, threshold)
        combined = np.logaddexp(past_baseline, vs_baseline.evidence) - math.log(2.0)
        leaning = np.logaddexp(past_baseline, vs_baseline.lean_evidence) - math.log(2.0)
        shared = (burning - math.log(2.0) >= threshold) & (combined < threshold)
        # Told in budget terms when the budget's evidence alone reaches the level, or outweighs the other.
        from_budget = (past_baseline >= threshold) | (past_baseline >= vs_baseline.evidence)
    else:
        combined, leaning = vs_baseline.evidence, vs_baseline.lean_evidence
        within_budget = np.ones(n_b.shape, dtype=bool)
        shared = from_budget = np.zeros(n_b.shape, dtype=bool)
    decide = (n_b >= min_samples) & (n_c >= min_samples)
    fail = (combined >= threshold) & decide
    nan = np.full(n_b.shape, np.nan)
    lower, upper, burn_lower, burn_upper = nan, nan, nan, nan
    if interval:
        lower, upper = _ratio_interval(e_b, e_c, n_b, n_c, policy.direction, alpha)
        if budget.ratio > 0:
            burn_lower = stats.rate_bound(e_c, n_c, alpha, "above", stats.level_prior(level)) / budget.ratio
            burn_upper = stats.rate_bound(e_c, n_c, alpha, "below", stats.UNIFORM) / budget.ratio
    with np.errstate(divide="ignore", invalid="ignore"):
        burn_b = rate_b / budget.ratio if budget.ratio > 0 else nan
        burn_c = rate_c / budget.ratio if budget.ratio > 0 else nan
    return CountOutcome(
        fail=fail, lean=(leaning >= threshold / 2.0) & decide & ~fail,
        within=within_budget & vs_baseline.within & decide, enough=decide, ratio=ratio, lower=lower, upper=upper,
        baseline_n=n_b, canary_n=n_c, baseline_value=rate_b, canary_value=rate_c, baseline_bad=e_b,
        canary_bad=e_c, baseline_burn=np.asarray(burn_b, dtype=np.float64),
        canary_burn=np.asarray(burn_c, dtype=np.float64), burn_lower=np.asarray(burn_lower, dtype=np.float64),
        burn_upper=np.asarray(burn_upper, dtype=np.float64), by_budget=fail & from_budget,
        by_ratio=fail & ~from_budget, shared=shared & decide,
    )


def _budget_evidence(e_c: FloatArray, n_c: FloatArray, rate_b: FloatArray, level: float, threshold: float
                     ) -> tuple[FloatArray, FloatArray, BoolArray]:
    """The budget rule at bad-event ratio ``level``: (log evidence that the canary burns beyond it, the same
    counted only as far as the canary is also above the baseline's observed ratio, shown within it)."""
    prior = stats.level_prior(level)
    burning = stats.rate_log_evidence(e_c, n_c, level, "above", prior)
    # At the baseline's observed ratio when that is higher: a dominated e-value, so still a valid test.
    past = np.maximum(np.nan_to_num(rate_b, nan=0.0), level)
    past_baseline = np.minimum(burning, np.where(past > level, stats.rate_log_evidence(e_c, n_c, past, "above",
                                                                                        prior), burning))
    within = stats.rate_log_evidence(e_c, n_c, level, "below", stats.UNIFORM) >= threshold
    return burning, past_baseline, within


class _VsBaseline:
    """The comparison with the baseline: log evidence that the canary's rate is worse (zero weight where its
    estimate is within the allowed change or its rate is not shown above the floor), at the fail and at the
    lean level, and whether it is shown within the allowed change (or under the floor)."""

    def __init__(self, e_b: FloatArray, e_c: FloatArray, n_b: FloatArray, n_c: FloatArray, ratio: FloatArray,
                 policy: Policy, budget: Budget, threshold: float) -> None:
        up, down = _sides(policy.direction)
        events = e_b + e_c
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.clip(np.where(n_b + n_c > 0, n_c / (n_b + n_c), 0.5), 1e-12, 1.0 - 1e-12)
        hi, lo = 1.0 + policy.allowed, 1.0 / (1.0 + policy.allowed)
        within_threshold = threshold + math.log(up + down)  # one test per side
        none = np.full(e_b.shape, -np.inf)
        parts, lean_parts = [], []
        self.within = np.ones(e_b.shape, dtype=bool)
        if up:
            worse = stats.rate_log_evidence(e_c, events, weight, "above", stats.SHARE_ABOVE)
            beyond = np.nan_to_num(ratio, nan=0.0) > hi
            floor_level = budget.floor * budget.ratio
            floor = (stats.rate_log_evidence(e_c, n_c, floor_level, "above", stats.level_prior(floor_level))
                     if floor_level > 0 else np.full(e_b.shape, np.inf))
            parts.append(np.where(beyond & (floor >= threshold), worse, none))
            lean_parts.append(np.where(beyond & (floor >= threshold / 2.0), worse, none))
            shown_close = stats.rate_log_evidence(e_c, events, stats.canary_share(hi, weight), "below",
                                                  stats.SHARE_BELOW) >= within_threshold
            shown_small = (stats.rate_log_evidence(e_c, n_c, floor_level, "below", stats.UNIFORM)
                           >= within_threshold) if floor_level > 0 else np.zeros(e_b.shape, dtype=bool)
            self.within &= shown_close | shown_small
        if down:
            better = stats.rate_log_evidence(e_c, events, weight, "below", stats.SHARE_BELOW)
            beyond = np.nan_to_num(ratio, nan=1.0) < lo
            parts.append(np.where(beyond, better, none))
            lean_parts.append(parts[-1])
            self.within &= stats.rate_log_evidence(e_c, events, stats.canary_share(lo, weight), "above",
                                                   stats.SHARE_ABOVE) >= within_threshold
        # Both directions: the average of the two sides' e-values.
        self.evidence: FloatArray = np.logaddexp.reduce(parts, axis=0) - math.log(len(parts))
        self.lean_evidence: FloatArray = np.logaddexp.reduce(lean_parts, axis=0) - math.log(len(lean_parts))


def _ratio_interval(e_b: FloatArray, e_c: FloatArray, n_b: FloatArray, n_c: FloatArray, direction: Direction,
                    alpha: float) -> tuple[FloatArray, FloatArray]:
    """Ends of the confidence sequence of psi, the ratio of the canary's rate to the baseline's."""
    up, down = _sides(direction)
    side_alpha = alpha / (up + down)
    events = e_b + e_c
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.clip(np.where(n_b + n_c > 0, n_c / (n_b + n_c), 0.5), 1e-12, 1.0 - 1e-12)
    share_lo = stats.rate_bound(e_c, events, side_alpha, "above", stats.SHARE_ABOVE)
    share_hi = stats.rate_bound(e_c, events, side_alpha, "below", stats.SHARE_BELOW)
    return stats.rate_ratio(share_lo, weight), stats.rate_ratio(share_hi, weight)
