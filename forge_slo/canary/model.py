"""Typed values of the canary judge: its configuration, the data of each arm, and the verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def frozen(items: Mapping[str, T] | None = None) -> Mapping[str, T]:
    """A read-only mapping with sorted keys."""
    return MappingProxyType(dict(sorted((items or {}).items())))

Direction = Literal["increase", "decrease", "both"]
DIRECTIONS: tuple[Direction, ...] = ("increase", "decrease", "both")
CheckKind = Literal["shift", "tail", "errors"]
CHECK_KINDS: tuple[CheckKind, ...] = ("shift", "tail", "errors")
Status = Literal["fail", "pass", "undecided", "doubt", "insufficient", "invalid"]
Cause = Literal["", "budget", "baseline", "shared"]
VerdictName = Literal["pass", "fail", "inconclusive"]
Decision = Literal["promote", "continue", "rollback", "hold"]

# Exit codes of `forge-slo canary`.
EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_INCONCLUSIVE = 0, 1, 2, 3

# The smallest relative change worth failing a canary for (its estimate must be beyond it, besides being worse
# with confidence): 2% on the typical request, 25% on a rate of bad events.
DEFAULT_ALLOWED: Mapping[str, float] = frozen({"shift": 0.02, "tail": 0.25, "errors": 0.25})


@dataclass(frozen=True)
class Policy:
    """How one check judges: the allowed relative change (the smallest worth failing for), whether failing it
    fails the canary, which way is worse (``increase``: a higher value is worse; ``both``: any change)."""

    allowed: float
    critical: bool = True
    direction: Direction = "increase"


@dataclass(frozen=True)
class JudgeConfig:
    """Settings of the judge. Keys of ``allowed``, ``advisory`` and ``directions`` are a check kind (``tail``),
    an SLO name (``ttft``) or both (``ttft.tail``); the most specific wins. ``burn_factor``: the burn rate of
    the error budget (bad-event ratio / (1 - objective)) beyond which a canary fails; ``errors_floor``: the
    share of the budget below which a canary worse than its baseline on bad events is not failed."""

    alpha: float = 0.01
    min_samples: int = 100
    design_samples: float = 1000.0
    min_score: float = 75.0
    errors_floor: float = 0.1
    burn_factor: float = 1.0
    allowed: Mapping[str, float] = field(default_factory=frozen)
    advisory: frozenset[str] = frozenset()
    directions: Mapping[str, Direction] = field(default_factory=frozen)

    def policy(self, slo: str, kind: str) -> Policy:
        keys = (f"{slo}.{kind}", slo, kind)
        allowed = next((self.allowed[k] for k in keys if k in self.allowed), DEFAULT_ALLOWED[kind])
        direction: Direction = next((self.directions[k] for k in keys if k in self.directions), "increase")
        critical = not any(k in self.advisory for k in keys)
        return Policy(allowed=allowed, critical=critical, direction=direction)


# ---------------------------------------------------------------------------------------------------- data

@dataclass(frozen=True)
class LatencyData:
    """Both arms' observations of one latency as bucket counts over shared bounds (seconds, last +Inf)."""

    bounds: tuple[float, ...]
    baseline: tuple[float, ...]
    canary: tuple[float, ...]
    note: str = ""


@dataclass(frozen=True)
class ErrorData:
    """Failed and all requests of each arm."""

    baseline_errors: float
    baseline_total: float
    canary_errors: float
    canary_total: float
    note: str = ""


@dataclass(frozen=True)
class MissingData:
    """The source has nothing for this SLO (and says why)."""

    reason: str


@dataclass(frozen=True)
class InvalidData:
    """The source gave something that is not a usable count (NaN, infinite, negative); ``reason`` names the
    query or field, the series and the arm. The check is not judged and the canary cannot pass (fail closed)."""

    reason: str


SloData = LatencyData | ErrorData | MissingData | InvalidData


# ------------------------------------------------------------------------------------------------- results

@dataclass(frozen=True)
class PlannedCheck:
    """A check the spec implies: ``ttft.tail`` counts the requests of SLO ``ttft`` over its threshold."""

    slo: str
    kind: CheckKind
    policy: Policy

    @property
    def name(self) -> str:
        return f"{self.slo}.{self.kind}"


@dataclass(frozen=True)
class SkippedCheck:
    name: str
    reason: str


@dataclass(frozen=True)
class BudgetView:
    """A count check in error-budget terms (SRE workbook: burn rate = bad-event ratio / (1 - objective)).

    ``what`` names the bad events ("failed requests", "requests over 500 ms"); burn rates are ``None`` where
    undefined (no requests), ``canary_burn_lower``/``upper`` the ends of the canary's confidence sequence.
    """

    objective_percent: float
    burn_factor: float
    what: str
    baseline_bad: float
    baseline_total: float
    canary_bad: float
    canary_total: float
    baseline_burn: float | None
    canary_burn: float | None
    canary_burn_lower: float | None
    canary_burn_upper: float | None
    threshold_seconds: float | None = None

    @property
    def allowed_ratio(self) -> float:
        """The bad-event ratio the objective allows (the error budget)."""
        return round(1.0 - self.objective_percent / 100.0, 12)

    def to_json(self) -> dict[str, Any]:
        return {
            "objective_percent": self.objective_percent, "budget_ratio": _num(self.allowed_ratio),
            "burn_factor": _num(self.burn_factor), "bad_events": self.what,
            "threshold_seconds": _num(self.threshold_seconds),
            "baseline": {"bad": _num(self.baseline_bad), "requests": _num(self.baseline_total),
                         "burn_rate": _num(self.baseline_burn)},
            "canary": {"bad": _num(self.canary_bad), "requests": _num(self.canary_total),
                       "burn_rate": _num(self.canary_burn),
                       "burn_rate_interval": [_num(self.canary_burn_lower), _num(self.canary_burn_upper)]},
        }


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome. ``estimate``, ``lower``, ``upper`` and ``allowed`` are relative changes of the
    canary against the baseline (0.1 = 10% higher); ``None`` where unbounded or undefined. ``budget``: a
    count check's view in error-budget terms; ``cause``: why it failed (``budget``: the canary burns the
    error budget too fast; ``baseline``: worse than the baseline beyond the allowed change) or ``shared``
    (both arms burn the budget: an incident that is not the canary's)."""

    name: str
    slo: str
    kind: CheckKind
    status: Status
    critical: bool
    direction: Direction
    allowed: float
    estimate: float | None
    lower: float | None
    upper: float | None
    baseline_samples: float
    canary_samples: float
    baseline_value: float | None
    canary_value: float | None
    unit: str
    method: str
    explanation: str
    budget: BudgetView | None = None
    cause: Cause = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget.to_json() if self.budget is not None else None, "cause": self.cause or None,
            "name": self.name, "slo": self.slo, "check": self.kind, "status": self.status,
            "critical": self.critical, "direction": self.direction, "allowed": _num(self.allowed),
            "estimate": _num(self.estimate), "interval": [_num(self.lower), _num(self.upper)],
            "baseline": {"samples": _num(self.baseline_samples), "value": _num(self.baseline_value)},
            "canary": {"samples": _num(self.canary_samples), "value": _num(self.canary_value)},
            "unit": self.unit, "method": self.method, "explanation": self.explanation,
        }


@dataclass(frozen=True)
class CanaryVerdict:
    """The judge's answer: a verdict, what to do with the rollout, a score and every check explained."""

    service: str
    verdict: VerdictName
    decision: Decision
    score: float | None
    reason: str
    complete: bool
    alpha: float
    alpha_per_check: float
    elapsed_seconds: float
    window_seconds: float
    source: str
    checks: tuple[CheckResult, ...] = ()
    skipped: tuple[SkippedCheck, ...] = ()
    stage: str | None = None

    @property
    def exit_code(self) -> int:
        return {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(self.verdict, EXIT_INCONCLUSIVE)

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service, "verdict": self.verdict, "decision": self.decision,
            "score": _num(self.score), "reason": self.reason, "complete": self.complete,
            "alpha": self.alpha, "alpha_per_check": _num(self.alpha_per_check),
            "elapsed_seconds": _num(self.elapsed_seconds), "window_seconds": _num(self.window_seconds),
            "source": self.source, "stage": self.stage,
            "metrics": [c.to_json() for c in self.checks],
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
        }


def _num(value: float | None) -> float | None:
    """JSON has no infinity or NaN: unbounded or undefined numbers become null."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 9)
