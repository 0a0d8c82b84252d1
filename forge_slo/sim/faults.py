"""Active faults: add, list, delete, expire, and the :class:`Modifiers` they give each model."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from forge_slo.sim.config import (
    MAX_DELAY_S,
    MAX_MULTIPLIER,
    ErrorsFault,
    Fault,
    LatencyFault,
    OutageFault,
    StallFault,
    fault_to_json,
)
from forge_slo.sim.engine import NO_FAULTS, Modifiers


class FaultTarget(Protocol):
    """What a fault acts on: one model's engine (a fake in tests can be any object with these)."""

    mods: Modifiers

    def cut_all(self, reason: Any) -> None: ...


@dataclass
class ActiveFault:
    fault: Fault
    started_at: float
    expires_at: float | None
    handle: asyncio.TimerHandle | None


class FaultExists(ValueError):
    pass


class FaultManager:
    """Faults in force on a set of models; ids are the given ``id`` or ``<kind>-<n>`` in creation order."""

    def __init__(
        self,
        targets: Mapping[str, FaultTarget],
        clock: Callable[[], float],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._targets = targets
        self._clock = clock
        self._loop = loop
        self._active: dict[str, ActiveFault] = {}
        self._next = 1

    def add(self, fault: Fault) -> str:
        fault_id = fault.id
        if fault_id is None:
            fault_id = f"{fault.kind}-{self._next}"
            while fault_id in self._active:
                self._next += 1
                fault_id = f"{fault.kind}-{self._next}"
            fault = dataclasses.replace(fault, id=fault_id)
        elif fault_id in self._active:
            raise FaultExists(f"a fault with id {fault_id!r} is already active")
        self._next += 1
        now = self._clock()
        expires = now + fault.duration_s if fault.duration_s is not None else None
        handle = None
        if expires is not None and self._loop is not None:
            handle = self._loop.call_at(expires, self._expire, fault_id)
        self._active[fault_id] = ActiveFault(fault, now, expires, handle)
        self._apply(new_outage=isinstance(fault, OutageFault), model=fault.model)
        return fault_id

    def delete(self, fault_id: str) -> bool:
        active = self._active.pop(fault_id, None)
        if active is None:
            return False
        if active.handle is not None:
            active.handle.cancel()
        self._apply()
        return True

    def clear(self) -> int:
        ids = list(self._active)
        for fault_id in ids:
            self.delete(fault_id)
        return len(ids)

    def _expire(self, fault_id: str) -> None:
        if self._active.pop(fault_id, None) is not None:
            self._apply()

    def listing(self) -> list[dict[str, Any]]:
        """The active faults as the admin API shows them, oldest first."""
        now = self._clock()
        out = []
        for fault_id, a in self._active.items():
            item = fault_to_json(a.fault)
            item["id"] = fault_id
            item["active_s"] = round(now - a.started_at, 3)
            item["remaining_s"] = None if a.expires_at is None else round(max(0.0, a.expires_at - now), 3)
            out.append(item)
        return out

    def describe(self, fault_id: str) -> dict[str, Any] | None:
        for item in self.listing():
            if item["id"] == fault_id:
                return item
        return None

    def outage_everywhere(self) -> bool:
        return bool(self._targets) and all(t.mods.outage for t in self._targets.values())

    def _apply(self, *, new_outage: bool = False, model: str | None = None) -> None:
        """Recompute every model's modifiers; a new outage also cuts the streams it now covers."""
        for name, target in self._targets.items():
            target.mods = combine(a.fault for a in self._active.values() if a.fault.model in (None, name))
            if new_outage and model in (None, name):
                target.cut_all("outage")


def combine(faults: Any) -> Modifiers:
    """Multipliers multiply, additions add; error and stall faults are kept in order.

    Stacked latency faults slow a model at most as much as one fault may (:data:`MAX_MULTIPLIER`,
    :data:`MAX_DELAY_S`): an unbounded product overflows to inf after a hundred 1000x faults, and inf x 0 is
    NaN, a delay that stalls the token clock every model shares.
    """
    mods = NO_FAULTS
    ttft_m, ttft_a, itl_m, itl_a = 1.0, 0.0, 1.0, 0.0
    outage = False
    errors: list[ErrorsFault] = []
    stalls: list[StallFault] = []
    any_fault = False
    for f in faults:
        any_fault = True
        if isinstance(f, LatencyFault):
            ttft_m = min(ttft_m * f.ttft_multiplier, MAX_MULTIPLIER)
            ttft_a = min(ttft_a + f.ttft_add_s, MAX_DELAY_S)
            itl_m = min(itl_m * f.itl_multiplier, MAX_MULTIPLIER)
            itl_a = min(itl_a + f.itl_add_s, MAX_DELAY_S)
        elif isinstance(f, ErrorsFault):
            errors.append(f)
        elif isinstance(f, StallFault):
            stalls.append(f)
        else:
            outage = True
    if any_fault:
        mods = Modifiers(ttft_m, ttft_a, itl_m, itl_a, outage, tuple(errors), tuple(stalls))
    return mods
