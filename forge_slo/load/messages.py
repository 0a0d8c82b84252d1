"""What the processes of a load run tell each other: typed values, each with an explicit JSON form.

- the CLI to the engine: one :class:`EnginePlan`, a line on the engine's standard input;
- the controller (Locust's master, or the only process) to the processes that run users:
  :class:`WorkerSetup` (the run's options) and :class:`StageCommand` (run or stop a stage);
- each worker to the controller: a :class:`WorkerReport` every 0.2 s (its counters and finished records).

Plain data, no Locust and no gevent: the tests build and read these as they are.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from forge_slo.errors import RunnerError
from forge_slo.load.judge import SpecInfo
from forge_slo.load.options import MODES, LoadOptions, Mode
from forge_slo.load.wire import Fields

# Locust message types
SETUP = "forge_setup"
STAGE = "forge_stage"
REPORT = "forge_records"


@dataclass(frozen=True)
class EnginePlan:
    """What the engine runs: the options, the spec's criteria, and whether its standard input is a lifeline."""

    options: LoadOptions
    spec: SpecInfo | None = None
    lifeline: bool = False

    def to_line(self) -> bytes:
        data = {"options": self.options.to_dict(), "spec": self.spec.to_dict() if self.spec else None,
                "lifeline": self.lifeline}
        return json.dumps(data, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> EnginePlan:
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise RunnerError(f"malformed engine plan: {exc}") from None
        f = Fields(data, "engine plan")
        spec = f.maybe_child("spec")
        return cls(LoadOptions.from_dict(f.child("options").data),
                   SpecInfo.from_dict(spec.data) if spec is not None else None, f.flag("lifeline"))


@dataclass(frozen=True)
class WorkerSetup:
    """The run's options for a worker, sent until the worker reports itself configured."""

    options: LoadOptions

    def to_dict(self) -> dict[str, Any]:
        return {"options": self.options.to_dict()}

    @classmethod
    def from_dict(cls, data: object) -> WorkerSetup:
        return cls(LoadOptions.from_dict(Fields(data, "worker setup").child("options").data))


@dataclass(frozen=True)
class StageCommand:
    """The controller's word on one stage: run it (``run``) or stop sending (``run`` false)."""

    index: int
    name: str
    mode: Mode
    value: float
    run: bool
    procs: int                   # processes that run users, among which the stage is split
    users: int                   # users of the stage, all processes together
    duration_s: float
    warmup_s: float
    rate_per_user: float | None = None
    max_requests: int | None = None

    def stopped(self) -> StageCommand:
        return dataclasses.replace(self, run=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> StageCommand:
        f = Fields(data, "stage command")
        return cls(index=f.whole("index"), name=f.text("name"),
                   mode="rate" if f.choice("mode", MODES) == "rate" else "concurrency", value=f.number("value"),
                   run=f.flag("run"), procs=f.whole("procs"), users=f.whole("users"),
                   duration_s=f.number("duration_s"), warmup_s=f.number("warmup_s"),
                   rate_per_user=f.maybe_number("rate_per_user"), max_requests=f.maybe_whole("max_requests"))


@dataclass(frozen=True)
class WorkerReport:
    """One process's counters for its current stage (``index`` -1: none yet) and the records it finished."""

    index: int = -1
    run: bool = False
    in_flight: int = 0
    sent: int = 0
    dropped: int = 0
    max_lag_s: float = 0.0
    quota_done: bool = False
    configured: bool = False
    lines: tuple[str, ...] = ()  # finished requests, one record's JSON each

    def without_lines(self) -> WorkerReport:
        return dataclasses.replace(self, lines=()) if self.lines else self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lines"] = list(self.lines)
        return data

    @classmethod
    def from_dict(cls, data: object) -> WorkerReport:
        f = Fields(data, "worker report")
        return cls(index=f.whole("index"), run=f.flag("run"), in_flight=f.whole("in_flight"), sent=f.whole("sent"),
                   dropped=f.whole("dropped"), max_lag_s=f.number("max_lag_s"), quota_done=f.flag("quota_done"),
                   configured=f.flag("configured"), lines=f.texts("lines"))
