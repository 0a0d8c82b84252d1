"""Files a user brings to a load run: prompt datasets (forge-slo's JSONL, ShareGPT) and files of lengths.

Every problem raises :class:`~forge_slo.errors.UsageError` naming the file and the line (JSONL) or the entry
(a ShareGPT JSON array), so a bad file is exit code 2 before anything is sent. Pure functions, no Locust.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forge_slo.errors import UsageError

MAX_DATASET_LINES = 1_000_000
MAX_LENGTHS = 1_000_000
MAX_LENGTH = 1_000_000
CHARS_PER_TOKEN = 4  # without a tokenizer, a reply's length in tokens is estimated as the servers' rule of thumb
_USER_ROLES = frozenset({"human", "user"})
_ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard", "bing", "model"})


@dataclass(frozen=True)
class Turn:
    """One user message of a conversation and the length of the answer it got (None: not known)."""

    text: str
    max_tokens: int | None = None


@dataclass(frozen=True)
class Prompt:
    """One dataset entry: a completions prompt or chat messages, an optional output length, and for a
    conversation (ShareGPT) every user turn in order, which multi-turn sessions replay."""

    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] = ()
    max_tokens: int | None = None
    turns: tuple[Turn, ...] = ()

    @property
    def text(self) -> str:
        """The prompt's text: the completions prompt, or the chat messages' contents."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(str(m.get("content") or "") for m in self.messages)


@dataclass(frozen=True)
class Dataset:
    path: str
    prompts: tuple[Prompt, ...]
    format: str = "jsonl"  # "jsonl" or "sharegpt"


def load_dataset(path: str, api: str) -> Dataset:
    """A dataset file: forge-slo's JSONL (``{"prompt"}`` or ``{"messages"}`` per line), or ShareGPT (a JSON array,
    or JSONL, of ``{"conversations": [{"from": "human", "value": ...}, ...]}``); UsageError as ``FILE:LINE: why``."""
    try:
        handle = Path(path).open(encoding="utf-8")  # noqa: SIM115 - the with below closes it
    except OSError as exc:
        raise UsageError(f"--dataset: {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            first = _first_char(handle)
            handle.seek(0)
            if first == "[":
                prompts = _sharegpt_array(handle, path, api)
                fmt = "sharegpt"
            else:
                prompts, fmt = _jsonl(handle, path, api)
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not prompts:
        raise UsageError(f"{path}: the dataset has no prompts")
    return Dataset(path, tuple(prompts), fmt)


def _first_char(handle: Any) -> str:
    while True:
        chunk = handle.read(4096)
        if not chunk:
            return ""
        stripped = chunk.lstrip()
        if stripped:
            return str(stripped[0])


def _jsonl(handle: Any, path: str, api: str) -> tuple[list[Prompt], str]:
    prompts: list[Prompt] = []
    fmt = "jsonl"
    for number, line in enumerate(handle, 1):
        if number > MAX_DATASET_LINES:
            raise UsageError(f"{path}:{number}: more than {MAX_DATASET_LINES} lines")
        if not line.strip():
            continue
        where = f"{path}:{number}"
        data = _json_object(line, where)
        if "conversations" in data:
            fmt = "sharegpt"
            entry = _sharegpt_entry(data, where, api)
            if entry is not None:
                prompts.append(entry)
            continue
        prompts.append(_dataset_entry(data, where, api))
    return prompts, fmt


def _json_object(line: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: each line must be a JSON object")
    return data


def _dataset_entry(data: dict[str, Any], where: str, api: str) -> Prompt:
    unknown = sorted(set(data) - {"prompt", "messages", "max_tokens", "output_tokens", "id"})
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r} (allowed: prompt, messages, max_tokens, id; "
                         "or a ShareGPT entry with 'conversations')")
    max_tokens = data.get("max_tokens", data.get("output_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise UsageError(f"{where}: max_tokens: must be a whole number >= 1, got {max_tokens!r}")
    prompt, messages = data.get("prompt"), data.get("messages")
    if (prompt is None) == (messages is None):
        raise UsageError(f"{where}: give exactly one of 'prompt' and 'messages'")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt:
            raise UsageError(f"{where}: prompt: must be a non-empty string")
        if api == "chat":
            return Prompt(messages=({"role": "user", "content": prompt},), max_tokens=max_tokens)
        return Prompt(prompt=prompt, max_tokens=max_tokens)
    if api == "completions":
        raise UsageError(f"{where}: messages: needs --api chat (the completions API takes 'prompt')")
    if not isinstance(messages, list) or not messages:
        raise UsageError(f"{where}: messages: must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or "content" not in msg:
            raise UsageError(f"{where}: messages[{i}]: must be an object with 'role' and 'content'")
    return Prompt(messages=tuple(messages), max_tokens=max_tokens)


def _sharegpt_array(handle: Any, path: str, api: str) -> list[Prompt]:
    try:
        data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, list):
        raise UsageError(f"{path}: a JSON dataset must be an array of ShareGPT entries")
    if len(data) > MAX_DATASET_LINES:
        raise UsageError(f"{path}: more than {MAX_DATASET_LINES} entries")
    prompts = []
    for i, item in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(item, dict) or "conversations" not in item:
            raise UsageError(f"{where}: must be an object with 'conversations' (ShareGPT)")
        entry = _sharegpt_entry(item, where, api)
        if entry is not None:
            prompts.append(entry)
    return prompts


def _sharegpt_entry(data: dict[str, Any], where: str, api: str) -> Prompt | None:
    """The user turns of one ShareGPT conversation, each with its answer's length; None when it has no user
    turn (such entries are skipped, as vLLM's benchmark skips them)."""
    conversation = data.get("conversations")
    if not isinstance(conversation, list):
        raise UsageError(f"{where}: conversations: must be a list")
    turns: list[Turn] = []
    pending: str | None = None
    for i, message in enumerate(conversation):
        role, text = _sharegpt_message(message, f"{where}: conversations[{i}]")
        if role in _USER_ROLES:
            if pending is not None:
                turns.append(Turn(pending))
            pending = text
        elif role in _ASSISTANT_ROLES and pending is not None:
            turns.append(Turn(pending, estimate_tokens(text)))
            pending = None
    if pending is not None:
        turns.append(Turn(pending))
    turns = [t for t in turns if t.text]
    if not turns:
        return None
    first = turns[0]
    if api == "completions":
        return Prompt(prompt=first.text, max_tokens=first.max_tokens, turns=tuple(turns))
    return Prompt(messages=({"role": "user", "content": first.text},), max_tokens=first.max_tokens,
                  turns=tuple(turns))


def _sharegpt_message(message: Any, where: str) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise UsageError(f"{where}: must be an object with 'from' and 'value'")
    role, text = message.get("from", message.get("role")), message.get("value", message.get("content"))
    if not isinstance(role, str) or not isinstance(text, str):
        raise UsageError(f"{where}: must have a string 'from' and a string 'value'")
    return role.lower(), text


def estimate_tokens(text: str) -> int | None:
    """A reply's length in tokens without a tokenizer (characters / 4), None for an empty reply."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else None


def read_lengths(path: str, flag: str) -> tuple[int, ...]:
    """Token lengths from a file: one whole number per line (blank lines and ``#`` comments skipped), or one JSON
    array of them; UsageError naming ``flag``, the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{flag}: {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{flag}: {path}: not UTF-8 text ({exc.reason})") from None
    values = list(_json_lengths(text, path, flag) if text.lstrip().startswith("[") else _line_lengths(text, path))
    if not values:
        raise UsageError(f"{flag}: {path}: no lengths in the file")
    return tuple(values)


def _line_lengths(text: str, path: str) -> Iterator[int]:
    count = 0
    for number, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        count += 1
        if count > MAX_LENGTHS:
            raise UsageError(f"{path}:{number}: more than {MAX_LENGTHS} lengths")
        yield _length(item, f"{path}:{number}")


def _json_lengths(text: str, path: str, flag: str) -> Iterator[int]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag}: {path}:{exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(data, list) or len(data) > MAX_LENGTHS:
        raise UsageError(f"{flag}: {path}: must be an array of at most {MAX_LENGTHS} whole numbers")
    for i, item in enumerate(data):
        if isinstance(item, bool) or not isinstance(item, int):
            raise UsageError(f"{path}: [{i}]: {item!r} is not a whole number")
        yield _length(str(item), f"{path}: [{i}]")


def _length(item: str, where: str) -> int:
    try:
        value = int(item)
    except ValueError:
        raise UsageError(f"{where}: {item!r} is not a whole number of tokens") from None
    if not 1 <= value <= MAX_LENGTH:
        raise UsageError(f"{where}: {value} is not between 1 and {MAX_LENGTH}")
    return value
