"""The bodies of a run's requests: synthetic or dataset prompts, a model/LoRA mix by weight, prompts that share a
prefix, multi-turn sessions whose history grows, and the embeddings endpoint.

One :class:`RequestFactory` per sending process; everything random comes from its seeded generator, except the
shared prefixes, which every process derives from the run's seed alone so that all of them send the same ones.
No Locust here: the tests build and read these bodies as they are.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from forge_slo.errors import UsageError
from forge_slo.load.datasets import Dataset, Prompt, Turn
from forge_slo.load.workload import LengthDist, synthetic_text


class TokenCounter(Protocol):
    """Counts the tokens of a text (a local tokenizer)."""

    def count(self, text: str) -> int: ...


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` read from disk (the ``tokenizers`` package; nothing is downloaded)."""

    def __init__(self, path: str) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UsageError("--tokenizer: needs the 'tokenizers' package (pip install 'forge-slo[tokenizers]')"
                             ) from None
        try:
            self._tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # the Rust side raises plain Exception for a missing or bad file
            raise UsageError(f"--tokenizer: {path}: cannot read a tokenizer.json ({exc})") from None
        self.path = path

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def load_tokenizer(path: str | None) -> TokenCounter | None:
    return HFTokenizer(path) if path else None


@dataclass(frozen=True)
class Workload:
    """What the requests of a run look like; built from the options once per process."""

    api: str                                   # chat, completions or embeddings
    models: tuple[tuple[str, float], ...]      # (name, weight); one entry: every request goes to it
    prompt_tokens: LengthDist
    output_tokens: LengthDist
    ignore_eos: bool = False
    dataset: Dataset | None = None
    turns: LengthDist | None = None            # multi-turn sessions: turns per session
    prefix_share: float = 0.0                  # share of each prompt's tokens that is a shared prefix
    prefix_groups: int = 1                     # how many different shared prefixes
    seed: int = 0


@dataclass(frozen=True)
class RequestPlan:
    """One request to send: its body, the model it asks, the output length it asks for, what the record notes."""

    body: bytes
    max_tokens: int
    model: str
    prompt_tokens: int | None = None           # counted with --tokenizer
    extra: Mapping[str, Any] = field(default_factory=dict)
    session: Session | None = None


class Session:
    """A conversation: its model, how many turns it has, and its history so far (chat messages or text)."""

    __slots__ = ("id", "model", "turns", "turn", "messages", "text", "script", "pending")

    def __init__(self, ident: str, model: str, turns: int, script: Sequence[Turn] = (),
                 system: str | None = None) -> None:
        self.id = ident
        self.model = model
        self.turns = turns
        self.turn = 0                           # turns answered
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.text = system + "\n" if system else ""
        self.script = tuple(script)             # a dataset conversation's user turns
        self.pending: str | None = None        # the user message of the turn in flight


class SessionPool:
    """The sessions of one process. A request takes the session idle longest (or a new one), so history
    grows one answered turn at a time; a session ends after its turns, or when a turn fails."""

    def __init__(self) -> None:
        self.idle: collections.deque[Session] = collections.deque()
        self.started = 0

    def take(self) -> Session | None:
        return self.idle.popleft() if self.idle else None

    def give_back(self, session: Session, ok: bool) -> None:
        if ok and session.turn < session.turns:
            self.idle.append(session)


class RequestFactory:
    """Builds the JSON bodies of a run's requests (one factory per process)."""

    def __init__(self, workload: Workload, rng: random.Random, *, tokenizer: TokenCounter | None = None,
                 process: int = 0) -> None:
        self.w = workload
        self.api = workload.api
        self.rng = rng
        self.tokenizer = tokenizer
        self.process = process
        names = [name for name, _ in workload.models]
        self.model = names[0]
        self._names = names
        self._cumulative = list(itertools.accumulate(weight for _, weight in workload.models))
        self.prefix_tokens = prefix_length(workload.prefix_share, workload.prompt_tokens)
        self.prefixes = shared_prefixes(self.prefix_tokens, workload.prefix_groups, workload.seed)
        self.sessions = SessionPool() if workload.turns is not None else None

    # -- choices
    def pick_model(self) -> str:
        if len(self._names) == 1:
            return self.model
        at = self.rng.random() * self._cumulative[-1]
        return self._names[min(bisect.bisect_right(self._cumulative, at), len(self._names) - 1)]

    def _entry(self) -> Prompt:
        assert self.w.dataset is not None
        prompts = self.w.dataset.prompts
        return prompts[self.rng.randrange(len(prompts))]

    # -- one request
    def next(self) -> RequestPlan:
        if self.sessions is not None:
            return self._session_turn(self.sessions)
        model = self.pick_model()
        if self.w.dataset is not None:
            entry = self._entry()
            max_tokens = entry.max_tokens or self.w.output_tokens.sample(self.rng)
            if self.api == "chat":
                return self._plan(model, {"messages": list(entry.messages)}, max_tokens, entry.text)
            return self._plan(model, {"prompt": entry.text} if self.api == "completions" else {"input": entry.text},
                              max_tokens, entry.text)
        length = self.w.prompt_tokens.sample(self.rng)
        max_tokens = self.w.output_tokens.sample(self.rng)
        if not self.prefixes:
            text = synthetic_text(length, self.rng)
            fields = {"messages": [{"role": "user", "content": text}]} if self.api == "chat" else \
                {"prompt": text} if self.api == "completions" else {"input": text}
            return self._plan(model, fields, max_tokens, text)
        group = self.rng.randrange(len(self.prefixes))
        prefix = self.prefixes[group]
        suffix = synthetic_text(max(1, length - self.prefix_tokens), self.rng)
        extra = {"prefix_group": group, "prefix_tokens": self.prefix_tokens}
        if self.api == "chat":
            fields = {"messages": [{"role": "system", "content": prefix}, {"role": "user", "content": suffix}]}
            return self._plan(model, fields, max_tokens, prefix + "\n" + suffix, extra)
        text = prefix + " " + suffix
        return self._plan(model, {"prompt": text} if self.api == "completions" else {"input": text}, max_tokens,
                          text, extra)

    def _session_turn(self, pool: SessionPool) -> RequestPlan:
        session = pool.take() or self._new_session(pool)
        rng = self.rng
        scripted = session.script[session.turn] if session.turn < len(session.script) else None
        user = scripted.text if scripted is not None else synthetic_text(self.w.prompt_tokens.sample(rng), rng)
        max_tokens = (scripted.max_tokens if scripted is not None else None) or self.w.output_tokens.sample(rng)
        session.pending = user
        extra = {"session": session.id, "turn": session.turn + 1}
        if self.api == "chat":
            messages = [*session.messages, {"role": "user", "content": user}]
            text = "\n".join(m["content"] for m in messages)
            return self._plan(session.model, {"messages": messages}, max_tokens, text, extra, session)
        text = session.text + user
        return self._plan(session.model, {"prompt": text}, max_tokens, text, extra, session)

    def _new_session(self, pool: SessionPool) -> Session:
        assert self.w.turns is not None
        pool.started += 1
        turns = self.w.turns.sample(self.rng)
        script: tuple[Turn, ...] = ()
        if self.w.dataset is not None:
            entry = self._entry()
            script = entry.turns or (Turn(entry.text, entry.max_tokens),)
            turns = min(turns, len(script))
        system = self.prefixes[self.rng.randrange(len(self.prefixes))] if self.prefixes else None
        return Session(f"{self.process}-{pool.started}", self.pick_model(), turns, script, system)

    def finish(self, plan: RequestPlan, ok: bool, reply: str) -> None:
        """A session's turn ended: an answered turn joins the history; a failed one ends the session."""
        session = plan.session
        if session is None or self.sessions is None:
            return
        user = session.pending or ""
        session.pending = None
        if ok:
            session.turn += 1
            session.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            session.text += user + reply
        self.sessions.give_back(session, ok)

    def _plan(self, model: str, fields: dict[str, Any], max_tokens: int, text: str,
              extra: Mapping[str, Any] | None = None, session: Session | None = None) -> RequestPlan:
        body: dict[str, Any] = {"model": model, **fields}
        if self.api != "embeddings":
            body["max_tokens"] = max_tokens
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            if self.w.ignore_eos:
                body["ignore_eos"] = True
        counted = self.tokenizer.count(text) if self.tokenizer is not None else None
        return RequestPlan(json.dumps(body, separators=(",", ":")).encode(),
                           max_tokens if self.api != "embeddings" else 0, model, counted, extra or {}, session)


def prefix_length(share: float, prompt_tokens: LengthDist) -> int:
    """Tokens of the shared prefix: ``share`` of the mean prompt length (at least one; the rest of each prompt,
    at least one token too, is its own)."""
    if share <= 0:
        return 0
    return max(1, round(share * prompt_tokens.mean))


def shared_prefixes(tokens: int, groups: int, seed: int) -> tuple[str, ...]:
    """The run's shared prefixes: the same in every process, since they come from the run's seed alone."""
    if tokens <= 0:
        return ()
    return tuple(synthetic_text(tokens, random.Random(f"forge-slo-prefix:{seed}:{g}")) for g in range(groups))
