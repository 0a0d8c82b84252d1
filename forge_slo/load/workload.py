"""What a load run sends: prompt and output lengths, prompts from a dataset, arrival times, request bodies.

Pure functions and small frozen types; no Locust here, so the tests and the CLI use them directly.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from forge_slo.errors import UsageError

# Three-letter words: " the" is one token in the BPE tokenizers of Llama, Qwen and GPT models, and four
# characters are one token in the simulator's estimate (characters / 4), so N words are about N tokens.
_WORDS = (
    "the", "and", "for", "you", "not", "are", "but", "can", "all", "one", "was", "has", "her", "his", "out",
    "day", "get", "new", "now", "old", "see", "two", "way", "who", "its", "man", "did", "say", "any", "may",
    "use", "how", "our", "too", "own", "set", "put", "end", "why", "big", "few", "ask", "men", "run", "try",
    "far", "low", "yes", "sun", "sea", "air", "art", "bed", "box", "car", "cat", "cup", "dog", "egg", "eye",
    "fun", "hat", "key", "leg", "map", "net", "oil", "pen", "red", "sky", "tea", "top", "war", "win", "job",
)


@dataclass(frozen=True)
class LengthDist:
    """A length in tokens: fixed, uniform in [a, b], or normal(mean, stddev) rounded and clamped to >= 1."""

    kind: Literal["fixed", "uniform", "normal"]
    a: float
    b: float = 0.0

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        return max(1, round(rng.gauss(self.a, self.b)))

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        return self.a

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{int(self.a)}"
        if self.kind == "uniform":
            return f"uniform:{int(self.a)}:{int(self.b)}"
        return f"normal:{self.a:g}:{self.b:g}"


def parse_length(text: str) -> LengthDist:
    """``128``, ``uniform:64:256`` or ``normal:128:32``; raises ValueError with the reason."""
    parts = [p.strip() for p in text.strip().split(":")]
    try:
        if len(parts) == 1:
            n = int(parts[0])
            if n < 1:
                raise ValueError(f"{text!r} must be at least 1")
            return LengthDist("fixed", n)
        if parts[0] == "fixed" and len(parts) == 2:
            return parse_length(parts[1])
        if parts[0] == "uniform" and len(parts) == 3:
            lo, hi = int(parts[1]), int(parts[2])
            if not 1 <= lo <= hi:
                raise ValueError(f"{text!r} needs 1 <= MIN <= MAX")
            return LengthDist("uniform", lo, hi)
        if parts[0] == "normal" and len(parts) == 3:
            mean, sd = float(parts[1]), float(parts[2])
            if not (math.isfinite(mean) and math.isfinite(sd)) or mean < 1 or sd < 0:
                raise ValueError(f"{text!r} needs MEAN >= 1 and STDDEV >= 0")
            return LengthDist("normal", mean, sd)
    except ValueError as exc:
        if "needs" in str(exc) or "at least" in str(exc):
            raise
        raise ValueError(f"{text!r}: numbers expected ({exc})") from None
    raise ValueError(f"{text!r} is not N, uniform:MIN:MAX or normal:MEAN:STDDEV")


@dataclass(frozen=True)
class Prompt:
    """One dataset entry: a completions prompt or chat messages, and an optional output length."""

    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] = ()
    max_tokens: int | None = None


@dataclass(frozen=True)
class Dataset:
    path: str
    prompts: tuple[Prompt, ...]


MAX_DATASET_LINES = 1_000_000


def load_dataset(path: str, api: str) -> Dataset:
    """Read a JSONL dataset; every problem raises UsageError as ``FILE:LINE: reason``."""
    prompts: list[Prompt] = []
    try:
        handle = Path(path).open(encoding="utf-8")  # noqa: SIM115 - the with below closes it
    except OSError as exc:
        raise UsageError(f"--dataset: {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            for number, line in enumerate(handle, 1):
                if number > MAX_DATASET_LINES:
                    raise UsageError(f"{path}:{number}: more than {MAX_DATASET_LINES} lines")
                if not line.strip():
                    continue
                prompts.append(_dataset_entry(line, f"{path}:{number}", api))
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not prompts:
        raise UsageError(f"{path}: the dataset has no prompts")
    return Dataset(path, tuple(prompts))


def _dataset_entry(line: str, where: str, api: str) -> Prompt:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: each line must be a JSON object")
    unknown = sorted(set(data) - {"prompt", "messages", "max_tokens", "output_tokens", "id"})
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r} (allowed: prompt, messages, max_tokens, id)")
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
    if api != "chat":
        raise UsageError(f"{where}: messages: needs --api chat (the completions API takes 'prompt')")
    if not isinstance(messages, list) or not messages:
        raise UsageError(f"{where}: messages: must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or "content" not in msg:
            raise UsageError(f"{where}: messages[{i}]: must be an object with 'role' and 'content'")
    return Prompt(messages=tuple(messages), max_tokens=max_tokens)


def synthetic_text(tokens: int, rng: random.Random) -> str:
    """About ``tokens`` tokens of text: random three-letter words, so prompts do not share a prefix."""
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, tokens)))


@dataclass(frozen=True)
class RequestPlan:
    body: bytes
    max_tokens: int


class RequestFactory:
    """Builds the JSON bodies of a run's requests from its lengths or dataset (one per process)."""

    def __init__(self, model: str, api: str, prompt_tokens: LengthDist, output_tokens: LengthDist,
                 dataset: Dataset | None, ignore_eos: bool, rng: random.Random) -> None:
        self.model = model
        self.api = api
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.dataset = dataset
        self.ignore_eos = ignore_eos
        self.rng = rng

    def next(self) -> RequestPlan:
        rng = self.rng
        body: dict[str, Any] = {"model": self.model}
        if self.dataset is not None:
            entry = self.dataset.prompts[rng.randrange(len(self.dataset.prompts))]
            max_tokens = entry.max_tokens or self.output_tokens.sample(rng)
            if self.api == "chat":
                body["messages"] = list(entry.messages)
            else:
                body["prompt"] = entry.prompt
        else:
            max_tokens = self.output_tokens.sample(rng)
            text = synthetic_text(self.prompt_tokens.sample(rng), rng)
            if self.api == "chat":
                body["messages"] = [{"role": "user", "content": text}]
            else:
                body["prompt"] = text
        body["max_tokens"] = max_tokens
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        if self.ignore_eos:
            body["ignore_eos"] = True
        return RequestPlan(json.dumps(body, separators=(",", ":")).encode(), max_tokens)


class Arrivals:
    """Intervals between arrivals of an open-loop stream of ``rate`` requests per second.

    ``gamma`` has shape ``burstiness`` and mean 1/rate (vLLM's benchmark uses the same): burstiness 1 is
    Poisson, below 1 arrivals come in bursts, above 1 more evenly spaced.
    """

    def __init__(self, kind: str, rate: float, burstiness: float, rng: random.Random) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.kind = kind
        self.rate = rate
        self.burstiness = burstiness
        self.rng = rng

    def interval(self) -> float:
        if self.kind == "constant":
            return 1.0 / self.rate
        if self.kind == "gamma":
            return self.rng.gammavariate(self.burstiness, 1.0 / (self.rate * self.burstiness))
        return self.rng.expovariate(self.rate)
