"""Anytime-valid statistics of the canary judge, vectorised with numpy over any leading axes.

Every decision is a test martingale (an e-process) held against ``1/alpha``: by Ville's inequality a
nonnegative supermartingale ever reaches ``1/alpha`` with probability at most ``alpha`` under its null, so the
gate may be asked as often as anyone likes without inflating its error rates. Two kinds:

- **Location (Mann-Whitney / Hodges-Lehmann).** ``auc(ratio)`` is P(canary > ratio x baseline) + 1/2 P(tie)
  from two histograms that share bucket bounds (per-request data is binned on a fine log grid first). Its
  tie-corrected null variance gives the Fisher information I; the standardised statistic is held against a
  one-sided (half-normal) mixture of Gaussian likelihood ratios (Robbins; Howard et al. 2021), which a
  Brownian motion in information time crosses with probability at most alpha. The Mann-Whitney process is
  asymptotically such a Brownian motion, so the location test is *asymptotically* anytime-valid
  (Waudby-Smith et al. 2021, "asymptotic confidence sequences"). Inverting it in the ratio gives the
  Hodges-Lehmann shift with an interval.
- **Counts (bad events: errors, requests over an SLO's threshold).** ``rate_log_evidence`` is a Beta mixture
  of Bernoulli likelihood ratios against "the rate is at most p0" (or "at least p0"), the mixture truncated
  to the alternative side. Each component is a supermartingale under every rate on the null side, so the
  test is exact, not asymptotic. It judges one arm's bad-event ratio against what an objective allows (the
  error budget times a burn factor), and, conditionally on the bad events so far, which arm each came from
  (Bernoulli with share ``w psi / (w psi + 1 - w)``, w the canary's share of requests, psi the ratio of the
  arms' rates): an exact test of two binomial (or Poisson) arms compared as counts, which needs no baseline
  event to exist.

Everything here is pure and deterministic; the judge (``judge.py``) and the benchmark call the same
functions.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.special import betainc, betaincc, betaln, log_ndtr  # type: ignore[import-untyped,unused-ignore]

FloatArray = NDArray[np.float64]
ArrayLike = Any
Side = Literal["above", "below"]

_BISECT_STEPS = 64
_SHIFT_STEPS = 40  # bisection of a ratio in [1e-4, 1e4] to a relative 2e-11
_TINY = 1e-15

# Mixture priors of the count tests (each truncated to its alternative side). The share of bad events that
# are the canary's: Beta(2, 1) above the null share (weight on a canary several times worse), Beta(1, 2)
# below it. A bad-event ratio above a level: level_prior, whose weight lies on 1.3x-10x the SLO's level
# whatever the objective; below a level: uniform.
SHARE_ABOVE: tuple[float, float] = (2.0, 1.0)
SHARE_BELOW: tuple[float, float] = (1.0, 2.0)
UNIFORM: tuple[float, float] = (1.0, 1.0)
_LEVEL_SPREAD = 3.0


# ------------------------------------------------------------------------------------------------ location

def _optimal_ratio(alpha: float) -> float:
    """r = v*/m minimising the normal-mixture boundary at v*: solves r - log(1 + r) = 2 log(1/alpha)."""
    target = 2.0 * math.log(1.0 / alpha)
    r = target + math.log1p(target)
    for _ in range(50):
        r = target + math.log1p(r)
    return r


def location_log_evidence(z: ArrayLike, info: ArrayLike, alpha: float, design_info: float) -> FloatArray:
    """log of the one-sided normal-mixture e-value of a standardised statistic ``z`` (large: evidence that it
    is positive) at Fisher information ``info``.

    With S = z sqrt(v) a Brownian motion in information time v and a half-normal N(0, 1/m) mixture over
    the drift, M(v) = 2 sqrt(m / (v + m)) exp(S^2 / (2 (v + m))) Phi(S / sqrt(v + m)) is a nonnegative
    martingale under no drift (a supermartingale under a negative one). ``m`` is chosen so the test is
    sharpest at ``design_info``.
    """
    v = np.asarray(info, dtype=np.float64)
    zz = np.asarray(z, dtype=np.float64)
    m = design_info / _optimal_ratio(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = zz * np.sqrt(v / (v + m))
        result = math.log(2.0) + 0.5 * np.log(m / (v + m)) + 0.5 * scaled * scaled + log_ndtr(scaled)
    out: FloatArray = np.where(v > 0, result, -np.inf)
    return out


def location_z_bound(info: ArrayLike, alpha: float, design_info: float) -> FloatArray:
    """The z at which :func:`location_log_evidence` reaches log(1/alpha) (infinity without information)."""
    v = np.asarray(info, dtype=np.float64)
    threshold = math.log(1.0 / alpha)
    lo = np.zeros_like(v)
    hi = np.full_like(v, 64.0)
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2.0
        above = location_log_evidence(mid, v, alpha, design_info) >= threshold
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    result: FloatArray = np.where(v > 0, hi, np.inf)
    return result


def _lower_edges(bounds: FloatArray) -> FloatArray:
    """Lower edge of each bucket: 0 for the first (latencies are >= 0), else the previous bound."""
    first = min(0.0, float(bounds[0]))
    return np.concatenate([[first], bounds[:-1]])


def auc(bounds: FloatArray, baseline: FloatArray, canary: FloatArray, ratio: ArrayLike) -> FloatArray:
    """P(C > ratio * B) + 1/2 P(C = ratio * B) from bucket counts sharing ``bounds`` (last bound +Inf).

    Within a finite bucket observations are taken as spread uniformly (Prometheus' histogram_quantile makes
    the same assumption); at ``ratio == 1`` this is exactly the Mann-Whitney AUC with ties inside a bucket
    counted as one half, whatever the spread. Mass in the +Inf bucket sits at infinity. ``ratio`` is a
    scalar or broadcasts against the leading axes of the counts.
    """
    bounds = np.asarray(bounds, dtype=np.float64)
    base = np.asarray(baseline, dtype=np.float64)
    can = np.asarray(canary, dtype=np.float64)
    k = np.asarray(ratio, dtype=np.float64)
    batch = np.broadcast_shapes(base.shape[:-1], can.shape[:-1], k.shape)
    base = np.broadcast_to(base, batch + base.shape[-1:])
    can = np.broadcast_to(can, batch + can.shape[-1:])
    k = np.broadcast_to(k, batch)
    n_b = base.sum(-1)
    n_c = can.sum(-1)
    p_b = base / np.where(n_b > 0, n_b, 1.0)[..., None]
    q_c = can / np.where(n_c > 0, n_c, 1.0)[..., None]
    finite = bounds.shape[0] - 1
    # Knots of the baseline's piecewise-linear CDF: the first lower edge, then every finite bound.
    xs = _lower_edges(bounds)[:1]
    xs = np.concatenate([xs, bounds[:finite]])
    fs = np.concatenate([np.zeros(batch + (1,)), np.cumsum(p_b[..., :finite], axis=-1)], axis=-1)
    widths = np.diff(xs)
    gs = np.concatenate([np.zeros(batch + (1,)),
                         np.cumsum(widths * (fs[..., :-1] + fs[..., 1:]) / 2.0, axis=-1)], axis=-1)
    slopes = np.where(widths > 0, np.diff(fs, axis=-1) / np.where(widths > 0, widths, 1.0), 0.0)
    slopes = np.concatenate([slopes, np.zeros(batch + (1,))], axis=-1)  # flat beyond the last finite bound

    def integral(y: FloatArray) -> FloatArray:
        """G(y): the integral of the baseline CDF from the first edge to y (1-D, or batch + (finite,))."""
        idx = np.searchsorted(xs, y, side="right") - 1
        knot = np.clip(idx, 0, finite)
        dx = y - xs[knot]
        if y.ndim == 1:  # one ratio for the whole batch: the same knots everywhere
            g0, f0, sl = gs[..., knot], fs[..., knot], slopes[..., knot]
        else:
            g0 = np.take_along_axis(gs, knot, axis=-1)
            f0 = np.take_along_axis(fs, knot, axis=-1)
            sl = np.take_along_axis(slopes, knot, axis=-1)
        return np.where(idx < 0, 0.0, g0 + dx * f0 + 0.5 * dx * dx * sl)

    lo = xs[:-1]
    hi = xs[1:]
    if np.all(k == k.flat[0]) if k.size else True:
        scale: FloatArray | float = float(k.flat[0]) if k.size else 1.0
        upper_g = integral(hi / scale)
        lower_g = integral(lo / scale)
    else:
        scale = k[..., None]
        upper_g = integral(np.broadcast_to(hi / scale, batch + (finite,)))
        lower_g = integral(np.broadcast_to(lo / scale, batch + (finite,)))
    width = hi - lo
    mean_f = np.where(width > 0, scale * (upper_g - lower_g) / np.where(width > 0, width, 1.0), 0.0)
    if finite and width[0] <= 0:  # a bucket at exactly 0 (bound 0.0): a point mass tied with the baseline's
        mean_f = np.array(np.broadcast_to(mean_f, batch + (finite,)))
        mean_f[..., 0] = 0.5 * p_b[..., 0]
    tail_b = p_b[..., finite]
    total = (q_c[..., :finite] * mean_f).sum(-1) + q_c[..., finite] * ((1.0 - tail_b) + 0.5 * tail_b)
    result: FloatArray = np.where((n_b > 0) & (n_c > 0), total, 0.5)
    return result


def auc_null_variance(baseline: FloatArray, canary: FloatArray) -> FloatArray:
    """Variance of the AUC when both arms come from one distribution, corrected for ties within buckets."""
    base = np.asarray(baseline, dtype=np.float64)
    can = np.asarray(canary, dtype=np.float64)
    n_b = base.sum(-1)
    n_c = can.sum(-1)
    n = n_b + n_c
    t = base + can
    ties = np.maximum((t**3 - t).sum(-1), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = ((n + 1.0) - ties / (n * (n - 1.0))) / (12.0 * n_b * n_c)
    result: FloatArray = np.where((n_b > 0) & (n_c > 0) & (n > 1), np.maximum(var, 0.0), np.inf)
    return result


def location_z(bounds: FloatArray, baseline: FloatArray, canary: FloatArray, ratio: ArrayLike) -> FloatArray:
    """Standardised Mann-Whitney statistic of canary vs ``ratio`` x baseline (positive: canary slower)."""
    var = auc_null_variance(baseline, canary)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (auc(bounds, baseline, canary, ratio) - 0.5) / np.sqrt(var)
    result: FloatArray = np.where(np.isfinite(var) & (var > 0), z, 0.0)
    return result


def location_info(baseline: FloatArray, canary: FloatArray) -> FloatArray:
    """Fisher information of the AUC (1 / its null variance)."""
    var = auc_null_variance(baseline, canary)
    with np.errstate(divide="ignore"):
        result: FloatArray = np.where(np.isfinite(var) & (var > 0), 1.0 / var, 0.0)
    return result


def shift_interval(bounds: FloatArray, baseline: FloatArray, canary: FloatArray, z_bound: float,
                   max_ratio: float = 1e4) -> tuple[float, float, float]:
    """Hodges-Lehmann ratio (canary / baseline) and the ends of its confidence interval for one comparison.

    The estimate solves AUC(r) = 1/2; the ends solve AUC(r) - 1/2 = +/- z_bound x standard error. An end
    that cannot be reached within [1/max_ratio, max_ratio] is 0 or infinity.
    """
    sd = float(np.sqrt(auc_null_variance(baseline, canary)))
    if not math.isfinite(sd):
        return math.nan, 0.0, math.inf
    lo_log, hi_log = -math.log(max_ratio), math.log(max_ratio)

    def solve(target: float) -> float:
        def f(s: float) -> float:
            return float(auc(bounds, baseline, canary, math.exp(s))) - 0.5 - target

        if f(lo_log) < 0:
            return 0.0
        if f(hi_log) > 0:
            return math.inf
        a, b = lo_log, hi_log
        for _ in range(_SHIFT_STEPS):
            mid = (a + b) / 2
            if f(mid) > 0:
                a = mid
            else:
                b = mid
        return math.exp((a + b) / 2)

    return solve(0.0), solve(z_bound * sd), solve(-z_bound * sd)


# ---------------------------------------------------------------------------------------------- quantiles

def quantile_estimate(bounds: FloatArray, counts: FloatArray, p: float) -> FloatArray:
    """The p-quantile interpolated linearly inside its bucket, as Prometheus' histogram_quantile does."""
    bounds = np.asarray(bounds, dtype=np.float64)
    cum = np.cumsum(np.asarray(counts, dtype=np.float64), axis=-1)
    n = cum[..., -1]
    rank = p * n
    idx = np.clip((cum < rank[..., None]).sum(-1), 0, bounds.shape[0] - 1)
    lower_edges = _lower_edges(bounds)
    finite_last = bounds[-2] if bounds.shape[0] > 1 else bounds[0]
    lo = lower_edges[idx]
    hi = bounds[idx]
    prev = np.where(idx > 0, np.take_along_axis(cum, np.clip(idx - 1, 0, None)[..., None], -1)[..., 0], 0.0)
    here = np.take_along_axis(cum, idx[..., None], -1)[..., 0] - prev
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(here > 0, (rank - prev) / here, 0.0)
    value = np.where(np.isinf(hi), finite_last, lo + (hi - lo) * frac)
    result: FloatArray = np.where(n > 0, value, np.nan)
    return result


# -------------------------------------------------------------------------------------------------- counts

def level_prior(anchor: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """A prior for a bad-event ratio above a level near ``anchor``: Beta(1, b) with mean about 3 x anchor."""
    level = np.clip(np.asarray(anchor, dtype=np.float64), _TINY, 1.0 - _TINY)
    b = np.maximum(1.0 / (_LEVEL_SPREAD * level) - 1.0, 1.0)
    return np.ones_like(b), b


Prior = tuple[ArrayLike, ArrayLike]


def rate_log_evidence(events: ArrayLike, trials: ArrayLike, p0: ArrayLike, side: Side, prior: Prior
                      ) -> FloatArray:
    """log of the e-value against "the Bernoulli rate is at most ``p0``" (side ``above``) or "at least ``p0``"
    (``below``) after ``events`` in ``trials``.

    The e-value is a Beta(a, b) mixture of likelihood ratios L(p) / L(p0), the prior truncated to the
    alternative side of p0, in closed form with regularised incomplete beta functions. Each ratio with p on
    the alternative side is a supermartingale under every rate on the null side, hence so is the mixture.
    Counts may be fractional (per-token observations scaled to requests); no trials give 0 (no evidence).
    """
    k = np.asarray(events, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    level = np.asarray(p0, dtype=np.float64)
    a = np.asarray(prior[0], dtype=np.float64)
    b = np.asarray(prior[1], dtype=np.float64)
    k, n, level, a, b = np.broadcast_arrays(k, n, level, a, b)
    k = np.clip(k, 0.0, n)
    level = np.clip(level, _TINY, 1.0 - _TINY)
    tail = betaincc if side == "above" else betainc
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        posterior = betaln(a + k, b + n - k) + np.log(tail(a + k, b + n - k, level))
        prior_mass = betaln(a, b) + np.log(tail(a, b, level))
        result = posterior - prior_mass - k * np.log(level) - (n - k) * np.log1p(-level)
        result = np.where(np.isfinite(prior_mass), result, -np.inf)  # no alternative left: no evidence
    out: FloatArray = np.where(n > 0, np.nan_to_num(result, nan=-np.inf, posinf=np.inf), 0.0)
    return out


def rate_bound(events: ArrayLike, trials: ArrayLike, alpha: float, side: Side, prior: Prior) -> FloatArray:
    """The end of a confidence sequence for a Bernoulli rate: with ``above``, the largest p0 that the data
    show the rate to be above (0 when none); with ``below``, the smallest p0 they show it below (1 when none).

    The inverse of :func:`rate_log_evidence` at ``alpha`` with one fixed ``prior``, found by bisection (the
    evidence falls as p0 moves towards the data).
    """
    k = np.asarray(events, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    k, n = np.broadcast_arrays(k, n)
    threshold = math.log(1.0 / alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = np.clip(np.where(n > 0, k / np.where(n > 0, n, 1.0), 0.5), _TINY, 1.0 - _TINY)
    if side == "above":
        # in log p0 between 1e-15 and the observed ratio: evidence at the low end, none at the centre
        lo, hi = np.full_like(centre, math.log(_TINY)), np.log(centre)
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2.0
            shown = rate_log_evidence(k, n, np.exp(mid), "above", prior) >= threshold
            lo = np.where(shown, mid, lo)
            hi = np.where(shown, hi, mid)
        some = rate_log_evidence(k, n, _TINY, "above", prior) >= threshold
        result: FloatArray = np.where(some & (n > 0), np.exp(lo), 0.0)
        return result
    lo, hi = centre.copy(), np.full_like(centre, 1.0 - _TINY)
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2.0
        shown = rate_log_evidence(k, n, mid, "below", prior) >= threshold
        hi = np.where(shown, mid, hi)
        lo = np.where(shown, lo, mid)
    some = rate_log_evidence(k, n, 1.0 - _TINY, "below", prior) >= threshold
    upper: FloatArray = np.where(some & (n > 0), hi, 1.0)
    return upper


def canary_share(ratio: ArrayLike, canary_weight: ArrayLike) -> FloatArray:
    """The chance that a bad event is the canary's when its rate is ``ratio`` x the baseline's and it gets the
    share ``canary_weight`` of requests: w psi / (w psi + 1 - w)."""
    psi = np.asarray(ratio, dtype=np.float64)
    w = np.asarray(canary_weight, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        result: FloatArray = np.where(np.isinf(psi), 1.0, w * psi / (w * psi + 1.0 - w))
    return result


def rate_ratio(share: ArrayLike, canary_weight: ArrayLike) -> FloatArray:
    """The inverse of :func:`canary_share`: psi from the canary's share of bad events (infinity at 1)."""
    pi = np.asarray(share, dtype=np.float64)
    w = np.asarray(canary_weight, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        result: FloatArray = np.where(pi >= 1.0, np.inf, pi / np.where(pi < 1.0, 1.0 - pi, 1.0) * (1.0 - w) / w)
    return result


# --------------------------------------------------------------------------------------------------- grids

# A log grid spans at most this many decades below the largest value, so one absurdly small value cannot
# make it millions of buckets long; smaller values share the first bucket (ties, which is conservative).
LOG_GRID_DECADES = 9


def log_grid(values: FloatArray, ratio: float = 1.001) -> FloatArray:
    """Bucket bounds for per-request values: a log grid of ``ratio`` from the smallest positive value (at most
    ``LOG_GRID_DECADES`` below the largest), then +Inf. The values must be finite."""
    vals = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(vals)):
        raise ValueError("log_grid needs finite values")
    positive = vals[vals > 0]
    if positive.size == 0:
        return np.array([0.0, np.inf])
    high = float(vals.max())
    low = max(float(positive.min()), high * 10.0 ** -LOG_GRID_DECADES)
    steps = int(math.ceil(math.log(high / low) / math.log(ratio))) + 1 if high > low else 1
    grid = low * ratio ** np.arange(steps + 1, dtype=np.float64)
    if np.any(vals <= 0):
        grid = np.concatenate([[0.0], grid])
    return np.concatenate([grid, [np.inf]])


def bin_counts(bounds: FloatArray, values: FloatArray) -> FloatArray:
    """Counts of ``values`` per bucket (bucket i holds (bounds[i-1], bounds[i]])."""
    idx = np.searchsorted(bounds, np.asarray(values, dtype=np.float64), side="left")
    idx = np.clip(idx, 0, bounds.shape[0] - 1)
    return np.bincount(idx, minlength=bounds.shape[0]).astype(np.float64)
