"""Safeguard control: abort an experiment when an SLO's budget burn crosses a stated limit.

Declare it in the experiment (arguments may use ``${configuration}`` values)::

    "controls": [{"name": "budget-guard",
                  "provider": {"type": "python", "module": "forge_slo.chaos.control",
                               "arguments": {"prometheus_url": "${prometheus_url}", "service": "chat",
                                             "slo": "availability", "max_burn_rate": 30,
                                             "max_budget_consumed": 0.02}}}]

While the method runs, the guard checks before and after every activity and, every ``interval_s`` in the
background, the SLO's burn rate (``window``: one of the spec's alert windows; empty: the shortest) and the
share of the period's budget burnt since the method started. Over a limit it interrupts the experiment:
between activities by raising ``InterruptExecution``, during a long activity by Chaos Toolkit's graceful exit
(SIGUSR1). Prometheus unreadable for ``max_read_failures`` checks in a row also aborts (fail closed).

Rollbacks must then run: the experiments here set ``"runtime": {"rollbacks": {"strategy": "always"}}`` and
``forge-slo gameday run`` passes ``--rollback-strategy always``; Chaos Toolkit's default skips rollbacks after an
interruption. The guard writes what it saw into the journal under ``forge_slo_guard``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from forge_slo.errors import ForgeError

logger = logging.getLogger("chaostoolkit")

JOURNAL_KEY = "forge_slo_guard"
MAX_READINGS = 5000  # an hour of readings at the default interval; the journal stays small


@dataclass
class _Guard:
    prometheus_url: str
    service: str
    slo: str
    max_burn_rate: float
    max_budget_consumed: float
    window: str
    interval_s: float
    max_read_failures: int
    method_started: float = 0.0
    phase: str = "before"
    breach: str = ""
    failures: int = 0
    checks: int = 0
    peak_burn_rate: float = 0.0
    peak_budget_consumed: float = 0.0
    readings: list[tuple[float, float | None, float | None]] = field(default_factory=list)  # (t, burn, consumed)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return f"{self.service}/{self.slo}"

    def check(self) -> str:
        """Read the SLO once; the breach reason, or ''."""
        from forge_slo.chaos.slo.probes import budget_consumed_between, burn_rate
        from forge_slo.sources.prometheus import PrometheusClient

        try:
            rate = burn_rate(self.prometheus_url, self.service, self.slo, self.window) if self.max_burn_rate else 0.0
            consumed = 0.0
            if self.max_budget_consumed:
                with PrometheusClient(self.prometheus_url) as client:
                    consumed = budget_consumed_between(client, self.service, self.slo, self.method_started, time.time())
        except ForgeError as exc:
            with self.lock:
                self.failures += 1
                if self.failures >= self.max_read_failures:
                    return f"the guard could not read {self.key} {self.failures} times in a row ({exc}); failing closed"
            return ""
        with self.lock:
            self.checks += 1
            self.failures = 0
            self.peak_burn_rate = max(self.peak_burn_rate, rate)
            self.peak_budget_consumed = max(self.peak_budget_consumed, consumed)
            if len(self.readings) < MAX_READINGS:  # what the report draws: the figures the guard judged
                self.readings.append((time.time(), rate if self.max_burn_rate else None,
                                      consumed if self.max_budget_consumed else None))
        if self.max_burn_rate and rate > self.max_burn_rate:
            return f"{self.key} burns its budget {rate:.1f}x, over the guard's limit of {self.max_burn_rate:g}x"
        if self.max_budget_consumed and consumed > self.max_budget_consumed:
            return (f"{self.key} burnt {consumed:.2%} of its period's error budget during the experiment, over the "
                    f"guard's limit of {self.max_budget_consumed:.2%}")
        return ""

    def record(self, reason: str) -> bool:
        """Keep the first breach; True when this call recorded it during the method."""
        with self.lock:
            if self.breach or self.phase != "method":
                return False
            self.breach = reason
            return True

    def watch(self) -> None:
        while not self.stop.wait(self.interval_s):
            reason = self.check()
            if reason and self.record(reason):
                logger.critical(f"forge-slo budget guard: {reason}; aborting the experiment")
                _chaoslib("exit").exit_gracefully()  # SIGUSR1: Chaos Toolkit stops now and keeps the rollbacks
                return

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {"service": self.service, "slo": self.slo, "aborted": bool(self.breach), "reason": self.breach,
                    "max_burn_rate": self.max_burn_rate, "max_budget_consumed": self.max_budget_consumed,
                    "window": self.window, "peak_burn_rate": round(self.peak_burn_rate, 4),
                    "peak_budget_consumed": round(self.peak_budget_consumed, 6), "checks": self.checks,
                    "readings": [list(r) for r in self.readings]}


_guards: dict[str, _Guard] = {}


def _chaoslib(module: str) -> Any:
    """A chaoslib module (untyped, so Any); only imported when Chaos Toolkit runs the control."""
    return importlib.import_module(f"chaoslib.{module}")


def _guard(prometheus_url: str = "", service: str = "", slo: str = "", max_burn_rate: float = 0,
           max_budget_consumed: float = 0, window: str = "", interval_s: float = 1.0,
           max_read_failures: int = 3, **_: Any) -> _Guard:
    InvalidControl = _chaoslib("exceptions").InvalidControl  # noqa: N806 - an exception class

    if not prometheus_url or not service or not slo:
        raise InvalidControl("forge-slo budget guard: prometheus_url, service and slo are required")
    if float(max_burn_rate) < 0 or float(max_budget_consumed) < 0 or not (max_burn_rate or max_budget_consumed):
        raise InvalidControl("forge-slo budget guard: give max_burn_rate (e.g. 20) and/or max_budget_consumed "
                             "(a share of the period's budget, e.g. 0.02)")
    if not 0.1 <= float(interval_s) <= 60 or int(max_read_failures) < 1:
        raise InvalidControl("forge-slo budget guard: interval_s must be 0.1-60 and max_read_failures at least 1")
    key = f"{service}/{slo}"
    guard = _guards.get(key)
    if guard is None:
        guard = _Guard(str(prometheus_url), str(service), str(slo), float(max_burn_rate), float(max_budget_consumed),
                       str(window), float(interval_s), int(max_read_failures))
        _guards[key] = guard
    return guard


def _interrupt_if_breached(guard: _Guard, when: str) -> None:
    if guard.phase != "method":
        return  # hypotheses and rollbacks always run to the end
    reason = guard.breach or guard.check()
    if reason:
        guard.record(reason)
        raise _chaoslib("exceptions").InterruptExecution(f"forge-slo budget guard ({when}): {reason}")


# Chaos Toolkit control entry points ---------------------------------------------------------------------------

def validate_control(control: Mapping[str, Any]) -> None:
    arguments = dict(control.get("provider", {}).get("arguments", {}))
    # ${...} values are substituted at run time; check the rest now.
    if not any(isinstance(v, str) and "${" in v for v in arguments.values()):
        _guards.pop(f"{arguments.get('service')}/{arguments.get('slo')}", None)
        _guard(**arguments)
        _guards.pop(f"{arguments.get('service')}/{arguments.get('slo')}", None)


def configure_control(**_: Any) -> None:
    _guards.clear()


def before_method_control(context: Any, **arguments: Any) -> None:
    guard = _guard(**arguments)
    guard.method_started = time.time()
    guard.phase = "method"
    guard.stop.clear()
    guard.thread = threading.Thread(target=guard.watch, daemon=True, name=f"budget-guard {guard.key}")
    guard.thread.start()


def before_activity_control(context: Any, **arguments: Any) -> None:
    _interrupt_if_breached(_guard(**arguments), f"before {context.get('name', 'an activity')}")


def after_activity_control(context: Any, state: Any = None, **arguments: Any) -> None:
    _interrupt_if_breached(_guard(**arguments), f"after {context.get('name', 'an activity')}")


def after_method_control(context: Any, state: Any = None, **arguments: Any) -> None:
    guard = _guard(**arguments)
    guard.stop.set()
    with guard.lock:
        guard.phase = "after"


def before_rollback_control(context: Any, **arguments: Any) -> None:
    guard = _guard(**arguments)
    guard.stop.set()
    with guard.lock:
        guard.phase = "rollback"


def after_experiment_control(context: Any, state: Any = None, **arguments: Any) -> None:
    guard = _guard(**arguments)
    guard.stop.set()
    if isinstance(state, dict):
        state.setdefault(JOURNAL_KEY, []).append(guard.summary())


def cleanup_control() -> None:
    for guard in _guards.values():
        guard.stop.set()
