"""The workloads users bring to forge-slo load, each run against the simulator on 127.0.0.1: ShareGPT files,
lengths from a file, multi-turn sessions, shared prefixes, a model mix, the embeddings endpoint, prompt tokens
counted with a local tokenizer. And the request bodies themselves, built as the engine builds them."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge_slo.errors import UsageError
from forge_slo.load.datasets import load_dataset
from forge_slo.load.requests import RequestFactory, Workload
from forge_slo.load.workload import LengthDist, parse_length
from forge_slo.sim import SimProcess
from forge_slo.sources.records import RequestRecord, read_records

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "data" / "tokenizer.json"
CHAT_TOKENS_PER_MESSAGE = 3  # the simulator's estimate: ceil(characters / 4) per message, plus 3


def _model(name: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": name, "prefill_base_s": 0.02, "prefill_per_token_s": 0.0, "itl_s": 0.005,
                            "itl_distribution": "fixed", "itl_stddev_s": 0.0, "batch_slowdown": 0.0,
                            "output_tokens": {"distribution": "fixed", "value": 8}}
    base.update(kw)
    return base


SIM_CONFIG = {"seed": 5, "models": [_model("base"), _model("sql-lora"), _model("embedder", prefill_base_s=0.03,
                                                                               prefill_per_token_s=0.001)]}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(SIM_CONFIG) as proc:
        yield proc


def run_load(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forge_slo.load", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def run_ok(sim: SimProcess, out: Path, *args: str) -> list[RequestRecord]:
    proc = run_load("--target", sim.url, "--out", str(out), "--progress", "off", "--server-metrics", "off", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    records = read_records(out / "records.jsonl")
    assert records and all(r.ok for r in records), [r.error for r in records if not r.ok]
    return records


def words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------------------------------------------------
# Against the simulator


def test_a_sharegpt_file_replays_its_questions_with_its_answers_lengths(sim: SimProcess, tmp_path: Path) -> None:
    conversations = [
        {"id": f"c{i}", "conversations": [
            {"from": "human", "value": question}, {"from": "gpt", "value": "x" * answer_chars},
            {"from": "human", "value": "and then?"}, {"from": "gpt", "value": "y" * 8}]}
        for i, (question, answer_chars) in enumerate([("what is a cat", 20), ("tell me about dogs and cats", 36)])
    ]
    conversations.append({"id": "empty", "conversations": [{"from": "gpt", "value": "no question"}]})  # skipped
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps(conversations), encoding="utf-8")
    records = run_ok(sim, tmp_path / "out", "--model", "base", "--dataset", str(data), "--concurrency", "2",
                     "--max-requests", "10", "--duration", "5s")
    # The first question of each conversation, asking as many tokens as its answer had (characters / 4).
    expected = {math.ceil(len(q) / 4) + CHAT_TOKENS_PER_MESSAGE: a // 4 for q, a in
                [("what is a cat", 20), ("tell me about dogs and cats", 36)]}
    assert len(records) == 10
    assert {r.prompt_tokens for r in records} <= set(expected), records
    for r in records:
        assert r.output_tokens == expected[r.prompt_tokens], r


def test_lengths_drawn_from_files(sim: SimProcess, tmp_path: Path) -> None:
    prompts = tmp_path / "prompt-lengths.txt"
    prompts.write_text("# measured prompt lengths\n5\n12\n\n30\n", encoding="utf-8")
    outputs = tmp_path / "output-lengths.json"
    outputs.write_text("[3, 7]", encoding="utf-8")
    records = run_ok(sim, tmp_path / "out", "--model", "base", "--prompt-tokens", f"file:{prompts}",
                     "--output-tokens", f"file:{outputs}", "--concurrency", "2", "--max-requests", "24",
                     "--duration", "5s")
    assert {r.output_tokens for r in records} == {3, 7}
    # N synthetic words are N tokens to the simulator (4 characters each), plus the message's 3.
    assert {(r.prompt_tokens or 0) - CHAT_TOKENS_PER_MESSAGE for r in records} <= {5, 12, 30}
    assert len({r.prompt_tokens for r in records}) >= 2
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["workload"]["prompt_tokens"].startswith(f"file:{prompts} (3 lengths")


def test_multi_turn_sessions_carry_their_history(sim: SimProcess, tmp_path: Path) -> None:
    records = run_ok(sim, tmp_path / "out", "--model", "base", "--turns", "3", "--prompt-tokens", "6",
                     "--output-tokens", "5", "--concurrency", "2", "--max-requests", "12", "--duration", "8s")
    sessions: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in records:
        sessions[r.extra["session"]].append(r)
    assert len(records) == 12 and len(sessions) >= 4
    complete = 0
    for turns in sessions.values():
        turns.sort(key=lambda r: r.extra["turn"])
        assert [r.extra["turn"] for r in turns] == list(range(1, len(turns) + 1))
        assert turns[0].prompt_tokens == 6 + CHAT_TOKENS_PER_MESSAGE
        for before, after in zip(turns, turns[1:], strict=False):
            assert after.start_time >= before.start_time + (before.e2e_s or 0)  # a turn waits for the answer
            # Every earlier message is sent again: the last question, the answer the server gave (5 tokens of
            # " tok"), and the new question, each with its message overhead.
            assert after.prompt_tokens == (before.prompt_tokens or 0) + (CHAT_TOKENS_PER_MESSAGE + 5) + (
                CHAT_TOKENS_PER_MESSAGE + 6), (before, after)
        complete += len(turns) == 3
    assert complete >= 2


def test_a_shared_prefix_is_the_share_asked_and_counted_by_the_tokenizer(sim: SimProcess, tmp_path: Path) -> None:
    records = run_ok(sim, tmp_path / "out", "--model", "base", "--prefix-share", "0.5", "--prompt-tokens", "40",
                     "--tokenizer", str(TOKENIZER), "--concurrency", "2", "--max-requests", "10", "--duration", "5s")
    for r in records:
        assert r.extra["prefix_tokens"] == 20 and r.extra["prefix_group"] == 0
        # The tokenizer (one token a word) counted the whole prompt: 20 shared words and 20 of its own.
        assert r.extra["prompt_tokens_local"] == 40
        # The server got two messages of 20 words each.
        assert r.prompt_tokens == 2 * (20 + CHAT_TOKENS_PER_MESSAGE)


def test_a_model_mix_sends_by_weight(sim: SimProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    records = run_ok(sim, out, "--model", "base=3,sql-lora=1", "--rate", "40", "--arrival", "constant",
                     "--duration", "2s", "--output-tokens", "2")
    counts = Counter(r.model for r in records)
    assert set(counts) == {"base", "sql-lora"}
    assert 0.6 <= counts["base"] / len(records) <= 0.9, counts
    (stage,) = json.loads((out / "summary.json").read_text(encoding="utf-8"))["stages"]
    assert {m: v["requests"] for m, v in stage["models"].items()} == dict(counts)


def test_the_embeddings_endpoint(sim: SimProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    records = run_ok(sim, out, "--model", "embedder", "--api", "embeddings", "--prompt-tokens", "40",
                     "--rate", "10", "--duration", "2s")
    for r in records:
        assert r.ttft_s is None and r.itl_s == () and r.output_tokens == 0
        assert r.prompt_tokens == 40  # the server's usage: 40 words of 4 characters
        assert r.e2e_s is not None and r.e2e_s >= 0.03 + 0.001 * 40  # its prefill time
    (stage,) = json.loads((out / "summary.json").read_text(encoding="utf-8"))["stages"]
    assert stage["succeeded"] == len(records) and stage["latency"]["e2e_s"]["count"] == len(records)


# ---------------------------------------------------------------------------------------------------------
# The bodies, as every sending process builds them


def _factory(**kw: Any) -> RequestFactory:
    base: dict[str, Any] = {"api": "chat", "models": (("m", 1.0),), "prompt_tokens": LengthDist("fixed", 40),
                            "output_tokens": LengthDist("fixed", 8)}
    base.update(kw)
    return RequestFactory(Workload(**base), random.Random(1))


def _messages(plan_body: bytes) -> list[dict[str, str]]:
    body = json.loads(plan_body)
    messages: list[dict[str, str]] = body["messages"]
    return messages


@pytest.mark.parametrize(("share", "lengths", "groups"), [(0.5, LengthDist("fixed", 40), 1),
                                                          (0.25, LengthDist("uniform", 30, 50), 3),
                                                          (0.8, LengthDist("normal", 100, 10), 2)])
def test_the_shared_prefix_share_is_the_share_asked(share: float, lengths: LengthDist, groups: int) -> None:
    factory = _factory(prompt_tokens=lengths, prefix_share=share, prefix_groups=groups)
    prefixes, prefix_words, all_words = set(), 0, 0
    for _ in range(400):
        system, user = _messages(factory.next().body)
        assert system["role"] == "system" and user["role"] == "user"
        prefixes.add(system["content"])
        prefix_words += words(system["content"])
        all_words += words(system["content"]) + words(user["content"])
    assert len(prefixes) == groups  # the same few prefixes every time
    assert prefix_words / all_words == pytest.approx(share, abs=0.02)
    # Every process derives the same prefixes from the run's seed, so they are shared across workers too.
    other = RequestFactory(factory.w, random.Random(99), process=1)
    assert set(other.prefixes) == prefixes


def test_a_session_sends_its_whole_history_each_turn() -> None:
    factory = _factory(turns=LengthDist("fixed", 3), prompt_tokens=LengthDist("fixed", 4))
    first = factory.next()
    assert [m["role"] for m in _messages(first.body)] == ["user"]
    factory.finish(first, True, " the answer")
    second = factory.next()
    assert second.session is first.session and second.extra == {"session": "0-1", "turn": 2}
    sent = _messages(second.body)
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[:2] == [_messages(first.body)[0], {"role": "assistant", "content": " the answer"}]
    factory.finish(second, False, "")  # a failed turn ends its session: the next request starts a new one
    assert factory.next().extra == {"session": "0-2", "turn": 1}


def test_dataset_and_length_files_refuse_bad_lines(tmp_path: Path) -> None:
    bad = tmp_path / "share.json"
    bad.write_text(json.dumps([{"conversations": [{"from": "human", "value": 3}]}]), encoding="utf-8")
    with pytest.raises(UsageError, match=r"share.json: entry 0: conversations\[0\]: must have a string"):
        load_dataset(str(bad), "chat")
    lengths = tmp_path / "lengths.txt"
    lengths.write_text("5\nten\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"lengths.txt:2: 'ten' is not a whole number"):
        parse_length(f"file:{lengths}", "--prompt-tokens")
    proc = run_load("--target", "http://127.0.0.1:9", "--model", "m", "--rate", "1", "--out", str(tmp_path / "o"),
                    "--prompt-tokens", f"file:{lengths}")
    assert proc.returncode == 2 and f"{lengths}:2:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "a=1,b"], "--model"),
    (["--model", "m", "--prefix-share", "1.5"], "--prefix-share"),
    (["--model", "m", "--api", "embeddings", "--turns", "3"], "--turns"),
    (["--model", "m", "--tokenizer", "no/such/tokenizer.json"], "--tokenizer"),
])
def test_bad_workload_flags_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    proc = run_load("--target", "http://127.0.0.1:9", "--rate", "1", "--out", str(tmp_path / "o"), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
