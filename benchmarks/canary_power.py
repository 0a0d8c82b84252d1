"""How often the canary judge fails identical canaries and catches regressions, looked at every minute.

Simulates canaries (default 1,000 per scenario) for 30 minutes, each arm a Poisson stream of requests
with a lognormal TTFT (median 200 ms, sigma 0.5) and independent errors (0.1%), and asks two judges every
minute:

- forge-slo's judge, with its default settings (checks ttft.shift, ttft.p90, ttft.p99 and
  availability.errors of a 99.9% availability SLO; alpha 0.01 across all of them and every look), through the
  same vectorised check functions ``forge_slo.canary.judge`` uses on per-request data (binned on a 0.4% log
  grid here for speed; the CLI bins records at 0.1%). A few canaries are also judged by the full
  ``judge()`` at several looks and must agree.
- the same judge with no tolerance (``--allow shift=0% --allow p90=0% --allow p99=0% --allow errors=0%``),
  to separate what the default tolerances cost from what looking every minute costs;
- a Kayenta-style judge: Mann-Whitney on per-minute means (TTFT, error rate) at 98% confidence, re-run
  every minute on all minutes so far, failing when either metric is significantly worse.

Scenarios: identical arms; canary TTFT x 1.10 (median +10%); canary p99 doubled with the median (and p95)
unchanged (requests above the baseline's p95 stretched, x2 from its p99 up); error rate 0.1% -> 1%; each
at 5 requests/s per arm, and again at 1 request/s per arm (low traffic). Prints the false-positive rate
(identical arms), detection rate, the rate when judged once at 30 minutes, the median time to detect, and
forge-slo / Kayenta ratios.

    python benchmarks/canary_power.py                  # 1,000 canaries per scenario
    python benchmarks/canary_power.py --canaries 200   # quicker
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri  # type: ignore[import-untyped,unused-ignore]
from scipy.stats import rankdata  # type: ignore[import-untyped,unused-ignore]

from forge_slo.canary import checks, judge
from forge_slo.canary.model import ErrorData, JudgeConfig, LatencyData, SloData, frozen
from forge_slo.spec.model import SLO, AlertPolicy, AvailabilitySLI, LatencySLI, ServiceSpec
from forge_slo.spec.presets import VLLM

MINUTES = 30
MEDIAN_S = 0.2
SIGMA = 0.5
BASE_ERROR = 0.001
GRID_RATIO = 1.004
KAYENTA_Z = 2.3263478740408408  # 98% two-sided confidence: one side's 1% quantile


@dataclass(frozen=True)
class Scenario:
    name: str
    rate: float          # requests per second per arm
    change: str          # none | median | p99 | errors
    regression: bool


SCENARIOS = [
    Scenario("identical arms, 5 req/s", 5.0, "none", False),
    Scenario("median TTFT +10%, 5 req/s", 5.0, "median", True),
    Scenario("p99 TTFT x2 (median same), 5 req/s", 5.0, "p99", True),
    Scenario("errors 0.1% -> 1%, 5 req/s", 5.0, "errors", True),
    Scenario("identical arms, 1 req/s", 1.0, "none", False),
    Scenario("median TTFT +10%, 1 req/s", 1.0, "median", True),
    Scenario("p99 TTFT x2 (median same), 1 req/s", 1.0, "p99", True),
    Scenario("errors 0.1% -> 1%, 1 req/s", 1.0, "errors", True),
]


def spec() -> ServiceSpec:
    """The spec both judges judge: TTFT (latency, 99% under 500 ms) and availability (99.9%)."""
    policy = AlertPolicy("page", (), 120.0)
    return ServiceSpec(
        service="bench", preset=VLLM, period_seconds=30 * 86400.0, page=policy, ticket=policy,
        slos=(SLO("ttft", 99.0, LatencySLI("ttft", VLLM.histograms["ttft"], 0.5)),
              SLO("availability", 99.9, AvailabilitySLI(VLLM.availability))),  # type: ignore[arg-type]
    )


def grid() -> np.ndarray:
    low = MEDIAN_S * math.exp(-5 * SIGMA)
    high = MEDIAN_S * math.exp(5 * SIGMA) * 2.5
    steps = int(math.ceil(math.log(high / low) / math.log(GRID_RATIO)))
    return np.concatenate([low * GRID_RATIO ** np.arange(steps + 1), [np.inf]])


@dataclass
class Arm:
    hist: np.ndarray      # (C, MINUTES, K) cumulative bucket counts per look
    requests: np.ndarray  # (C, MINUTES) cumulative
    errors: np.ndarray    # (C, MINUTES) cumulative
    minute_mean: np.ndarray   # (C, MINUTES) per-minute mean TTFT (Kayenta)
    minute_error: np.ndarray  # (C, MINUTES) per-minute error rate (Kayenta)


def simulate(rng: np.random.Generator, canaries: int, scenario: Scenario, canary: bool, bounds: np.ndarray) -> Arm:
    n = rng.poisson(scenario.rate * 60.0, (canaries, MINUTES))
    total = int(n.sum())
    u = rng.random(total)
    ttft = MEDIAN_S * np.exp(SIGMA * ndtri(u))
    if canary and scenario.change == "median":
        ttft = ttft * 1.10
    if canary and scenario.change == "p99":
        # the slowest 5% stretch, x2 from the p99 up: median and p95 unchanged, p99 and above doubled
        ttft = ttft * (1.0 + np.clip((u - 0.95) / 0.04, 0.0, 1.0))
    cell = np.repeat(np.arange(canaries * MINUTES), n.ravel())
    k = bounds.shape[0]
    bucket = np.clip(np.searchsorted(bounds, ttft, side="left"), 0, k - 1)
    per_minute = np.bincount(cell * k + bucket, minlength=canaries * MINUTES * k).reshape(canaries, MINUTES, k)
    sums = np.bincount(cell, weights=ttft, minlength=canaries * MINUTES).reshape(canaries, MINUTES)
    p_err = 0.01 if (canary and scenario.change == "errors") else BASE_ERROR
    errors = rng.binomial(n, p_err)
    with np.errstate(invalid="ignore", divide="ignore"):
        minute_mean = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
        minute_error = np.where(n > 0, errors / np.maximum(n, 1), np.nan)
    return Arm(np.cumsum(per_minute, axis=1, dtype=np.float64), np.cumsum(n, axis=1).astype(np.float64),
               np.cumsum(errors, axis=1).astype(np.float64), minute_mean, minute_error)


def forge_fails(base: Arm, can: Arm, bounds: np.ndarray, config: JudgeConfig) -> np.ndarray:
    """(C, MINUTES) bool: does forge-slo's judge fail the canary at each look (any critical check)?"""
    s = spec()
    planned, _ = judge.plan_checks(s, config)
    alpha = config.alpha / len(planned)
    floor = config.errors_floor * s.slos[1].error_budget_ratio
    fails = np.zeros(base.requests.shape, dtype=bool)
    for check in planned:
        if check.kind == "shift":
            out = checks.shift_check(bounds, base.hist, can.hist, check.policy, alpha, config.design_samples,
                                     config.min_samples)
        elif check.kind in ("p90", "p99"):
            out = checks.quantile_check(bounds, base.hist, can.hist, checks.quantile_of(check.kind), check.policy,
                                        alpha, config.design_samples, config.min_samples)
        else:
            out = checks.errors_check(base.errors, base.requests, can.errors, can.requests, check.policy, alpha,
                                      config.min_samples, floor)
        fails |= out.fail
    return fails


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


def mann_whitney_worse(base: np.ndarray, can: np.ndarray) -> np.ndarray:
    """Per row: is the canary significantly higher (two-sided 98%, normal approximation with ties)?"""
    n = base.shape[1]
    both = np.concatenate([base, can], axis=1)
    ranks = rankdata(both, axis=1)
    u = ranks[:, n:].sum(axis=1) - n * (n + 1) / 2.0
    total = 2 * n
    var = n * n / 12.0 * ((total + 1) - _tie_term(both) / (total * (total - 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - n * n / 2.0 - 0.5) / np.sqrt(var)
    result: np.ndarray = np.where(var > 0, z > KAYENTA_Z, False)
    return result


def kayenta_fails(base: Arm, can: Arm) -> np.ndarray:
    fails = np.zeros(base.requests.shape, dtype=bool)
    for look in range(2, MINUTES + 1):
        for metric in ("minute_mean", "minute_error"):
            b = np.nan_to_num(getattr(base, metric)[:, :look], nan=0.0)
            c = np.nan_to_num(getattr(can, metric)[:, :look], nan=0.0)
            fails[:, look - 1] |= mann_whitney_worse(b, c)
    return fails


def cross_check(base: Arm, can: Arm, bounds: np.ndarray, config: JudgeConfig, fails: np.ndarray,
                rows: range) -> None:
    """The full judge() on a few canaries at a few looks must fail exactly where the vectorised path does."""
    s = spec()
    for c in rows:
        for look in (5, 15, MINUTES):
            t = look - 1
            data: dict[str, SloData] = {
                "ttft": LatencyData(tuple(bounds.tolist()), tuple(base.hist[c, t].tolist()),
                                    tuple(can.hist[c, t].tolist())),
                "availability": ErrorData(base.errors[c, t], base.requests[c, t], can.errors[c, t],
                                          can.requests[c, t]),
            }
            verdict = judge.judge(s, data, config, complete=look == MINUTES, elapsed_seconds=look * 60.0,
                                  window_seconds=MINUTES * 60.0, source="benchmark")
            if (verdict.verdict == "fail") != bool(fails[c, t]):
                raise AssertionError(f"judge() and the vectorised checks disagree at canary {c}, minute {look}: "
                                     f"{verdict.verdict} vs {bool(fails[c, t])}")


@dataclass
class Row:
    scenario: Scenario
    judge: str
    any_look: float
    at_end: float
    median_minutes: float


def summarise(scenario: Scenario, name: str, fails: np.ndarray) -> Row:
    ever = fails.any(axis=1)
    first = np.where(ever, fails.argmax(axis=1) + 1, 0)
    median = float(np.median(first[ever])) if ever.any() else math.nan
    return Row(scenario, name, float(ever.mean()), float(fails[:, -1].mean()), median)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--canaries", type=int, default=1000, help="canaries per scenario (default 1000)")
    parser.add_argument("--chunk", type=int, default=50, help="canaries simulated at once (memory)")
    parser.add_argument("--seed", type=int, default=20240607)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    config = JudgeConfig()
    strict = JudgeConfig(allowed=frozen({"shift": 0.0, "p90": 0.0, "p99": 0.0, "errors": 0.0}))
    bounds = grid()
    rows: list[Row] = []
    started = time.perf_counter()
    for scenario in SCENARIOS:
        forge_all, strict_all, kay_all = [], [], []
        done = 0
        while done < args.canaries:
            size = min(args.chunk, args.canaries - done)
            base = simulate(rng, size, scenario, False, bounds)
            can = simulate(rng, size, scenario, True, bounds)
            forge = forge_fails(base, can, bounds, config)
            if done == 0:
                cross_check(base, can, bounds, config, forge, range(min(3, size)))
            forge_all.append(forge)
            strict_all.append(forge_fails(base, can, bounds, strict))
            kay_all.append(kayenta_fails(base, can))
            done += size
        rows.append(summarise(scenario, "forge-slo", np.concatenate(forge_all)))
        rows.append(summarise(scenario, "forge-slo allow 0%", np.concatenate(strict_all)))
        rows.append(summarise(scenario, "kayenta-style", np.concatenate(kay_all)))
        print(f"  {scenario.name}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    print_table(rows, args.canaries, time.perf_counter() - started)
    return 0 if targets_met(rows) else 1


def print_table(rows: list[Row], canaries: int, seconds: float) -> None:
    print(f"\n{canaries} canaries per scenario, looked at every minute for {MINUTES} minutes; TTFT lognormal "
          f"(median {MEDIAN_S * 1000:.0f} ms, sigma {SIGMA}), errors {BASE_ERROR:.1%}; {seconds:.0f} s\n")
    header = ("scenario", "judge", "fails (any look)", "fails judged once at 30m", "median time to fail",
              "forge / kayenta")
    table = [header]
    by_scenario: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_scenario.setdefault(row.scenario.name, {})[row.judge] = row
    for row in rows:
        other = by_scenario[row.scenario.name]
        ratio = ""
        if row.judge.startswith("forge-slo"):
            k = other["kayenta-style"].any_look
            ratio = f"{row.any_look / k:.2f}x" if k > 0 else ("-" if row.any_look == 0 else "inf")
        what = "false positives" if not row.scenario.regression else "detected"
        table.append((row.scenario.name if row.judge == "forge-slo" else "", row.judge,
                      f"{row.any_look:.1%} {what}", f"{row.at_end:.1%}",
                      "-" if math.isnan(row.median_minutes) else f"{row.median_minutes:.0f} min", ratio))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def targets_met(rows: list[Row]) -> bool:
    ok = True
    print("\ntargets (forge-slo, default settings):")
    for row in rows:
        if row.judge != "forge-slo":
            continue
        if not row.scenario.regression:
            good = row.any_look <= 0.01
            print(f"  {'met ' if good else 'MISS'}  false positives <= 1% ({row.scenario.name}): {row.any_look:.1%}")
        elif row.scenario.rate >= 5.0:
            good = row.any_look >= 0.95
            print(f"  {'met ' if good else 'MISS'}  detection >= 95% within {MINUTES} min ({row.scenario.name}): "
                  f"{row.any_look:.1%}")
        else:
            continue
        ok &= good
    return ok


if __name__ == "__main__":
    sys.exit(main())
