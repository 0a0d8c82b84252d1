"""The training watchdog: reads every rank's ``/metrics`` and says whether a collective hangs or a rank straggles.

- **hung**: no rank finished a step within ``stall_after_s`` (ranks that still answer are stuck in a
  collective, the others are gone). A dead rank shows up this way too: its peers block in the all-reduce.
- **stragglers**: ranks whose recent step time exceeds ``straggler_factor`` x their own baseline (the median
  after warm-up), and ranks whose local work exceeds ``straggler_factor`` x the median of the others' (the rank
  the rest wait for). In a synchronous all-reduce a slow network slows every rank, so all of them straggle;
  a locally slow rank is named by its local work.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from forge_slo.train import names


@dataclass(frozen=True)
class RankStatus:
    """One rank as its ``/metrics`` showed it; ``reachable`` False when it did not answer."""

    rank: int
    url: str
    reachable: bool
    error: str = ""
    steps: float = 0.0
    last_step_age_s: float = math.inf
    in_collective: bool = False
    collective_age_s: float = 0.0
    step_seconds: float = math.nan
    baseline_step_seconds: float = math.nan
    compute_seconds: float = math.nan
    busbw_bytes_per_second: float = math.nan
    baseline_busbw_bytes_per_second: float = math.nan
    baseline_ready: bool = False


@dataclass(frozen=True)
class Verdict:
    ranks: tuple[RankStatus, ...]
    hung: bool
    unreachable: tuple[int, ...]
    stuck: tuple[int, ...]  # reachable but without a finished step within stall_after_s
    stragglers: tuple[int, ...]
    waited_on: int | None  # the rank whose local work the others wait for, when one stands out
    busbw_bytes_per_second: float  # the slowest rank's, NaN when none answered
    busbw_ratio: float  # busbw over its baseline (the lowest over ranks), NaN before the baseline
    reasons: tuple[str, ...] = field(default=())

    @property
    def healthy(self) -> bool:
        return not self.hung and not self.unreachable and not self.stuck and not self.stragglers

    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "healthy"


def metrics_urls(host: str, base_port: int, nproc: int) -> list[str]:
    return [f"http://{host}:{base_port + r}/metrics" for r in range(nproc)]


def scrape(urls: Sequence[str], *, timeout_s: float = 2.0, now: Callable[[], float] = time.time) -> list[RankStatus]:
    """Read every rank; one that does not answer is reported unreachable, never raised."""
    out = []
    with httpx.Client(timeout=timeout_s) as client:
        for rank, url in enumerate(urls):
            try:
                response = client.get(url)
                response.raise_for_status()
                out.append(parse_rank(rank, url, response.text, now()))
            except (httpx.HTTPError, ValueError) as exc:
                out.append(RankStatus(rank, url, False, error=str(exc) or type(exc).__name__))
    return out


def parse_rank(rank: int, url: str, text: str, now: float) -> RankStatus:
    """A rank's status from its exposition text (the worker's series, see :mod:`forge_slo.train.names`)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(names.PREFIX):
                values[sample.name] = float(sample.value)
    if names.LAST_STEP_TIMESTAMP not in values:
        raise ValueError(f"{url} does not export {names.LAST_STEP_TIMESTAMP}: not a forge-slo training rank")
    in_coll = values.get(names.COLLECTIVE_IN_PROGRESS, 0.0) == 1.0
    return RankStatus(
        rank=rank, url=url, reachable=True,
        steps=values.get(names.STEPS + "_total", 0.0),
        last_step_age_s=max(0.0, now - values[names.LAST_STEP_TIMESTAMP]),
        in_collective=in_coll,
        collective_age_s=max(0.0, now - values.get(names.COLLECTIVE_STARTED_TIMESTAMP, now)) if in_coll else 0.0,
        step_seconds=values.get(names.STEP_SECONDS, math.nan),
        baseline_step_seconds=values.get(names.BASELINE_STEP_SECONDS, math.nan),
        compute_seconds=values.get(names.COMPUTE_SECONDS, math.nan),
        busbw_bytes_per_second=values.get(names.BUSBW, math.nan),
        baseline_busbw_bytes_per_second=values.get(names.BASELINE_BUSBW, math.nan),
        baseline_ready=values.get(names.BASELINE_READY, 0.0) == 1.0,
    )


def judge(ranks: Sequence[RankStatus], *, stall_after_s: float = 10.0, straggler_factor: float = 2.0) -> Verdict:
    """Hang and straggler verdicts from one reading of every rank."""
    reasons: list[str] = []
    unreachable = tuple(r.rank for r in ranks if not r.reachable)
    live = [r for r in ranks if r.reachable]
    stuck = tuple(r.rank for r in live if r.last_step_age_s > stall_after_s)
    hung = bool(ranks) and not any(r.last_step_age_s <= stall_after_s for r in live)
    if unreachable:
        reasons.append(f"ranks {_list(unreachable)} do not answer")
    if hung:
        ages = ", ".join(f"rank {r.rank} {r.last_step_age_s:.1f}s" + (" in a collective" if r.in_collective else "")
                         for r in live)
        reasons.append(f"no rank finished a step within {stall_after_s:g}s" + (f" ({ages})" if ages else ""))
    elif stuck:
        reasons.append(f"ranks {_list(stuck)} finished no step within {stall_after_s:g}s")
    stragglers = set()
    for r in live:
        if r.baseline_ready and r.step_seconds > straggler_factor * r.baseline_step_seconds:
            stragglers.add(r.rank)
    waited_on = None
    computes = [(r.rank, r.compute_seconds) for r in live if not math.isnan(r.compute_seconds)]
    if len(computes) >= 2:
        for rank, value in computes:
            others = statistics.median(v for k, v in computes if k != rank)
            if value > straggler_factor * max(others, 1e-4):
                waited_on = rank
                stragglers.add(rank)
    if stragglers and not hung:
        slow = ", ".join(f"rank {r.rank} {r.step_seconds * 1000:.1f} ms (baseline {r.baseline_step_seconds * 1000:.1f})"
                         for r in live if r.rank in stragglers)
        reasons.append(f"stragglers: {slow}" + (f"; the others wait for rank {waited_on}" if waited_on is not None
                                                 else ""))
    busbw = [r.busbw_bytes_per_second for r in live if not math.isnan(r.busbw_bytes_per_second)]
    ratios = [r.busbw_bytes_per_second / r.baseline_busbw_bytes_per_second for r in live
              if r.baseline_ready and r.baseline_busbw_bytes_per_second > 0]
    return Verdict(tuple(ranks), hung, unreachable, stuck, tuple(sorted(stragglers)) if not hung else (),
                   waited_on if not hung else None, min(busbw) if busbw else math.nan,
                   min(ratios) if ratios else math.nan, tuple(reasons))


def watch(urls: Sequence[str], *, stall_after_s: float = 10.0, straggler_factor: float = 2.0,
          timeout_s: float = 2.0) -> Verdict:
    return judge(scrape(urls, timeout_s=timeout_s), stall_after_s=stall_after_s, straggler_factor=straggler_factor)


def _list(ranks: Sequence[int]) -> str:
    return ", ".join(str(r) for r in ranks)
