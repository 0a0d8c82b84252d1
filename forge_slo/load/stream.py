"""Measuring one streaming answer from its server-sent events, timestamped as each line arrives.

The Locust user reads the body line by line and feeds every line here with the time it was read; this
module knows the OpenAI event format and the project's metric definitions (the README's "What is measured",
and :data:`forge_slo.spec.presets.QUANTITIES` for the meaning of each latency alias):

- A *token chunk* is an event that brings generated tokens, as vLLM's ``vllm bench serve`` tells them. Chat:
  a delta with non-empty ``content``, ``reasoning_content`` or ``reasoning``, non-empty ``tool_calls``, a
  ``function_call``, or ``content: ""`` without a ``role`` (a special token that prints as nothing); the
  opening role-only delta never. Completions: a choice with ``text``, even empty (a special token). One
  exception to vLLM's rule, for both: an empty content or text in the chunk that carries the finish reason
  is not a token. Many servers (the simulator among them) close with such a chunk right after the last
  token; counting it would add a token that was never generated and a near-zero gap.
- TTFT: request sent -> the first token chunk.
- Output tokens: ``usage.completion_tokens`` of the last event when the server sends it (we always ask with
  ``stream_options.include_usage``); otherwise the number of token chunks (``tokens_from`` is ``"stream"``),
  exact for servers that send one token per chunk.
- ITL, per token, as the servers' histograms count it (SGLang's ``inter_token_latency_seconds``): a token
  chunk that brings k tokens after a gap g adds k values g / k; the tokens of the first chunk add none (TTFT
  covers them). The server does not say which chunk brought how many of its ``usage`` tokens, so they are
  spread as evenly as whole numbers allow over the chunks. A request of T tokens in chunks of one token has
  T - 1 values; their sum is always last token chunk - first token chunk.
- TPOT: (last token chunk - first token chunk) / (output tokens - 1), none with fewer than two tokens.
- e2e: request sent -> the last token chunk (the end of the answer when it has none, or the failure).

An event that is not the JSON of a completion chunk fails the request as ``malformed`` (it is never counted
as a token), and so do a ``usage.completion_tokens`` above the request's ``max_tokens`` and more token chunks
than ``max_tokens``: such a count cannot be true, and nothing here is ever allocated in proportion to what
the server sends (the times of chunks beyond ``max_tokens`` are not kept, and an ITL list never holds more
than ``max_tokens`` values).
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from typing import Any

from forge_slo.sources.records import RECORD_VERSION, RequestRecord

_DATA = b"data:"
_DONE = b"[DONE]"
# One JSON string literal (RFC 8259), at least one character long: the content of a token event.
_CONTENT_LITERAL = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))+"')
_SENTINEL = "\x00\x01forge-slo"
_SENTINEL_LITERAL = b'"\\u0000\\u0001forge-slo"'
_CONTENT_KEYS = ("content", "reasoning_content", "reasoning")
_RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))
_TEMPLATE_TRIES = 4           # token events whose framing may become the template, per stream


class StreamError(Exception):
    """A request failed: ``kind`` is one of the record error kinds."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


class StreamMeter:
    """Collects the timing of one stream; :meth:`feed` every line, then :meth:`record`.

    Every event is checked, but most are checked without parsing: once one token event has been parsed, the
    bytes around its content (its "template") are proven to frame a string at that place by parsing them
    again around a sentinel. A later event with the same bytes around any valid, non-empty JSON string is
    then the same event with other content (a token), recognised by comparing bytes. Any other event is
    parsed in full.
    """

    __slots__ = ("t_sent", "max_tokens", "token_times", "excess_events", "finish_reason", "prompt_tokens",
                 "completion_tokens", "done", "t_done", "t_last", "bytes", "error_kind", "error", "status",
                 "_prefix", "_suffix", "_templates_tried", "texts")

    def __init__(self, t_sent: float, max_tokens: int, keep_text: bool = False) -> None:
        self.t_sent = t_sent
        self.max_tokens = max_tokens  # what the request asked for: the bound of a believable usage count
        self.token_times: list[float] = []  # at most max_tokens: a server that sends more is counted, not kept
        self.excess_events = 0
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
        self._prefix: bytes | None = None
        self._suffix = b""
        self._templates_tried = 0
        self.texts: list[str] | None = [] if keep_text else None  # the answer's text (a session's history)

    @property
    def text(self) -> str:
        """The text of the answer's token chunks (with ``keep_text``; empty otherwise)."""
        return "".join(self.texts or ())

    def feed(self, line: bytes, now: float) -> bool:
        """Take one line read at ``now``; returns True once the stream has ended with ``[DONE]``.

        Raises StreamError("malformed") for an event that is not the JSON of a completion chunk, or whose
        usage cannot be true; StreamError("other") for an error event.
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
        if self._fits_template(payload):
            self._token(now)
            if self.texts is not None:
                self.texts.append(json.loads(payload[len(self._prefix or b""):len(payload) - len(self._suffix)]))
            return False
        self._parse(payload, now)
        return False

    def _fits_template(self, payload: bytes) -> bool:
        prefix = self._prefix
        if prefix is None:
            return False
        suffix = self._suffix
        end = len(payload) - len(suffix)
        return (end > len(prefix) and payload.startswith(prefix) and payload.endswith(suffix)
                and _CONTENT_LITERAL.fullmatch(payload, len(prefix), end) is not None)

    def _parse(self, payload: bytes, now: float) -> None:
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            raise StreamError("malformed", f"event is not JSON: {_clip(payload)}") from None
        if not isinstance(event, dict):
            raise StreamError("malformed", f"event is not a JSON object: {_clip(payload)}")
        choices = event.get("choices")
        usage = event.get("usage")
        if choices:
            token, key = _check_choices(choices, payload)
            choice = choices[0]
            if token:
                self._token(now)
                if key is not None and self.texts is not None:
                    slot = _content_slot(event, key)
                    self.texts.append(str(slot.get(key) or "") if slot is not None else "")
                if key is not None and self._templates_tried < _TEMPLATE_TRIES:
                    self._learn_template(payload, event, key)
            reason = choice.get("finish_reason")
            if reason:
                self.finish_reason = reason
        elif "error" in event:
            err = event["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise StreamError("other", f"error event in the stream: {_clip(str(message).encode())}")
        elif choices is None and usage is None:
            raise StreamError("malformed", f"event has no 'choices': {_clip(payload)}")
        elif not isinstance(choices, list | None):
            raise StreamError("malformed", f"'choices' is not a list of objects: {_clip(payload)}")
        if usage is not None:
            self._take_usage(usage, payload)

    def _token(self, now: float) -> None:
        if len(self.token_times) < self.max_tokens:
            self.token_times.append(now)
        else:
            self.excess_events += 1

    @property
    def events(self) -> int:
        """Token chunks received, kept or not."""
        return len(self.token_times) + self.excess_events

    def _take_usage(self, usage: Any, payload: bytes) -> None:
        if not isinstance(usage, dict):
            raise StreamError("malformed", f"'usage' is not an object: {_clip(payload)}")
        completion = _count(usage, "completion_tokens", payload)
        prompt = _count(usage, "prompt_tokens", payload)
        if completion is not None and completion > self.max_tokens:
            # Believing it would make the record carry that many inter-token gaps.
            raise StreamError("malformed", f"usage.completion_tokens is {_clip(str(completion).encode(), 40)}, "
                                           f"more than the request's max_tokens {self.max_tokens}")
        if completion is not None:
            self.completion_tokens = completion
        if prompt is not None:
            self.prompt_tokens = prompt

    def _learn_template(self, payload: bytes, event: dict[str, Any], key: str) -> None:
        self._templates_tried += 1
        mark = re.search(b'"' + key.encode() + rb'"\s*:\s*(?=")', payload)
        if mark is None or _SENTINEL_LITERAL in payload:
            return
        literal = _CONTENT_LITERAL.match(payload, mark.end())
        if literal is None:
            return
        prefix, suffix = payload[:mark.end()], payload[literal.end():]
        try:
            probe = json.loads(prefix + _SENTINEL_LITERAL + suffix)
        except (ValueError, RecursionError):
            return
        slot = _content_slot(probe, key)
        if slot is None or slot.get(key) != _SENTINEL:
            return
        original = _content_slot(event, key)
        assert original is not None
        slot[key] = original[key]
        if probe == event:
            self._prefix, self._suffix = prefix, suffix

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
        if ok and self.excess_events:
            # As with a usage count above max_tokens: such a stream cannot be true, and its gaps are not kept.
            self.error_kind = "malformed"
            self.error = (f"the server sent {self.events} token chunks, more than the request's max_tokens "
                          f"{self.max_tokens}")
            ok = False
        if self.completion_tokens is not None and ok:
            output = self.completion_tokens
            source = "usage"
        else:
            output = events
            source = "stream"
        end = self.t_done if self.t_done is not None else self.t_last
        e2e = (times[-1] if ok and events else end) - self.t_sent
        ttft = times[0] - self.t_sent if events else None
        itl = per_token_gaps(times, output)
        tpot = (times[-1] - times[0]) / (output - 1) if events and output >= 2 else None
        return RequestRecord(
            start_time=start_time, model=model, ok=ok, status=self.status, error_kind=self.error_kind,
            error=self.error, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e, itl_s=itl, prompt_tokens=self.prompt_tokens,
            output_tokens=output, tokens_from=source, finish_reason=self.finish_reason, stage=stage,
            warmup=warmup, trace_id=trace_id, extra=extra or {},
        )


def per_token_gaps(times: list[float], tokens: int) -> tuple[float, ...]:
    """ITL values of token chunks read at ``times`` bringing ``tokens`` in all: a chunk that brings k tokens
    after a gap g gives k values g / k. The tokens are spread over the chunks as evenly as whole numbers
    allow (chunk i brings floor((i+1)T/E) - floor(iT/E)); the first chunk's give no value. Never more values
    than ``tokens``, which the caller has bounded."""
    events = len(times)
    if tokens <= events:  # one token a chunk (or a usage count below the chunks: trust the chunks)
        return tuple(b - a for a, b in zip(times, times[1:], strict=False))
    out: list[float] = []
    for i in range(1, events):
        k = (i + 1) * tokens // events - i * tokens // events
        out.extend([(times[i] - times[i - 1]) / k] * k)
    return tuple(out)


def _check_choices(choices: Any, payload: bytes) -> tuple[bool, str | None]:
    """Check the first choice's shape; whether it is a token chunk, and the key of its non-empty text (the
    key a template is learned on), None when it has none."""
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise StreamError("malformed", f"'choices' is not a list of objects: {_clip(payload)}")
    choice = choices[0]
    reason = choice.get("finish_reason")
    if reason is not None and not isinstance(reason, str):
        raise StreamError("malformed", f"'finish_reason' is not a string: {_clip(payload)}")
    delta = choice.get("delta")
    if delta is None:
        key = _content_key(choice, ("text",), payload)
        # An empty text is a special token, unless it is the closing chunk that carries the finish reason.
        return key is not None or (choice.get("text") == "" and reason is None), key
    if not isinstance(delta, dict):
        raise StreamError("malformed", f"'delta' is not an object: {_clip(payload)}")
    key = _content_key(delta, _CONTENT_KEYS, payload)
    return key is not None or _brings_output(delta, reason, payload), key


def _brings_output(delta: dict[str, Any], reason: str | None, payload: bytes) -> bool:
    """A chat delta without text that still brings generated tokens: tool calls, a function call, or an
    empty content outside the opening role delta and the closing finish delta (a special token)."""
    tools = delta.get("tool_calls")
    if tools is not None and not isinstance(tools, list):
        raise StreamError("malformed", f"'tool_calls' is not a list: {_clip(payload)}")
    call = delta.get("function_call")
    if call is not None and not isinstance(call, dict):
        raise StreamError("malformed", f"'function_call' is not an object: {_clip(payload)}")
    special = delta.get("content") == "" and delta.get("role") is None and reason is None
    return bool(tools) or bool(call) or special


def _content_key(holder: dict[str, Any], keys: tuple[str, ...], payload: bytes) -> str | None:
    found = None
    for key in keys:
        value = holder.get(key)
        if value is not None and not isinstance(value, str):
            raise StreamError("malformed", f"'{key}' is not a string: {_clip(payload)}")
        if value and found is None:
            found = key
    return found


def _content_slot(event: Any, key: str) -> dict[str, Any] | None:
    """The object holding the content under ``key`` (a choice's delta, or the choice for ``text``)."""
    try:
        choice = event["choices"][0]
        slot = choice if key == "text" else choice["delta"]
    except (KeyError, IndexError, TypeError):
        return None
    return slot if isinstance(slot, dict) else None


def _count(usage: dict[str, Any], name: str, payload: bytes) -> int | None:
    value = usage.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StreamError("malformed", f"usage.{name} is not a whole number >= 0: {_clip(payload)}")
    return value


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
