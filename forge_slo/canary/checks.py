"""The three kinds of check, vectorised over any leading axes so the judge and the benchmark share them.

Each takes both arms' data, a policy (allowed relative degradation, direction) and the per-check error
rate ``alpha``, and returns which comparisons fail, which are shown to be within the allowed limit, and
whether there is enough data to call either. Decisions come from the confidence sequences in
:mod:`forge_slo.canary.stats` and hold at every look (see that module for what is exact and what is
asymptotic).
"""

from __future__ import annotations

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
    """Per-comparison results; ratios are canary / baseline (1.1 = 10% higher), NaN where not computed."""

    fail: BoolArray
    within: BoolArray
    enough: BoolArray
    ratio: FloatArray
    lower: FloatArray
    upper: FloatArray
    baseline_n: FloatArray
    canary_n: FloatArray
    baseline_value: FloatArray
    canary_value: FloatArray


def _limits(policy: Policy) -> tuple[float, float]:
    return 1.0 + policy.allowed, 1.0 / (1.0 + policy.allowed)


def _interval_decisions(lower: FloatArray, upper: FloatArray, direction: Direction, hi: float, lo: float
                        ) -> tuple[BoolArray, BoolArray]:
    """fail / within from a confidence interval for the ratio."""
    worse_up = lower > hi
    worse_down = upper < lo
    ok_up = upper <= hi
    ok_down = lower >= lo
    if direction == "increase":
        return worse_up, ok_up
    if direction == "decrease":
        return worse_down, ok_down
    return worse_up | worse_down, ok_up & ok_down


def shift_check(bounds: FloatArray, baseline: FloatArray, canary: FloatArray, policy: Policy, alpha: float,
                design_samples: float, min_samples: float, interval: bool = False) -> Outcome:
    """Location: Mann-Whitney against the baseline scaled to the allowed limit; Hodges-Lehmann estimate.

    Fails when the canary is slower than ``(1 + allowed)`` x baseline with confidence (the normal-mixture
    boundary on the Mann-Whitney statistic), i.e. the lower end of the Hodges-Lehmann ratio's confidence
    sequence is above the limit. ``interval`` computes that estimate and interval (one comparison only).
    """
    b = np.asarray(baseline, dtype=np.float64)
    c = np.asarray(canary, dtype=np.float64)
    n_b, n_c = b.sum(-1), c.sum(-1)
    info = stats.location_info(b, c)
    design_info = 12.0 * design_samples * design_samples / (2.0 * design_samples + 1.0)
    z_bound = stats.mixture_boundary(info, alpha, design_info)
    hi, lo = _limits(policy)
    fail = np.zeros(n_b.shape, dtype=bool)
    within = np.ones(n_b.shape, dtype=bool)
    if policy.direction in ("increase", "both"):
        z = stats.location_z(bounds, b, c, hi)
        fail |= z > z_bound
        within &= z < -z_bound
    if policy.direction in ("decrease", "both"):
        z = stats.location_z(bounds, b, c, lo)
        fail |= z < -z_bound
        within &= z > z_bound
    decide = (n_b >= min_samples) & (n_c >= min_samples)
    ratio = np.full(n_b.shape, np.nan)
    lower = np.full(n_b.shape, np.nan)
    upper = np.full(n_b.shape, np.nan)
    if interval:
        if n_b.ndim:
            raise ValueError("the interval is computed for one comparison at a time")
        if n_b > 0 and n_c > 0:
            est, low, up = stats.shift_interval(bounds, b, c, float(z_bound))
            ratio, lower, upper = np.array(est), np.array(low), np.array(up)
    return Outcome(
        fail=fail & decide, within=within & decide, enough=decide, ratio=ratio, lower=lower, upper=upper,
        baseline_n=n_b, canary_n=n_c,
        baseline_value=stats.quantile_estimate(bounds, b, 0.5),
        canary_value=stats.quantile_estimate(bounds, c, 0.5),
    )


def quantile_check(bounds: FloatArray, baseline: FloatArray, canary: FloatArray, p: float, policy: Policy,
                   alpha: float, design_samples: float, min_samples: float) -> Outcome:
    """Tail: a quantile confidence sequence per arm (alpha/2 each), compared as a ratio interval.

    The interval for canary_q / baseline_q is [canary lower / baseline upper, canary upper / baseline
    lower]; it holds at every look with probability >= 1 - alpha. Enough data means both arms' quantile
    is bounded above (a p99 needs several hundred samples before it is).
    """
    b = np.asarray(baseline, dtype=np.float64)
    c = np.asarray(canary, dtype=np.float64)
    n_b, n_c = b.sum(-1), c.sum(-1)
    b_lo, b_hi = stats.quantile_cs(bounds, b, p, alpha / 2.0, design_samples)
    c_lo, c_hi = stats.quantile_cs(bounds, c, p, alpha / 2.0, design_samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.where(np.isfinite(b_hi) & (b_hi > 0), c_lo / b_hi, 0.0)
        upper = np.where(b_lo > 0, c_hi / np.where(b_lo > 0, b_lo, 1.0), np.inf)
        b_val = stats.quantile_estimate(bounds, b, p)
        c_val = stats.quantile_estimate(bounds, c, p)
        ratio = np.where(b_val > 0, c_val / b_val, np.nan)
    hi, lo = _limits(policy)
    fail, within = _interval_decisions(lower, upper, policy.direction, hi, lo)
    decide = (n_b >= min_samples) & (n_c >= min_samples)
    enough = decide & np.isfinite(b_hi) & np.isfinite(c_hi)
    return Outcome(
        fail=fail & decide, within=within & enough, enough=enough, ratio=ratio, lower=lower, upper=upper,
        baseline_n=n_b, canary_n=n_c, baseline_value=b_val, canary_value=c_val,
    )


def errors_check(baseline_errors: ArrayLike, baseline_total: ArrayLike, canary_errors: ArrayLike,
                 canary_total: ArrayLike, policy: Policy, alpha: float, min_samples: float,
                 floor: float = 0.0) -> Outcome:
    """Error rates: the ratio canary rate / baseline rate, from which arm each error came.

    Given the errors so far, each one is the canary's with probability w psi / (w psi + 1 - w), w the
    canary's share of requests and psi the ratio of error rates. An exact confidence sequence for that
    probability (beta-binomial mixture) gives one for psi, so zero baseline errors are fine: all errors
    on the canary's side push psi's lower end up. A canary fails only when psi is above 1 + allowed and its
    own error rate is above ``floor`` (a share of the SLO's error budget), both with confidence.
    """
    e_b = np.asarray(baseline_errors, dtype=np.float64)
    n_b = np.asarray(baseline_total, dtype=np.float64)
    e_c = np.asarray(canary_errors, dtype=np.float64)
    n_c = np.asarray(canary_total, dtype=np.float64)
    e_b, n_b, e_c, n_c = np.broadcast_arrays(e_b, n_b, e_c, n_c)
    e_b, e_c = np.clip(e_b, 0.0, n_b), np.clip(e_c, 0.0, n_c)
    errors = e_b + e_c
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(n_b + n_c > 0, n_c / (n_b + n_c), 0.5)
        share = np.clip(share, 1e-12, 1 - 1e-12)
        pi_lo, pi_hi = stats.rate_cs(e_c, errors, alpha)
        odds = (1.0 - share) / share

        def psi(pi: FloatArray) -> FloatArray:
            result: FloatArray = np.where(pi >= 1.0, np.inf, pi / np.where(pi < 1.0, 1.0 - pi, 1.0) * odds)
            return result

        lower, upper = psi(pi_lo), psi(pi_hi)
        rate_b = np.where(n_b > 0, e_b / np.where(n_b > 0, n_b, 1.0), np.nan)
        rate_c = np.where(n_c > 0, e_c / np.where(n_c > 0, n_c, 1.0), np.nan)
        ratio = np.where(errors > 0, np.where(e_b > 0, rate_c / rate_b, np.inf), np.nan)
    hi, lo = _limits(policy)
    fail, within = _interval_decisions(lower, upper, policy.direction, hi, lo)
    if floor > 0 and policy.direction != "decrease":
        c_lo, _ = stats.rate_cs(e_c, n_c, alpha)
        fail_up = (lower > hi) & (c_lo > floor)
        fail = fail_up | ((upper < lo) if policy.direction == "both" else np.zeros_like(fail))
    decide = (n_b >= min_samples) & (n_c >= min_samples)
    return Outcome(
        fail=fail & decide, within=within & decide, enough=decide, ratio=ratio, lower=lower, upper=upper,
        baseline_n=n_b, canary_n=n_c, baseline_value=rate_b, canary_value=rate_c,
    )


def quantile_of(kind: str) -> float:
    """p90 -> 0.9, p99 -> 0.99."""
    if not kind.startswith("p") or not kind[1:].isdigit():
        raise ValueError(f"{kind!r} is not a quantile check")
    digits = kind[1:]
    return float(int(digits)) / float(10 ** len(digits))


