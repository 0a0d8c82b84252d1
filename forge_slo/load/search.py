"""Which stage runs next: a fixed list (``--rate``, ``--concurrency``, ``--sweep``) or a capacity search
(``--find-max``), told the verdict of every stage as it ends.

The search grows the load from ``--start`` by ``--growth`` while stages hold, then bisects between the highest
load that held and the lowest that did not, until they are less than ``--resolution`` apart (relative to the
one that held). A stage holds when every SLO met its objective; each verdict comes with how sure it is
(:func:`forge_slo.load.judge.stage_verdict`), which the controller firms up by sending longer while that can
reach ``--confidence``, and which the answer states. When the first stage already fails, the search shrinks by
the same factor until one holds. Pure logic, no Locust: the tests drive it with verdicts of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from forge_slo.load.options import LoadOptions, SearchOptions, Stage

HELD, MISSED, NO_SPEC = "held", "missed", "no_spec"


@dataclass(frozen=True)
class StageResult:
    """How a stage ended, as the plan needs it: the point-estimate SLOs it missed, and the confident verdict."""

    stage: Stage
    missed: tuple[str, ...] = ()     # SLOs whose attainment was below the objective (the sweep's rule)
    verdict: str = NO_SPEC           # held or missed (no_spec: no SLOs)
    confidence: float = 0.0          # how sure the verdict is


class StagePlan(Protocol):
    """What the controller asks between stages."""

    stopped_early: str | None

    def next_stage(self) -> Stage | None: ...

    def record(self, result: StageResult) -> None: ...

    def planned(self) -> tuple[Stage, ...] | None:
        """Every stage, when known in advance (None: decided as the run goes)."""
        ...


class FixedPlan:
    """The stages of ``--rate``, ``--concurrency`` or ``--sweep``, in order; a sweep stops after the first stage
    that missed an SLO, unless told not to."""

    def __init__(self, stages: tuple[Stage, ...], stop_on_fail: bool) -> None:
        self.stages = stages
        self.stop_on_fail = stop_on_fail
        self.index = 0
        self.stopped_early: str | None = None

    def planned(self) -> tuple[Stage, ...] | None:
        return self.stages

    def next_stage(self) -> Stage | None:
        if self.stopped_early is not None or self.index >= len(self.stages):
            return None
        stage = self.stages[self.index]
        self.index += 1
        return stage

    def record(self, result: StageResult) -> None:
        if result.missed and self.stop_on_fail and self.index < len(self.stages):
            self.stopped_early = f"stage {result.stage.name} missed {', '.join(result.missed)}"


class CapacitySearch:
    """Grow, then bisect, for the highest load at which every SLO holds (see the module's docstring)."""

    def __init__(self, search: SearchOptions) -> None:
        self.s = search
        self.held: float | None = None      # highest load that held
        self.failed: float | None = None    # lowest load that did not
        self.tried: list[StageResult] = []
        self.pending: float | None = self._value(search.start)
        self.stopped_early: str | None = None
        self.reason = ""                    # why the search ended

    def planned(self) -> tuple[Stage, ...] | None:
        return None

    def _value(self, raw: float) -> float:
        if self.s.mode == "concurrency":
            return float(max(1, round(raw)))
        return float(f"{raw:.3g}")  # readable stage names: rate=11.9, not rate=11.875

    def next_stage(self) -> Stage | None:
        if self.pending is None or len(self.tried) >= self.s.max_stages:
            if self.pending is not None and not self.reason:
                self.reason = f"stopped after --max-stages {self.s.max_stages}"
            return None
        return Stage(self.s.mode, self.pending)

    def record(self, result: StageResult) -> None:
        self.tried.append(result)
        value = result.stage.value
        if result.verdict == HELD:
            self.held = value if self.held is None else max(self.held, value)
        else:
            self.failed = value if self.failed is None else min(self.failed, value)
        self.pending = self._next_value()

    def _next_value(self) -> float | None:
        s = self.s
        held, failed = self.held, self.failed
        if failed is None:  # growing
            assert held is not None
            if held >= s.max_load:
                self.reason = f"every load up to --max-load {s.max_load:g} held"
                return None
            return self._fresh(min(s.max_load, held * s.growth))
        if held is None:  # shrinking: even the first stage failed
            lower = self._value(failed / s.growth)
            if lower >= failed or (s.mode == "concurrency" and failed <= 1) or failed / s.growth < s.start / 1000:
                self.reason = "no load tried held"
                return None
            return self._fresh(lower)
        if failed <= held:  # a noisy server: a lower load failed after a higher one held; the bracket is closed
            self.reason = f"a load below one that held did not ({failed:g} < {held:g})"
            return None
        if (failed - held) <= s.resolution * held or (s.mode == "concurrency" and failed - held <= 1):
            self.reason = f"held at {held:g}, not at {failed:g}: within --resolution {s.resolution:g}"
            return None
        middle = self._value((held + failed) / 2)
        if middle <= held or middle >= failed:
            self.reason = f"held at {held:g}, not at {failed:g}: no load between them to try"
            return None
        return self._fresh(middle)

    def _fresh(self, value: float) -> float | None:
        value = self._value(value)
        if any(r.stage.value == value for r in self.tried):
            self.reason = f"{Stage(self.s.mode, value).name} was tried already"
            return None
        return value


def plan_for(options: LoadOptions) -> FixedPlan | CapacitySearch:
    if options.search is not None:
        return CapacitySearch(options.search)
    return FixedPlan(options.stages, options.stop_on_fail)
