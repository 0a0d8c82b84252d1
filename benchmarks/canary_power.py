"""How often the canary judge fails identical canaries and catches regressions at low and high traffic,
looked at every minute, side by side with a Kayenta-style judge.

Simulates canaries (500 per scenario and rate; ``--quick``: 100) for 30 minutes, each arm a Poisson stream
of requests at 0.5, 1, 2 and 5 requests/s with a lognormal TTFT (median 200 ms, sigma 0.5), a lognormal
TPOT (median 25 ms, sigma 0.3) and independent errors (0.1%), judged against a spec of three SLOs: TTFT 99%
under 1 s, TPOT 99% under 75 ms, availability 99.9% (the baseline burns 0.06x, 0.01x and 1x of these
budgets; ``--availability 99.5`` judges errors against 99.5%). Two judges are asked every minute:

- forge-slo's judge with its default settings (ttft.shift, ttft.tail, tpot.shift, tpot.tail and
  availability.errors; alpha 0.01 across all of them and every look), through the same vectorised check
  functions ``forge_slo.canary.judge`` uses (per-request values binned on a 1% log grid here for speed;
  the CLI bins records at 0.1%). It stops at its first pass or fail, as ``--interval`` does; the look at
  minute 30 is complete. A few canaries are also judged by the full ``judge()`` and must agree.
- a Kayenta-style judge: Mann-Whitney on per-minute means (TTFT, TPOT) and error rates at 98% confidence,
  re-run every minute on all minutes so far, failing when any metric is significantly worse; and the same
  judge made as strict as forge-slo's false-positive target (z > 3.1), for power at equal false positives.

Scenarios: identical arms; canary median TTFT +5%, +10%, +20%; a tail mixture (2% of requests several times
slower) that doubles the p99; a widened distribution (same median) that doubles the p99; TPOT +10%, +25%;
errors 0.1% -> 0.5%, 1%, 2%; median TTFT +20% from minute 15 on. Prints, per scenario and rate, how often
each judge fails the canary (false positives on identical arms), how often forge-slo ends with a pass, and
the median time to fail, then checks the targets of issue 16.

    python benchmarks/canary_power.py            # 500 canaries per scenario and rate (5-8 minutes on 2 cores)
    python benchmarks/canary_power.py --quick    # 100 canaries, a CI-sized check (1-2 minutes)
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import brentq  # type: ignore[import-untyped,unused-ignore]
from scipy.special import ndtr, ndtri  # type: ignore[import-untyped,unused-ignore]
from scipy.stats import rankdata  # type: ignore[import-untyped,unused-ignore]

from forge_slo.canary import checks, judge
from forge_slo.canary.model import ErrorData, JudgeConfig, LatencyData, SloData
from forge_slo.spec import load_specs
from forge_slo.spec.model import LatencySLI, ServiceSpec

MINUTES = 30
RATES = (0.5, 1.0, 2.0, 5.0)
TTFT_MEDIAN_S, TTFT_SIGMA = 0.2, 0.5
TPOT_MEDIAN_S, TPOT_SIGMA = 0.025, 0.3
BASE_ERROR = 0.001
GRID_RATIO = 1.01
KAYENTA_Z = 2.3263478740408408  # 98% two-sided confidence: one side's 1% quantile
# The same judge made as strict as forge-slo's false-positive target: with 3 metrics looked at 29 times, z > 3.1
# fails at most 1% of identical canaries at 0.5-5 requests/s (measured: 0.2% to 0.9%).
KAYENTA_MATCHED_Z = 3.1
Z99 = float(ndtri(0.99))
TAIL_SHARE = 0.02  # the tail mixture's share of slowed requests
SPEC = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: bench
preset: vllm
slos:
  - {name: ttft, objective: 99, sli: {latency: {metric: ttft, threshold: 1.0}}}
  - {name: tpot, objective: 99, sli: {latency: {metric: tpot, threshold: 0.075}}}
  - {name: availability, objective: AVAILABILITY, sli: {availability: {}}}
"""


def _tail_factor() -> float:
    """How much slower the tail mixture's requests are, so that the mixture's p99 is twice the baseline's."""
    target = 2.0 * math.exp(TTFT_SIGMA * Z99)  # in units of the median

    def excess(k: float) -> float:
        below = ((1 - TAIL_SHARE) * ndtr(math.log(target) / TTFT_SIGMA)
                 + TAIL_SHARE * ndtr(math.log(target / k) / TTFT_SIGMA))
        return float(below) - 0.99

    return float(brentq(excess, 1.0, 100.0))


TAIL_FACTOR = _tail_factor()
WIDE_SIGMA = TTFT_SIGMA + math.log(2.0) / Z99  # same median, twice the p99


@dataclass(frozen=True)
class Scenario:
    name: str
    regression: bool
    ttft_scale: float = 1.0
    tail: bool = False
    wide: bool = False
    tpot_scale: float = 1.0
    error: float = BASE_ERROR
    from_minute: int = 0  # the canary's change starts here


SCENARIOS = (
    Scenario("identical arms", False),
    Scenario("median TTFT +5%", True, ttft_scale=1.05),
    Scenario("median TTFT +10%", True, ttft_scale=1.10),
    Scenario("median TTFT +20%", True, ttft_scale=1.20),
    Scenario(f"tail: {TAIL_SHARE:.0%} of requests x{TAIL_FACTOR:.1f} (p99 x2)", True, tail=True),
    Scenario(f"wider: sigma {TTFT_SIGMA:g} -> {WIDE_SIGMA:.2f} (p99 x2)", True, wide=True),
    Scenario("TPOT +10%", True, tpot_scale=1.10),
    Scenario("TPOT +25%", True, tpot_scale=1.25),
    Scenario("errors 0.1% -> 0.5%", True, error=0.005),
    Scenario("errors 0.1% -> 1%", True, error=0.01),
    Scenario("errors 0.1% -> 2%", True, error=0.02),
    Scenario("median TTFT +20% from minute 15", True, ttft_scale=1.20, from_minute=15),
)


def load_spec(availability: float) -> ServiceSpec:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(SPEC.replace("AVAILABILITY", f"{availability:g}"), encoding="utf-8")
        return load_specs([str(path)])[0]


def grid(median: float, low_sigmas: float, high: float, threshold: float) -> np.ndarray:
    """A log grid from ``median`` e^-low_sigmas to ``high``, with the SLO's threshold a bound, then +Inf."""
    low = median * math.exp(-low_sigmas)
    steps = int(math.ceil(math.log(high / low) / math.log(GRID_RATIO)))
    bounds = np.union1d(low * GRID_RATIO ** np.arange(steps + 1), [threshold])
    return np.concatenate([bounds, [np.inf]])


@dataclass
class Arm:
    ttft: np.ndarray          # (C, MINUTES, K) cumulative bucket counts per look
    tpot: np.ndarray
    requests: np.ndarray      # (C, MINUTES) cumulative
    errors: np.ndarray        # (C, MINUTES) cumulative
    minute_means: tuple[np.ndarray, ...]  # per-minute mean TTFT, mean TPOT, error rate (Kayenta)


def _histograms(values: np.ndarray, cell: np.ndarray, bounds: np.ndarray, cells: int) -> np.ndarray:
    k = bounds.shape[0]
    bucket = np.clip(np.searchsorted(bounds, values, side="left"), 0, k - 1)
    per_minute = np.bincount(cell * k + bucket, minlength=cells * k).reshape(-1, MINUTES, k)
    return np.cumsum(per_minute, axis=1, dtype=np.float64)


def simulate(rng: np.random.Generator, canaries: int, rate: float, scenario: Scenario, canary: bool,
             bounds: tuple[np.ndarray, np.ndarray]) -> Arm:
    n = rng.poisson(rate * 60.0, (canaries, MINUTES))
    total = int(n.sum())
    cell = np.repeat(np.arange(canaries * MINUTES), n.ravel())
    changed = canary & (cell % MINUTES >= scenario.from_minute)
    sigma = np.where(changed & scenario.wide, WIDE_SIGMA, TTFT_SIGMA)
    ttft = TTFT_MEDIAN_S * np.exp(sigma * rng.standard_normal(total))
    ttft *= np.where(changed, scenario.ttft_scale, 1.0)
    if scenario.tail:
        ttft *= np.where(changed & (rng.random(total) < TAIL_SHARE), TAIL_FACTOR, 1.0)
    tpot = TPOT_MEDIAN_S * np.exp(TPOT_SIGMA * rng.standard_normal(total)) * np.where(changed, scenario.tpot_scale, 1.0)
    error = np.where(changed, scenario.error, BASE_ERROR)
    failed = rng.random(total) < error
    cells = canaries * MINUTES
    # Failed requests have no latency: only served ones are in the histograms, as in the server's.
    served = ~failed
    ttft_hist = _histograms(ttft[served], cell[served], bounds[0], cells)
    tpot_hist = _histograms(tpot[served], cell[served], bounds[1], cells)
    errors = np.bincount(cell, weights=failed, minlength=cells).reshape(canaries, MINUTES)
    with np.errstate(invalid="ignore", divide="ignore"):
        served_n = np.bincount(cell, weights=served, minlength=cells).reshape(canaries, MINUTES)
        means = tuple(np.bincount(cell[served], weights=v[served], minlength=cells).reshape(canaries, MINUTES)
                      / served_n for v in (ttft, tpot))
        error_rate = np.where(n > 0, errors / np.maximum(n, 1), np.nan)
    return Arm(ttft_hist, tpot_hist, np.cumsum(n, axis=1).astype(np.float64), np.cumsum(errors, axis=1),
               (*means, error_rate))


@dataclass(frozen=True)
class Looks:
    """forge-slo's judge at every look: (C, MINUTES) flags."""

    fail: np.ndarray
    within: np.ndarray   # every check shown within its limits: an early pass
    settled: np.ndarray  # at the complete look: enough data and no check in doubt


def forge_looks(spec: ServiceSpec, base: Arm, can: Arm, bounds: tuple[np.ndarray, np.ndarray],
                config: JudgeConfig) -> Looks:
    planned, _ = judge.plan_checks(spec, config)
    alpha = config.alpha / len(planned)
    slos = {s.name: s for s in spec.slos}
    shape = base.requests.shape
    fail, within, settled = np.zeros(shape, bool), np.ones(shape, bool), np.ones(shape, bool)
    for check in planned:
        slo = slos[check.slo]
        out: checks.Outcome
        if check.kind == "errors":
            out = checks.count_check(base.errors, base.requests, can.errors, can.requests, check.policy, alpha,
                                     config.min_samples, checks.Budget(slo.error_budget_ratio, config.burn_factor,
                                                                       config.errors_floor))
            shared = out.shared if isinstance(out, checks.CountOutcome) else np.zeros(shape, bool)
        else:
            which = 0 if check.slo == "ttft" else 1
            b_hist, c_hist = (base.ttft, can.ttft) if which == 0 else (base.tpot, can.tpot)
            if check.kind == "shift":
                out = checks.shift_check(bounds[which], b_hist, c_hist, check.policy, alpha, config.design_samples,
                                         config.min_samples)
                shared = np.zeros(shape, bool)
            else:
                assert isinstance(slo.sli, LatencySLI)
                index = int(np.flatnonzero(np.isclose(bounds[which], slo.sli.threshold_seconds))[0])
                n_b, n_c = b_hist.sum(-1), c_hist.sum(-1)
                over_b = n_b - b_hist[..., : index + 1].sum(-1)
                over_c = n_c - c_hist[..., : index + 1].sum(-1)
                out = checks.count_check(over_b, n_b, over_c, n_c, check.policy, alpha, config.min_samples,
                                         checks.Budget(slo.error_budget_ratio, config.burn_factor,
                                                       config.errors_floor))
                shared = out.shared if isinstance(out, checks.CountOutcome) else np.zeros(shape, bool)
        fail |= out.fail
        within &= out.within
        settled &= out.enough & ~out.lean & ~shared
    return Looks(fail, within, settled)


def _tie_term(rows: np.ndarray) -> np.ndarray:
    """Sum of (t^3 - t) over groups of equal values in each row."""
    s = np.sort(rows, axis=1)
    new = np.ones(s.shape, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    run = np.cumsum(new, axis=1) - 1
    width = s.shape[1]
    counts = np.bincount((np.arange(s.shape[0])[:, None] * width + run).ravel(), minlength=s.shape[0] * width)
    counts = counts.reshape(s.shape[0], width).astype(np.float64)
    result: np.ndarray = (counts**3 - counts).sum(axis=1)
    return result


def mann_whitney_z(base: np.ndarray, can: np.ndarray) -> np.ndarray:
    """Per row: the Mann-Whitney z of the canary against the baseline (normal approximation with ties; positive:
    the canary is higher), -inf where undefined."""
    n = base.shape[1]
    both = np.concatenate([base, can], axis=1)
    ranks = rankdata(both, axis=1)
    u = ranks[:, n:].sum(axis=1) - n * (n + 1) / 2.0
    total = 2 * n
    var = n * n / 12.0 * ((total + 1) - _tie_term(both) / (total * (total - 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - n * n / 2.0 - 0.5) / np.sqrt(var)
    result: np.ndarray = np.where(var > 0, z, -np.inf)
    return result


def kayenta_z(base: Arm, can: Arm) -> np.ndarray:
    """(C, MINUTES): the largest Mann-Whitney z over the metrics at each look (-inf at the first minute)."""
    zs = np.full(base.requests.shape, -np.inf)
    for look in range(2, MINUTES + 1):
        for b_metric, c_metric in zip(base.minute_means, can.minute_means, strict=True):
            b = np.nan_to_num(b_metric[:, :look], nan=0.0)
            c = np.nan_to_num(c_metric[:, :look], nan=0.0)
            zs[:, look - 1] = np.maximum(zs[:, look - 1], mann_whitney_z(b, c))
    return zs


def cross_check(spec: ServiceSpec, base: Arm, can: Arm, bounds: tuple[np.ndarray, np.ndarray],
                config: JudgeConfig, looks: Looks, rows: range) -> None:
    """The full judge() on a few canaries at a few looks must decide exactly as the vectorised path does."""
    for c in rows:
        for look in (10, MINUTES):
            t = look - 1
            data: dict[str, SloData] = {
                "ttft": LatencyData(tuple(bounds[0].tolist()), tuple(base.ttft[c, t].tolist()),
                                    tuple(can.ttft[c, t].tolist())),
                "tpot": LatencyData(tuple(bounds[1].tolist()), tuple(base.tpot[c, t].tolist()),
                                    tuple(can.tpot[c, t].tolist())),
                "availability": ErrorData(base.errors[c, t], base.requests[c, t], can.errors[c, t],
                                          can.requests[c, t]),
            }
            verdict = judge.judge(spec, data, config, complete=look == MINUTES, elapsed_seconds=look * 60.0,
                                  window_seconds=MINUTES * 60.0, source="benchmark")
            expected = ("fail" if looks.fail[c, t] else "pass" if looks.within[c, t]
                        or (look == MINUTES and looks.settled[c, t]) else "inconclusive")
            if verdict.verdict != expected:
                raise AssertionError(f"judge() and the vectorised checks disagree at canary {c}, minute {look}: "
                                     f"{verdict.verdict} vs {expected}: {verdict.reason}")


@dataclass(frozen=True)
class Row:
    scenario: Scenario
    rate: float
    forge_fail: float       # share of canaries the judge failed (it stops at its first pass or fail)
    forge_pass: float       # share it passed
    forge_minutes: float    # median minute of the fails
    kayenta_fail: float
    kayenta_at_end: float
    kayenta_minutes: float
    matched_fail: float     # the Kayenta-style judge at forge-slo's false-positive target (z > 3.1)


def outcome(looks: Looks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per canary: failed, passed, and the minute it stopped (the first fail or early pass, else 30)."""
    stop = looks.fail | looks.within
    stop[:, -1] = True
    first = stop.argmax(axis=1)
    rows = np.arange(first.shape[0])
    failed = looks.fail[rows, first]
    passed = ~failed & (looks.within[rows, first] | ((first == MINUTES - 1) & looks.settled[rows, first]))
    return failed, passed, first + 1


def _median_minute(flags: np.ndarray, minutes: np.ndarray) -> float:
    return float(np.median(minutes[flags])) if flags.any() else math.nan


def run_scenario(spec: ServiceSpec, scenario: Scenario, rate: float, canaries: int, chunk: int,
                 rng: np.random.Generator, config: JudgeConfig, bounds: tuple[np.ndarray, np.ndarray],
                 check_judge: bool) -> Row:
    failed, passed, minutes, k_fails = [], [], [], []
    done = 0
    while done < canaries:
        size = min(chunk, canaries - done)
        base = simulate(rng, size, rate, scenario, False, bounds)
        can = simulate(rng, size, rate, scenario, True, bounds)
        looks = forge_looks(spec, base, can, bounds, config)
        if check_judge and done == 0:
            cross_check(spec, base, can, bounds, config, looks, range(1))
        f, p, m = outcome(looks)
        failed.append(f)
        passed.append(p)
        minutes.append(m)
        k_fails.append(kayenta_z(base, can))
        done += size
    f, p, m, z = (np.concatenate(x) for x in (failed, passed, minutes, k_fails))
    k = z > KAYENTA_Z
    k_ever = k.any(axis=1)
    k_first = k.argmax(axis=1) + 1
    matched = float((z > KAYENTA_MATCHED_Z).any(axis=1).mean())
    return Row(scenario, rate, float(f.mean()), float(p.mean()), _median_minute(f, m), float(k_ever.mean()),
               float(k[:, -1].mean()), _median_minute(k_ever, k_first), matched)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--canaries", type=int, default=500, help="canaries per scenario and rate (default 500)")
    parser.add_argument("--quick", action="store_true", help="100 canaries per scenario and rate")
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES), help="requests/s per arm")
    parser.add_argument("--availability", type=float, default=99.9, help="the availability objective (%%)")
    parser.add_argument("--chunk", type=int, default=25, help="canaries simulated at once (memory)")
    parser.add_argument("--seed", type=int, default=20240607)
    args = parser.parse_args(argv)
    canaries = 100 if args.quick else args.canaries
    rates = tuple(float(r) for r in args.rates.split(","))
    rng = np.random.default_rng(args.seed)
    spec = load_spec(args.availability)
    config = JudgeConfig()
    bounds = (grid(TTFT_MEDIAN_S, 5 * TTFT_SIGMA, 40.0, 1.0), grid(TPOT_MEDIAN_S, 5 * TPOT_SIGMA, 0.5, 0.075))
    rows: list[Row] = []
    started = time.perf_counter()
    for scenario in SCENARIOS:
        for rate in rates:
            rows.append(run_scenario(spec, scenario, rate, canaries, args.chunk, rng, config, bounds,
                                     check_judge=rate == rates[0]))
        print(f"  {scenario.name}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    print_table(rows, canaries, args.availability, time.perf_counter() - started)
    return 0 if targets_met(rows) else 1


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def _minutes(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f} min"


def print_table(rows: list[Row], canaries: int, availability: float, seconds: float) -> None:
    print(f"\n{canaries} canaries per scenario and rate, looked at every minute for {MINUTES} minutes; TTFT "
          f"lognormal (median {TTFT_MEDIAN_S * 1000:.0f} ms, sigma {TTFT_SIGMA}), TPOT lognormal (median "
          f"{TPOT_MEDIAN_S * 1000:.0f} ms, sigma {TPOT_SIGMA}), errors {BASE_ERROR:.1%}; SLOs: TTFT 99% under "
          f"1 s, TPOT 99% under 75 ms, availability {availability:g}%; {seconds:.0f} s\n")
    header = ("scenario", "req/s", "forge-slo fails", "passes", "median time to fail", "kayenta fails",
              "at 30m", "median time to fail", "forge / kayenta", f"kayenta z>{KAYENTA_MATCHED_Z:g}")
    table = [header]
    for row in rows:
        what = " (false pos.)" if not row.scenario.regression else ""
        ratio = "-" if row.kayenta_fail == 0 else f"{row.forge_fail / row.kayenta_fail:.2f}x"
        table.append((row.scenario.name if row.rate == rows[0].rate else "", f"{row.rate:g}",
                      _pct(row.forge_fail) + what, _pct(row.forge_pass), _minutes(row.forge_minutes),
                      _pct(row.kayenta_fail), _pct(row.kayenta_at_end), _minutes(row.kayenta_minutes), ratio,
                      _pct(row.matched_fail)))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


Target = tuple[str, Callable[[Row], bool], Callable[[Row], bool]]


def targets_met(rows: list[Row]) -> bool:
    """Issue 16's targets, each printed as met or missed (with the figure)."""
    targets: list[Target] = [
        ("false positives <= 1%", lambda r: not r.scenario.regression, lambda r: r.forge_fail <= 0.01),
        ("clean canaries at 0.5 req/s end pass >= 90%", lambda r: not r.scenario.regression and r.rate == 0.5,
         lambda r: r.forge_pass >= 0.90),
        ("errors 0.1% -> 1% at 1 req/s detected >= 90%", lambda r: r.scenario.name == "errors 0.1% -> 1%"
         and r.rate == 1.0, lambda r: r.forge_fail >= 0.90),
        ("tail mixture doubling the p99 at 1 req/s detected >= 90%", lambda r: r.scenario.tail and r.rate == 1.0,
         lambda r: r.forge_fail >= 0.90),
        ("median TTFT +10% at 1 req/s detected >= 80%", lambda r: r.scenario.name == "median TTFT +10%"
         and r.rate == 1.0, lambda r: r.forge_fail >= 0.80),
        ("power at least the Kayenta-style judge's", lambda r: r.scenario.regression,
         lambda r: r.forge_fail >= r.kayenta_fail),
    ]
    ok = True
    print("\ntargets (forge-slo, default settings):")
    for name, applies, met in targets:
        for row in rows:
            if not applies(row):
                continue
            good = met(row)
            ok &= good
            figure = (f"forge-slo {row.forge_fail:.1%} fails, {row.forge_pass:.1%} passes; kayenta "
                      f"{row.kayenta_fail:.1%} (at z > {KAYENTA_MATCHED_Z:g}: {row.matched_fail:.1%})")
            print(f"  {'met ' if good else 'MISS'}  {name} ({row.scenario.name}, {row.rate:g} req/s): {figure}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
