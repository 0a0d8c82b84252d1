"""Measuring one streaming answer from its server-sent events, timestamped as each line arrives.

The Locust user reads the body line by line and feeds every line here with the time it was read; this
module knows the OpenAI event format and the project's metric definitions (see the README section):

- TTFT: request sent -> the first event carrying content (``delta.content``, ``delta.reasoning_content``
  or ``text``); role-only and empty events do not count.
- Output tokens: ``usage.completion_tokens`` of the last event when the server sends it (we always ask
  with ``stream_options.include_usage``); otherwise the number of content events (``tokens_from`` is
  ``"stream"``), which is exact for servers that send one token per event.
- ITL: the gap between successive content events; an event carrying k tokens contributes its gap once
  and k - 1 zero gaps. With usage, the extra tokens (usage minus events) are spread evenly over the
  events as zero gaps.
- TPOT: (e2e - TTFT) / (output tokens - 1), none with fewer than two tokens.
- e2e: request sent -> the ``[DONE]`` event (or the end of the body when a server sends no ``[DONE]``).
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from forge_slo.sources.records import RECORD_VERSION, RequestRecord

_DATA = b"data:"
_DONE = b"[DONE]"
# The common event, one token and no finish reason yet, recognised without parsing the JSON.
_NOT_FINISHED = b'"finish_reason":null'
_CONTENT_MARKS = (b'"content":"', b'"text":"')
_RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))


class StreamError(Exception):
    """A request failed: ``kind`` is one of the record error kinds."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


class StreamMeter:
    """Collects the timing of one stream; :meth:`feed` every line, then :meth:`record`."""

    __slots__ = ("t_sent", "token_times", "finish_reason", "prompt_tokens", "completion_tokens", "done",
                 "t_done", "t_last", "bytes", "error_kind", "error", "status")

    def __init__(self, t_sent: float) -> None:
        self.t_sent = t_sent
        self.token_times: list[float] = []
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.done = False
        self.t_done: float | None = None
        self.t_last = t_sent
        self.bytes = 0
        self.error_kind: str | None = None
        self.error = ""
        self.status: int | None = None

    def feed(self, line: bytes, now: float) -> bool:
        """Take one line read at ``now``; returns True once the stream has ended with ``[DONE]``.

        Raises StreamError("malformed") for an event that is not the JSON of a completion chunk.
        """
        self.bytes += len(line)
        self.t_last = now
        if not line.startswith(_DATA):
            return False  # blank separators, ": keep-alive" comments, "event:" and "id:" fields
        payload = line[5:].strip()
        if payload == _DONE:
            self.done = True
            self.t_done = now
            return True
        if not payload:
            return False
        if (payload[-1:] == b"}" and _NOT_FINISHED in payload and b'"usage"' not in payload
                and b'"error"' not in payload):
            for mark in _CONTENT_MARKS:
                at = payload.find(mark)
                if at > 0:
                    if payload[at + len(mark):at + len(mark) + 1] != b'"':
                        self.token_times.append(now)
                        return False
                    break
        try:
            event = json.loads(payload)
        except ValueError:
            raise StreamError("malformed", f"event is not JSON: {_clip(payload)}") from None
        if not isinstance(event, dict):
            raise StreamError("malformed", f"event is not a JSON object: {_clip(payload)}")
        choices = event.get("choices")
        if choices:
            if not isinstance(choices, list) or not isinstance(choices[0], dict):
                raise StreamError("malformed", f"'choices' is not a list of objects: {_clip(payload)}")
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
            else:
                content = choice.get("text")
            if content:
                self.token_times.append(now)
            reason = choice.get("finish_reason")
            if reason:
                self.finish_reason = str(reason)
        elif "error" in event:
            err = event["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise StreamError("other", f"error event in the stream: {_clip(str(message).encode())}")
        usage = event.get("usage")
        if isinstance(usage, dict):
            completion = usage.get("completion_tokens")
            prompt = usage.get("prompt_tokens")
            if isinstance(completion, int) and not isinstance(completion, bool) and completion >= 0:
                self.completion_tokens = completion
            if isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0:
                self.prompt_tokens = prompt
        return False

    def fail(self, kind: str, message: str, now: float) -> None:
        self.error_kind = kind
        self.error = message
        self.t_last = now

    def end_without_done(self, now: float) -> None:
        """The body ended without ``[DONE]``: fine after a finish reason, a cut stream otherwise."""
        self.t_last = now
        if self.finish_reason is None and self.error_kind is None:
            self.fail("stream_cut", "the stream ended without a finish reason or [DONE]", now)

    def record(self, *, start_time: float, model: str, stage: str, warmup: bool, trace_id: str,
               extra: dict[str, Any] | None = None) -> RequestRecord:
        times = self.token_times
        events = len(times)
        ok = self.error_kind is None
        if ok and self.finish_reason in ("abort", "error"):
            self.error_kind = "stream_cut" if self.finish_reason == "abort" else "other"
            self.error = f"the server finished the stream with finish_reason={self.finish_reason!r}"
            ok = False
        if self.completion_tokens is not None and ok:
            output = self.completion_tokens
            source = "usage"
        else:
            output = events
            source = "stream"
        end = self.t_done if self.t_done is not None else self.t_last
        e2e = end - self.t_sent
        ttft = times[0] - self.t_sent if events else None
        itl = _gaps(times, output) if events else ()
        tpot = None
        if ttft is not None and output >= 2:
            tpot = max(0.0, e2e - ttft) / (output - 1)
        return RequestRecord(
            start_time=start_time, model=model, ok=ok, status=self.status, error_kind=self.error_kind,
            error=self.error, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e, itl_s=itl, prompt_tokens=self.prompt_tokens,
            output_tokens=output, tokens_from=source, finish_reason=self.finish_reason, stage=stage,
            warmup=warmup, trace_id=trace_id, extra=extra or {},
        )


def _gaps(times: list[float], tokens: int) -> tuple[float, ...]:
    """Gaps between content events, plus k - 1 zero gaps for an event carrying k tokens."""
    events = len(times)
    extra = tokens - events
    if extra <= 0:
        return tuple(b - a for a, b in zip(times, times[1:], strict=False))
    out: list[float] = []
    given = 0
    for i in range(events):
        if i:
            out.append(times[i] - times[i - 1])
        share = (i + 1) * extra // events - given
        given += share
        out.extend([0.0] * share)
    return tuple(out)


def _clip(payload: bytes, limit: int = 120) -> str:
    text = payload.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


def error_message(body: bytes, status: int) -> str:
    """A short message from an error body (OpenAI's ``{"error": {"message": ...}}`` or plain text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err:
            text = str(err)
    text = " ".join(text.split())
    if len(text) > 200:
        text = text[:200] + "..."
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def record_json(record: RequestRecord) -> str:
    """``record.to_json()`` without ``dataclasses.asdict``'s deep copy (about ten times faster)."""
    data = {name: getattr(record, name) for name in _RECORD_FIELDS}
    data["itl_s"] = list(record.itl_s)
    data["v"] = RECORD_VERSION
    return json.dumps(data, separators=(",", ":"), allow_nan=False)
