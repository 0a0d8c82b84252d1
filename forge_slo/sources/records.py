"""Per-request load-test records: one JSON object per line (``records.jsonl``).

The load generator writes them, the canary judge and reports read them. Times are exact seconds (floats),
never rounded; timestamps are Unix seconds. The metric definitions are the project's (see the README):

- ``ttft_s``: request sent -> the first chunk that brings a generated token (text, a tool call, or a
  special token that prints as nothing; never the opening role-only chunk).
- ``tpot_s``: (last token chunk - first token chunk) / (output tokens - 1); None with fewer than 2 output
  tokens. One value per request, the servers' ``request_time_per_output_token``.
- ``itl_s``: inter-token latency per token, as SGLang's histogram counts it: a chunk that brings k tokens after
  a gap g adds k values g / k; the first chunk's tokens add none (TTFT covers them). When the server's
  ``usage`` counts more tokens than chunks, they are spread as evenly as whole numbers allow over the chunks.
  Its values sum to last token chunk - first token chunk, and there are never more than ``output_tokens``.
- ``e2e_s``: request sent -> the last token chunk (a failed request: -> its failure).
- ``output_tokens``: from the server's ``usage`` when given (``tokens_from`` says "usage"), else the number of
  token chunks ("stream").

Reading is strict and bounded: every line is UTF-8 JSON of at most ``MAX_LINE_BYTES`` holding only finite
numbers; times are plausible Unix seconds, durations lie in [0, a day], counts are whole and bounded, and one
file spans at most ``MAX_SPAN_S``. Anything else raises SourceError naming the file and line, so no later
loop over the records' time span or values can be driven to an absurd size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, TextIO

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

# Bounds of a plausible record, so that nothing downstream (looks replayed over the records' span,
# per-second bins of a report, log grids of latencies) is driven to absurd sizes by one wrong number.
MAX_LINE_BYTES = 4 * 1024 * 1024     # a record with a long itl_s list is tens of KiB
EARLIEST_START = 946_684_800.0       # 2000-01-01T00:00:00Z
LATEST_START = 4_102_444_800.0       # 2100-01-01T00:00:00Z
MAX_DURATION_S = 86_400.0            # no request of an LLM server lasts a day
MAX_SPAN_S = 31 * 86_400.0           # one load test or canary analysis
MAX_TOKENS = 1_000_000_000
MAX_INT_DIGITS = 18                  # fits an int64; longer integers are not counts
_DURATIONS = ("ttft_s", "tpot_s", "e2e_s")
_COUNTS = ("prompt_tokens", "output_tokens")
_STRINGS = ("model", "error", "stage", "arm", "trace_id", "tokens_from")
_OPTIONAL_STRINGS = ("error_kind", "finish_reason")
_TOKENS_FROM = ("usage", "stream")


# HTTP statuses a server answers when it sheds load (too many requests, queue full / unavailable).
SHED_STATUSES = frozenset({429, 503})
# 4xx statuses that report the server's own failure, not the client's: TGI answers a failed generation with
# 424 Failed Dependency (router/src/server.rs, InferError::GenerationError).
SERVER_FAILURE_4XX = frozenset({424})


def outcome_of(record: RequestRecord) -> str:
    """The outcome a server counts this request under, as the presets define them (``served``,
    ``server_error``, ``shed``, ``client_error``): availability judged from records and from a server's
    counters sorts requests the same way. A timeout, a cut stream or a malformed answer is the server's."""
    if record.ok:
        return "served"
    if record.status in SHED_STATUSES:
        return "shed"
    if record.status is not None and 400 <= record.status < 500 and record.status not in SERVER_FAILURE_4XX:
        return "client_error"
    return "server_error"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_duration(value: Any, key: str, where: str) -> float:
    if not _is_number(value) or not 0 <= value <= MAX_DURATION_S:
        raise SourceError(f"{where}: {key}: must be a number of seconds from 0 to {MAX_DURATION_S:g}, "
                          f"got {_show(value)}")
    return float(value)


def _check_types(data: dict[str, Any], where: str) -> None:
    if not isinstance(data["ok"], bool):
        raise SourceError(f"{where}: ok: must be true or false")
    if not isinstance(data.get("warmup", False), bool):
        raise SourceError(f"{where}: warmup: must be true or false")
    for key in _STRINGS:
        if key in data and not isinstance(data[key], str):
            raise SourceError(f"{where}: {key}: must be a string, got {_show(data[key])}")
    for key in _OPTIONAL_STRINGS:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise SourceError(f"{where}: {key}: must be a string or null, got {_show(data[key])}")
    if not isinstance(data.get("extra", {}), dict):
        raise SourceError(f"{where}: extra: must be a JSON object")
    if data.get("tokens_from", "usage") not in _TOKENS_FROM:
        raise SourceError(f"{where}: tokens_from: must be one of {', '.join(_TOKENS_FROM)}")
    kind = data.get("error_kind")
    if kind is not None and kind not in ERROR_KINDS:
        raise SourceError(f"{where}: error_kind: {kind!r} is not one of {', '.join(ERROR_KINDS)}")


def _check_numbers(data: dict[str, Any], where: str) -> None:
    start = data["start_time"]
    if not _is_number(start) or not EARLIEST_START <= start <= LATEST_START:
        hint = " (milliseconds? it must be seconds)" if _is_number(start) and start > LATEST_START else ""
        raise SourceError(f"{where}: start_time: must be Unix seconds between 2000 and 2100, got "
                          f"{_show(start)}{hint}")
    data["start_time"] = float(start)
    for key in _DURATIONS:
        if data.get(key) is not None:
            data[key] = _check_duration(data[key], key, where)
    itl = data.get("itl_s", [])
    if not isinstance(itl, list):
        raise SourceError(f"{where}: itl_s: must be a list of seconds")
    data["itl_s"] = tuple(_check_duration(v, f"itl_s[{i}]", where) for i, v in enumerate(itl))
    for key in _COUNTS:
        value = data.get(key)
        if value is not None and not _is_whole(value, 0, MAX_TOKENS):
            raise SourceError(f"{where}: {key}: must be a whole number from 0 to {MAX_TOKENS}, got {_show(value)}")
    status = data.get("status")
    if status is not None and not _is_whole(status, 100, 999):
        raise SourceError(f"{where}: status: must be an HTTP status (100-999) or null, got {_show(status)}")


def _check(data: Any, where: str) -> RequestRecord:
    if not isinstance(data, dict):
        raise SourceError(f"{where}: a record must be a JSON object")
    data = dict(data)
    version = data.pop("v", RECORD_VERSION)
    if version != RECORD_VERSION or isinstance(version, bool):
        raise SourceError(f"{where}: v: record version {_show(version)} is not supported (this reads {RECORD_VERSION})")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise SourceError(f"{where}: unknown field {_show(unknown[0])}")
    for key in _REQUIRED:
        if key not in data:
            raise SourceError(f"{where}: missing field {key!r}")
    _check_types(data, where)
    _check_numbers(data, where)
    _check_text(data, where)
    return RequestRecord(**data)


def _check_text(data: dict[str, Any], where: str) -> None:
    """Every string, nested ones included, must be writable as UTF-8 (JSON can escape a lone surrogate)."""
    for key, value in data.items():
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise SourceError(f"{where}: {key}: a string holds a lone UTF-16 surrogate ({_show(item)})"
                                      ) from None


def _show(value: Any) -> str:
    """A value for an error message, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _BadNumber(ValueError):
    pass


def _parse_constant(name: str) -> Any:
    raise _BadNumber(f"{name} is not a number JSON allows")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"{text[:40]} is out of range")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _BadNumber(f"an integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def _parse(line: str, where: str) -> Any:
    if "\x00" in line:
        raise SourceError(f"{where}: holds a NUL byte (a damaged or pre-allocated file?)")
    try:
        return json.loads(line, parse_constant=_parse_constant, parse_float=_parse_float, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
    except _BadNumber as exc:
        raise SourceError(f"{where}: {exc}") from None
    except RecursionError:
        raise SourceError(f"{where}: not a record: JSON nested too deeply") from None
    except ValueError as exc:
        raise SourceError(f"{where}: not JSON: {exc}") from None


def read_records(path: str | Path) -> list[RequestRecord]:
    """Every record of a JSONL file; a bad line raises SourceError naming the file and line."""
    return list(iter_records_file(path))


def iter_records_file(path: str | Path) -> Iterator[RequestRecord]:
    """The records of a JSONL file one at a time, checked as :func:`read_records` checks them, for readers
    that keep only some of them."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read records: {exc.strerror or exc}") from None
    with handle:
        try:
            yield from iter_records(_bounded_lines(handle, str(path)), str(path))
        except OSError as exc:
            raise SourceError(f"{path}: cannot read records: {exc.strerror or exc}") from None


def _bounded_lines(handle: BinaryIO, name: str) -> Iterator[bytes]:
    """The lines of a binary file, refusing one longer than MAX_LINE_BYTES before reading all of it."""
    number = 0
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise SourceError(f"{name}:{number}: the line is longer than {MAX_LINE_BYTES} bytes; "
                              "not a records file?")
        yield line


def _text(line: str | bytes, where: str) -> str:
    if isinstance(line, str):
        if len(line) > MAX_LINE_BYTES:
            raise SourceError(f"{where}: the line is longer than {MAX_LINE_BYTES} characters")
        return line
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{where}: not UTF-8 text (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
                          ) from None


@dataclass
class _Span:
    """The earliest and latest start_time seen so far, with their lines."""

    earliest: tuple[float, int] = (math.inf, 0)
    latest: tuple[float, int] = (-math.inf, 0)

    def add(self, start: float, number: int, where: str) -> None:
        if start < self.earliest[0]:
            self.earliest = (start, number)
        if start > self.latest[0]:
            self.latest = (start, number)
        if self.latest[0] - self.earliest[0] > MAX_SPAN_S:
            days = (self.latest[0] - self.earliest[0]) / 86_400.0
            other = self.earliest[1] if number == self.latest[1] else self.latest[1]
            raise SourceError(f"{where}: start_time is {days:.0f} days away from the record at line {other}; "
                              f"one records file spans at most {MAX_SPAN_S / 86_400.0:.0f} days "
                              "(is a timestamp wrong?)")


def iter_records(lines: Iterable[str | bytes], name: str) -> Iterator[RequestRecord]:
    """The records of JSONL lines (text or UTF-8 bytes); a bad line raises SourceError naming ``name`` and it."""
    span = _Span()
    for number, raw in enumerate(lines, 1):
        where = f"{name}:{number}"
        line = _text(raw, where)
        if not line.strip():
            continue
        record = _check(_parse(line, where), where)
        span.add(record.start_time, number, where)
        yield record


def write_records(records: Iterable[RequestRecord], out: TextIO) -> int:
    count = 0
    for record in records:
        out.write(record.to_json() + "\n")
        count += 1
    return count
