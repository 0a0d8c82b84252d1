"""Per-request load-test records: one JSON object per line (``records.jsonl``).

The load generator writes them, the canary judge and reports read them. Times are exact seconds (floats),
never rounded; timestamps are Unix seconds. The metric definitions are the project's (see the README):

- ``ttft_s``: request sent -> first content token received.
- ``tpot_s``: (e2e - TTFT) / (output tokens - 1); None with fewer than 2 output tokens.
- ``itl_s``: every gap between successive tokens; a chunk carrying k tokens contributes its gap once and
  k - 1 zero gaps.
- ``e2e_s``: request sent -> last byte.
- ``output_tokens``: from the server's ``usage`` when given (``tokens_from`` says "usage"), else counted
  from the stream ("stream").
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from forge_slo.errors import SourceError

# Error kinds a record can carry; None means the request succeeded.
ERROR_KINDS = ("http", "stream_cut", "malformed", "timeout", "connection", "other")
RECORD_VERSION = 1


@dataclass(frozen=True)
class RequestRecord:
    start_time: float            # Unix seconds when the request was sent
    model: str
    ok: bool
    status: int | None = None    # HTTP status, None when no response arrived
    error_kind: str | None = None
    error: str = ""
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    itl_s: tuple[float, ...] = ()
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    tokens_from: str = "usage"   # "usage" or "stream"
    finish_reason: str | None = None
    stage: str = ""              # sweep stage or workload name
    warmup: bool = False
    arm: str = ""                # canary arm ("baseline", "canary") or empty
    trace_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["itl_s"] = list(self.itl_s)
        data["v"] = RECORD_VERSION
        return json.dumps(data, separators=(",", ":"), allow_nan=False)


_FIELDS = {f.name: f for f in fields(RequestRecord)}
_REQUIRED = ("start_time", "model", "ok")


def _check(data: Any, where: str) -> RequestRecord:
    if not isinstance(data, dict):
        raise SourceError(f"{where}: a record must be a JSON object")
    data = dict(data)
    data.pop("v", None)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise SourceError(f"{where}: unknown field {unknown[0]!r}")
    for key in _REQUIRED:
        if key not in data:
            raise SourceError(f"{where}: missing field {key!r}")
    if not isinstance(data["ok"], bool):
        raise SourceError(f"{where}: ok: must be true or false")
    if not isinstance(data["model"], str):
        raise SourceError(f"{where}: model: must be a string")
    for key in ("start_time", "ttft_s", "tpot_s", "e2e_s"):
        value = data.get(key)
        if value is None and key != "start_time":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise SourceError(f"{where}: {key}: must be a non-negative number, got {value!r}")
    itl = data.get("itl_s", [])
    if not isinstance(itl, list) or any(isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in itl):
        raise SourceError(f"{where}: itl_s: must be a list of non-negative numbers")
    data["itl_s"] = tuple(float(v) for v in itl)
    kind = data.get("error_kind")
    if kind is not None and kind not in ERROR_KINDS:
        raise SourceError(f"{where}: error_kind: {kind!r} is not one of {', '.join(ERROR_KINDS)}")
    for key in ("prompt_tokens", "output_tokens", "status"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SourceError(f"{where}: {key}: must be a non-negative integer, got {value!r}")
    return RequestRecord(**data)


def read_records(path: str | Path) -> list[RequestRecord]:
    """Every record of a JSONL file; a bad line raises SourceError naming the file and line."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read records: {exc.strerror or exc}") from None
    with handle:
        return list(iter_records(handle, str(path)))


def iter_records(lines: Iterable[str], name: str) -> Iterator[RequestRecord]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{name}:{number}: not JSON: {exc.msg}") from None
        yield _check(data, f"{name}:{number}")


def write_records(records: Iterable[RequestRecord], out: TextIO) -> int:
    count = 0
    for record in records:
        out.write(record.to_json() + "\n")
        count += 1
    return count
