"""The simulator, driven like a user would: real servers on 127.0.0.1, the OpenAI client, /metrics, faults."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from forge_slo.errors import SpecError
from forge_slo.sim import SimProcess, SimServer, load_sim_config, parse_sim_config
from forge_slo.sim.answers import ANSWERS, SIM_PRESETS
from forge_slo.sim.config import ModelConfig, OutputTokens
from forge_slo.sim.engine import ModelEngine, TokenClock
from forge_slo.sim.metrics import LagStats
from forge_slo.spec.presets import PRESETS, VLLM_ITL_BUCKETS, VLLM_REQUEST_LATENCY_BUCKETS, VLLM_TTFT_BUCKETS

ROOT = Path(__file__).resolve().parents[1]
# Timing bounds: the simulator may send up to EARLY before a deadline (its timer's early margin) and, on a
# machine busy with other work, late by scheduling delay; SLACK leaves room for that without hiding a
# simulator that ignores its configured timing.
EARLY = 0.003
SLACK = 0.3
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _model(name: str, **kw: Any) -> dict[str, Any]:
    base = {
        "name": name,
        "itl_distribution": "fixed",
        "itl_stddev_s": 0.0,
        "batch_slowdown": 0.0,
        "prefill_per_token_s": 0.0,
        "output_tokens": {"distribution": "fixed", "value": 8},
    }
    base.update(kw)
    return base


MAIN_CONFIG = {
    "seed": 7,
    "admin_token": TOKEN,
    "models": [
        _model("fast", prefill_base_s=0.005, itl_s=0.002),
        _model("fixed", prefill_base_s=0.1, itl_s=0.01),
        _model("serial", max_num_seqs=1, prefill_base_s=0.05, itl_s=0.01),
        _model("chaos", prefill_base_s=0.005, itl_s=0.005),
    ],
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(MAIN_CONFIG) as proc:
        yield proc


def _get(url: str, **kw: Any) -> httpx.Response:
    return httpx.get(url, timeout=10, **kw)


def _metrics(sim: SimProcess) -> dict[str, Any]:
    text = _get(f"{sim.url}/metrics").text
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    total = 0.0
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def _finished(sim: SimProcess, model: str, reason: str) -> float:
    return _sample(
        _metrics(sim),
        "vllm:request_success",
        "vllm:request_success_total",
        model_name=model,
        finished_reason=reason,
    )


async def _stream(
    url: str, body: dict[str, Any], *, headers: dict[str, str] | None = None, read_tokens: int | None = None
) -> dict[str, Any]:
    """One streaming request; TTFT (first content token), token arrival times, whether it ended cleanly."""
    async with aiohttp.ClientSession() as session:
        sent = time.perf_counter()
        times: list[float] = []
        clean = False
        error = None
        async with session.post(url, json={**body, "stream": True}, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            try:
                async for line in resp.content:
                    if line.startswith(b"data: [DONE]"):
                        clean = True
                    elif line.startswith(b"data: "):
                        choice = json.loads(line[6:])["choices"]
                        if choice and (choice[0].get("text") or choice[0].get("delta", {}).get("content")):
                            times.append(time.perf_counter() - sent)
                            if read_tokens is not None and len(times) >= read_tokens:
                                break
            except aiohttp.ClientPayloadError as e:
                error = e
        return {"ttft": times[0] if times else math.nan, "times": times, "clean": clean, "error": error,
                "sent": sent}


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------------
# OpenAI client


def test_openai_client_chat_non_streaming(sim: SimProcess) -> None:
    with openai.OpenAI(base_url=sim.base_url, api_key="x") as client:
        r = client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi " * 40}], max_tokens=5
        )
    assert r.choices[0].message.content == " tok" * 5
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens == 3 + math.ceil(len("hi " * 40) / 4)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    assert r.model == "fast" and r.id.startswith("chatcmpl-")


def test_openai_client_chat_streaming_with_usage(sim: SimProcess) -> None:
    with openai.OpenAI(base_url=sim.base_url, api_key="x") as client:
        stream = client.chat.completions.create(
            model="fast",
            messages=[{"role": "user", "content": "hello"}],
            max_completion_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " tok" * 6
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


def test_openai_client_completions_and_default_length(sim: SimProcess) -> None:
    with openai.OpenAI(base_url=sim.base_url, api_key="x") as client:
        r = client.completions.create(model="fast", prompt="Once upon a time")
        chunks = list(client.completions.create(model="fast", prompt=[1, 2, 3], max_tokens=3, stream=True))
        models = client.models.list()
    # No max_tokens: the configured output length (fixed 8) and finish_reason "stop", as an EOS would give.
    assert r.choices[0].text == " tok" * 8 and r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens == 4
    assert "".join(c.choices[0].text for c in chunks) == " tok" * 3
    assert [m.id for m in models.data] == ["fast", "fixed", "serial", "chaos"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", b'{"model": "fast"}', 400, "messages"),
        ("/v1/chat/completions", b'{"model": "fast", "messages": "hi"}', 400, "messages"),
        (
            "/v1/chat/completions",
            b'{"model": "fast", "messages": [{"content": "x"}]}',
            400,
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "model",
        ),
        ("/v1/completions", b'{"model": "fast"}', 400, "prompt"),
        ("/v1/completions", b'{"model": "fast", "prompt": "x", "max_tokens": -3}', 400, "max_tokens"),
        ("/v1/completions", b'{"model": "fast", "prompt": "x", "max_tokens": 2.5}', 400, "max_tokens"),
        ("/v1/completions", b'{"model": "fast", "prompt": "x", "max_tokens": "9"}', 400, "max_tokens"),
        ("/v1/completions", b'{"model": 3, "prompt": "x"}', 400, "model"),
        ("/v1/completions", b'{"model": "fast", "prompt": "x", "stream": "yes"}', 400, "stream"),
        ("/v1/completions", b'{"model": "fast", "prompt": "x", "stream_options": {}}', 400, "stream_options"),
        ("/v1/completions", b'{"model": "fast", "prompt": "x", "max_tokens": 40000}', 400, "max_tokens"),
        ("/v1/completions", b"[1, 2]", 400, None),
    ],
)
def test_bad_requests_get_openai_error_bodies(
    sim: SimProcess, path: str, body: bytes, status: int, param: str | None
) -> None:
    r = httpx.post(f"{sim.url}{path}", content=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    assert err["type"] == ("NotFoundError" if status == 404 else "invalid_request_error")
    assert "Traceback" not in r.text


def test_openai_client_raises_on_unknown_model(sim: SimProcess) -> None:
    with (
        openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.NotFoundError),
    ):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])


# ---------------------------------------------------------------------------------------------------------
# Metrics


def test_metrics_expose_vllm_series_with_vllm_buckets(sim: SimProcess) -> None:
    """The default preset: vLLM's names, its model label and its bucket bounds, for every model."""
    with openai.OpenAI(base_url=sim.base_url, api_key="x") as client:
        client.completions.create(model="fast", prompt="abcd" * 10, max_tokens=4)
    _get(f"{sim.url}/health")
    fams = _metrics(sim)
    histograms = {
        "vllm:time_to_first_token_seconds": VLLM_TTFT_BUCKETS,
        "vllm:inter_token_latency_seconds": VLLM_ITL_BUCKETS,
        "vllm:e2e_request_latency_seconds": VLLM_REQUEST_LATENCY_BUCKETS,
        "vllm:request_queue_time_seconds": VLLM_REQUEST_LATENCY_BUCKETS,
    }
    for name, bounds in histograms.items():
        fam = fams[name]
        assert fam.type == "histogram"
        les = [
            s.labels["le"]
            for s in fam.samples
            if s.name == f"{name}_bucket" and s.labels["model_name"] == "fast"
        ]
        assert [float(le) for le in les] == [*bounds, math.inf]
        assert {s.labels["model_name"] for s in fam.samples} == {"fast", "fixed", "serial", "chaos"}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert fams[name].type == "gauge"
        assert {s.labels["model_name"] for s in fams[name].samples} == {"fast", "fixed", "serial", "chaos"}
    for name in ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success"):
        assert fams[name].type == "counter"
    # Created at zero for every model before any request, so a rate() sees the first ones.
    reasons = {
        (s.labels["model_name"], s.labels["finished_reason"]) for s in fams["vllm:request_success"].samples
    }
    assert reasons == {(m, r) for m in ("fast", "fixed", "serial", "chaos") for r in ("stop", "length", "error")}
    assert _sample(fams, "vllm:prompt_tokens", "vllm:prompt_tokens_total", model_name="fast") >= 10
    assert _sample(fams, "vllm:generation_tokens", "vllm:generation_tokens_total", model_name="fast") >= 4
    assert (
        _sample(
            fams,
            "vllm:inter_token_latency_seconds",
            "vllm:inter_token_latency_seconds_count",
            model_name="fast",
        )
        >= 3
    )
    http = fams["http_requests"]
    assert http.type == "counter"
    assert all("model_name" not in s.labels for s in http.samples)
    assert {s.labels["status"] for s in http.samples} <= {"2xx", "4xx", "5xx"}
    assert _sample(fams, "http_requests", "http_requests_total", handler="/v1/completions", method="POST",
                   status="2xx") >= 1


# ---------------------------------------------------------------------------------------------------------
# Every preset: what the server exports and how it counts, derived from spec/presets.py

PRESET_MODEL = "m"
# One slot and no queue: a request that finds the slot taken is shed.
PRESET_CONFIG = {
    "seed": 1,
    "admin_token": TOKEN,
    "models": [_model(PRESET_MODEL, prefill_base_s=0.01, itl_s=0.005, max_num_seqs=1, max_queued_requests=0,
                      output_tokens={"distribution": "fixed", "value": 3})],
}
# How many requests of each outcome _one_of_each_outcome sends.
ONE_OF_EACH = {"served": 3, "server_error": 1, "shed": 1, "cancelled": 1, "client_error": 1}
CHAT = {"model": PRESET_MODEL, "messages": [{"role": "user", "content": "hi"}]}


@dataclass(frozen=True)
class PresetRun:
    preset: str
    before: str  # /metrics before any request
    after: str  # and after one request of each outcome


def _running(sim: SimProcess) -> int:
    return int(_get(f"{sim.url}/debug/stats").json()["models"][PRESET_MODEL]["running"])


def _one_of_each_outcome(sim: SimProcess, preset: str) -> None:
    """Non-streaming chat requests (the shape of the presets' examples): served, failed, shed, cancelled by
    the client, invalid; each answered as the preset's server answers."""
    url = f"{sim.base_url}/chat/completions"
    answers = ANSWERS[preset]
    for _ in range(2):
        assert httpx.post(url, json=CHAT, timeout=10).status_code == 200
    errors = _add_fault(sim, {"kind": "errors", "model": PRESET_MODEL, "rate": 1.0}).json()["id"]
    assert httpx.post(url, json=CHAT, timeout=10).status_code == answers.server_error
    httpx.delete(f"{sim.url}/admin/faults/{errors}", headers=AUTH, timeout=10)
    slow = _add_fault(sim, {"kind": "latency", "model": PRESET_MODEL, "ttft_add_s": 1.0}).json()["id"]
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(httpx.post, url, json=CHAT, timeout=10)
        _wait_for(lambda: _running(sim) == 1)
        shed = httpx.post(url, json=CHAT, timeout=10)
        assert shed.status_code == answers.shed, shed.text
        assert holder.result().status_code == 200
    with pytest.raises(httpx.ReadTimeout):  # the client gives up during the slow prefill
        httpx.post(url, json=CHAT, timeout=httpx.Timeout(10, read=0.3))
    _wait_for(lambda: _running(sim) == 0)
    httpx.delete(f"{sim.url}/admin/faults/{slow}", headers=AUTH, timeout=10)
    assert httpx.post(url, json={"model": PRESET_MODEL}, timeout=10).status_code == 400


@pytest.fixture(scope="module", params=SIM_PRESETS)
def preset_run(request: pytest.FixtureRequest) -> Iterator[PresetRun]:
    with SimProcess(PRESET_CONFIG, preset=request.param) as sim:
        before = _get(f"{sim.url}/metrics").text
        _one_of_each_outcome(sim, request.param)
        yield PresetRun(request.param, before, _get(f"{sim.url}/metrics").text)


def _expected_families(preset: str) -> dict[str, tuple[str, set[str]]]:
    """Family name (as prometheus_client's parser names it) -> (type, label names), from the preset alone."""
    p = PRESETS[preset]
    assert p.outcomes is not None
    own = {p.model_label} if p.model_label else set()
    out: dict[str, tuple[str, set[str]]] = {h.metric: ("histogram", own) for h in p.histograms.values()}
    for series in p.outcomes.examples.values():
        for e in series:
            name = e.metric.removesuffix("_total")
            labels = {k for k, _ in e.labels} | (own - e.lacks)
            out[name] = ("counter", out.get(name, ("counter", set()))[1] | labels)
    server = p.server
    for metric in (server.prompt_tokens, server.generation_tokens):
        if metric is not None:
            out[metric.removesuffix("_total")] = ("counter", own)
    for metric in (server.running, server.waiting, server.kv_cache_usage):
        if metric is not None:
            out[metric] = ("gauge", own)
    return out


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_are_exactly_the_presets_families_labels_and_buckets(preset_run: PresetRun) -> None:
    p = PRESETS[preset_run.preset]
    fams = _families(preset_run.after)
    found = {name: (f.type, {k for s in f.samples for k in s.labels} - {"le"}) for name, f in fams.items()}
    assert found == _expected_families(preset_run.preset)
    for h in p.histograms.values():
        les = [s.labels["le"] for s in fams[h.metric].samples if s.name == f"{h.metric}_bucket"]
        assert [float(le) for le in les] == [*h.buckets, math.inf], h.metric
    # Names as each server prints them: vLLM's and SGLang's counters end in _total, TGI's and Triton's do not.
    assert p.outcomes is not None
    for metric in {e.metric for series in p.outcomes.examples.values() for e in series}:
        assert f"\n# TYPE {metric} counter\n" in preset_run.after, metric
        assert re.search(rf"^{re.escape(metric)}[{{ ]", preset_run.after, re.M), metric
    if preset_run.preset == "triton":  # prometheus-cpp prints whole-millisecond bounds without ".0"
        assert 'le="100"' in preset_run.after and 'le="100.0"' not in preset_run.after


def _counter_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(f.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) if f.type == "counter" for s in f.samples}


def test_each_outcome_moves_the_series_its_server_moves(preset_run: PresetRun) -> None:
    """One request of each outcome moves exactly the series the preset's examples name, by their per-request
    amount (TGI's double count, vLLM's echoed 500 included), and no other request counter."""
    p = PRESETS[preset_run.preset]
    assert p.outcomes is not None
    own = {p.model_label: PRESET_MODEL} if p.model_label else {}
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for outcome, n in ONE_OF_EACH.items():
        for e in p.outcomes.examples.get(outcome, ()):
            labels = {**{k: v for k, v in own.items() if k not in e.lacks}, **dict(e.labels)}
            key = (e.metric.removesuffix("_total"), tuple(sorted(labels.items())))
            expected[key] = expected.get(key, 0.0) + n * e.per_request
    tokens = {m.removesuffix("_total") for m in (p.server.prompt_tokens, p.server.generation_tokens) if m}
    before, after = _counter_values(preset_run.before), _counter_values(preset_run.after)
    moved = {key: value - before.get(key, 0.0) for key, value in after.items()
             if key[0] not in tokens and value != before.get(key, 0.0)}
    assert moved == expected


def test_latency_histograms_count_what_their_servers_count(preset_run: PresetRun) -> None:
    """The three served requests (3 tokens each, one after a 1 s prefill) are in every per-request histogram;
    the failed, shed, cancelled and invalid ones got no token and are in none."""
    p = PRESETS[preset_run.preset]
    fams = _families(preset_run.after)

    def count(alias: str) -> float:
        metric = p.histograms[alias].metric
        return sum(s.value for s in fams[metric].samples if s.name == f"{metric}_count")

    per_token = {"itl": 2.0}  # two gaps after the first of three tokens
    for alias in p.histograms:
        assert count(alias) == per_token.get(alias, 1.0) * ONE_OF_EACH["served"], alias
    if preset_run.preset == "triton":  # whole milliseconds: the held request waited at least 1000 ms
        total = sum(s.value for s in fams["nv_inference_first_response_histogram_ms"].samples
                    if s.name == "nv_inference_first_response_histogram_ms_sum")
        assert total.is_integer() and total >= 1000 + 2 * 10, total


@pytest.mark.parametrize("preset", SIM_PRESETS)
def test_answers_agree_with_the_status_labels_of_the_presets_examples(preset: str) -> None:
    """Where a preset's examples carry an HTTP status (vLLM's classes, SGLang's exact codes), the status the
    simulator answers is that one."""
    outcomes = PRESETS[preset].outcomes
    assert outcomes is not None
    answers = ANSWERS[preset]
    for outcome, status in (("server_error", answers.server_error), ("shed", answers.shed), ("served", 200)):
        for e in outcomes.examples[outcome]:
            for label, value in e.labels:
                if label in ("status", "status_code"):
                    assert value in (str(status), f"{status // 100}xx"), (preset, outcome, e.metric, value)


def _histogram_of(fams: dict[str, Any], metric: str) -> tuple[float, float, dict[str, float]]:
    samples = fams[metric].samples
    total = sum(s.value for s in samples if s.name == f"{metric}_sum")
    n = sum(s.value for s in samples if s.name == f"{metric}_count")
    return total, n, {s.labels["le"]: s.value for s in samples if s.name == f"{metric}_bucket"}


@pytest.mark.parametrize("preset", ["vllm", "sglang"])
def test_itl_is_per_token_and_tpot_per_request(preset: str) -> None:
    """Nine tokens in chunks of 4, 4 and 1, 20 ms apart: ITL has five values of about 20 ms per request (a
    chunk of k tokens is k gaps of gap / k, never zero gaps), TPOT one per request, (last - first) / 8. A
    one-token answer is a TPOT of 0 for vLLM and nothing for SGLang, as each server records it."""
    config = parse_sim_config({"models": [_model("m", prefill_base_s=0.005, itl_s=0.02, tokens_per_chunk=4,
                                                 output_tokens={"distribution": "fixed", "value": 9})]})

    async def go() -> str:
        async with SimServer(config, preset=preset) as server:
            for _ in range(2):
                result = await _stream(f"{server.url}/v1/completions", {"model": "m", "prompt": "x"})
                assert result["clean"] and len(result["times"]) == 3
            async with aiohttp.ClientSession() as session:
                one = {"model": "m", "prompt": "x", "max_tokens": 1}
                async with session.post(f"{server.url}/v1/completions", json=one) as r:
                    assert r.status == 200
                async with session.get(f"{server.url}/metrics") as m:
                    return await m.text()

    fams = _families(_run(go()))
    p = PRESETS[preset]
    itl_sum, itl_n, itl_buckets = _histogram_of(fams, p.histograms["itl"].metric)
    # Zero gaps would put 6 values (3 per request) in the lowest bucket; a late chunk on a busy machine may
    # be followed by one sent at once (the simulator keeps its schedule), so allow a couple.
    assert itl_n == 10 and itl_buckets[_go_le(p.histograms["itl"].buckets[0])] <= 2, itl_buckets
    assert 0.019 <= itl_sum / itl_n <= 0.02 + SLACK / 5, itl_sum / itl_n
    tpot_sum, tpot_n, tpot_buckets = _histogram_of(fams, p.histograms["tpot"].metric)
    one_token = 1 if preset == "vllm" else 0
    assert tpot_n == 2 + one_token
    assert tpot_buckets[_go_le(p.histograms["tpot"].buckets[0])] == one_token
    assert 5 * 0.02 / 8 - EARLY <= tpot_sum / 2 <= 5 * 0.02 / 8 + SLACK / 5, tpot_sum


def _go_le(bound: float) -> str:
    return repr(float(bound))


def test_sglang_counts_each_route_as_its_endpoint_and_a_stream_left_as_a_200() -> None:
    """SGLang's HTTP counter keys the exact route; a streaming client that leaves had its 200 already, so it
    counts as answered (beside SGLang's own abort counter)."""
    config = parse_sim_config({"models": [_model("m", prefill_base_s=0.005, itl_s=0.01)]})

    async def go() -> str:
        async with SimServer(config, preset="sglang") as server, aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "x"}) as r:
                assert r.status == 200
            body = {"model": "m", "prompt": "x", "max_tokens": 400}
            assert len((await _stream(f"{server.url}/v1/completions", body, read_tokens=2))["times"]) == 2
            for _ in range(100):
                if not server.engines["m"].running:
                    break
                await asyncio.sleep(0.05)
            async with session.get(f"{server.url}/metrics") as m:
                return await m.text()

    counters = _counter_values(_run(go()))
    ok = ("sglang:http_responses", (("endpoint", "/v1/completions"), ("method", "POST"), ("status_code", "200")))
    assert counters[ok] == 2
    assert counters[("sglang:num_aborted_requests", (("model_name", "m"),))] == 1
    assert counters[("sglang:num_requests", (("model_name", "m"),))] == 1


def test_the_preset_flag_wins_over_the_config_and_a_bad_one_exits_2(tmp_path: Path) -> None:
    config = _write(tmp_path, "preset: sglang\n")
    with SimProcess(config) as sim:
        assert "sglang:time_to_first_token_seconds_bucket" in _get(f"{sim.url}/metrics").text
    with SimProcess(config, preset="tgi") as sim:
        text = _get(f"{sim.url}/metrics").text
        assert "tgi_request_duration_bucket" in text and "sglang:" not in text
    proc = subprocess.run([sys.executable, "-m", "forge_slo.sim", "--port", "0", "--preset", "lmdeploy"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2 and "--preset" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# Timing


def test_fixed_ttft_is_what_the_config_says(sim: SimProcess) -> None:
    async def three() -> list[dict[str, Any]]:
        return [
            await _stream(f"{sim.base_url}/completions", {"model": "fixed", "prompt": "x", "max_tokens": 5})
            for _ in range(3)
        ]

    results = _run(three())
    ttft = sorted(r["ttft"] for r in results)[1]
    # Never earlier than configured; later only by scheduling delay (room for a machine busy with other work).
    assert 0.1 - EARLY <= ttft <= 0.1 + SLACK, ttft
    # The 5th token follows 4 gaps of 10 ms: never before 140 ms (the client cannot read what was not sent). Its
    # own gaps are not a measure: a client delayed by other work reads several tokens at once.
    last = [r["times"][-1] for r in results]
    assert all(len(r["times"]) == 5 for r in results), results
    assert min(last) >= 0.14 - EARLY and sorted(last)[1] <= 0.14 + SLACK, last


def test_second_request_waits_for_the_first_when_one_sequence_fits(sim: SimProcess) -> None:
    body = {"model": "serial", "prompt": "x", "max_tokens": 10}  # 0.05 s prefill + 9 * 0.01 s decode

    async def two() -> list[dict[str, Any]]:
        first = asyncio.create_task(_stream(f"{sim.base_url}/completions", body))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(_stream(f"{sim.base_url}/completions", body))
        return [await first, await second]

    first, second = _run(two())
    assert 0.05 - EARLY <= first["ttft"] <= 0.05 + SLACK, first["ttft"]
    # In order: the second request's first token comes after the first request's last one plus its own 0.05 s
    # prefill (one sequence fits). Clock readings on one machine: a busy machine only widens the gap.
    first_done = first["sent"] + first["times"][-1]
    second_first_token = second["sent"] + second["ttft"]
    assert second_first_token >= first_done + 0.05 - EARLY, (first_done, second_first_token)
    fams = _metrics(sim)
    assert (
        _sample(
            fams,
            "vllm:request_queue_time_seconds",
            "vllm:request_queue_time_seconds_sum",
            model_name="serial",
        )
        >= 0.1
    )


# ---------------------------------------------------------------------------------------------------------
# Faults


def _add_fault(
    sim: SimProcess, fault: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{sim.url}/admin/faults", json=fault, headers=AUTH if headers is None else headers, timeout=10
    )


def test_admin_api_requires_the_token(sim: SimProcess) -> None:
    assert httpx.get(f"{sim.url}/admin/faults", timeout=10).status_code == 401
    bad = httpx.get(f"{sim.url}/admin/faults", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
    assert _add_fault(sim, {"kind": "outage", "model": "chaos"}, headers={}).status_code == 401
    assert httpx.get(f"{sim.url}/admin/faults", headers=AUTH, timeout=10).json() == {"faults": []}


@pytest.mark.parametrize(
    ("fault", "param"),
    [
        ({"kind": "earthquake"}, "kind"),
        ({}, "kind"),
        ({"kind": "latency", "ttft_multiplier": "x"}, "ttft_multiplier"),
        ({"kind": "errors", "rate": 1.5}, "rate"),
        ({"kind": "errors", "mode": "teapot"}, "mode"),
        ({"kind": "latency", "model": "nope"}, "model"),
        ({"kind": "latency", "duration_s": -1}, "duration_s"),
        ({"kind": "stall"}, "stall_s"),
        ({"kind": "outage", "ttft_multiplier": 2}, "ttft_multiplier"),
        ({"kind": "latency", "ttft_add_s": 1e308}, "ttft_add_s"),
        ({"kind": "latency", "itl_multiplier": 10**400}, "itl_multiplier"),
        ({"kind": "stall", "stall_s": 1e9}, "stall_s"),
        ({"kind": "outage", "duration_s": 1e12}, "duration_s"),
    ],
)
def test_bad_faults_get_400_naming_the_field(sim: SimProcess, fault: dict[str, Any], param: str) -> None:
    r = _add_fault(sim, fault)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert param in r.json()["error"]["message"]


def test_latency_fault_raises_ttft_until_deleted(sim: SimProcess) -> None:
    body = {"model": "chaos", "prompt": "x", "max_tokens": 2}
    before = _run(_stream(f"{sim.base_url}/completions", body))["ttft"]
    r = _add_fault(sim, {"kind": "latency", "model": "chaos", "ttft_add_s": 0.2, "id": "slow-chaos"})
    assert r.status_code == 201 and r.json()["id"] == "slow-chaos"
    listed = httpx.get(f"{sim.url}/admin/faults", headers=AUTH, timeout=10).json()["faults"]
    assert [f["id"] for f in listed] == ["slow-chaos"] and listed[0]["remaining_s"] is None
    assert _add_fault(sim, {"kind": "latency", "id": "slow-chaos"}).status_code == 409
    try:
        during = _run(_stream(f"{sim.base_url}/completions", body))["ttft"]
    finally:
        assert httpx.delete(f"{sim.url}/admin/faults/slow-chaos", headers=AUTH, timeout=10).status_code == 200
    after = _run(_stream(f"{sim.base_url}/completions", body))["ttft"]
    # The chaos model's TTFT is 5 ms: with the fault a request can never be faster than 205 ms, without it it
    # can (a busy machine delays requests, so no sample is compared with another: before is only context).
    faulted = 0.005 + 0.2 - EARLY
    assert during >= faulted and after < faulted, (before, during, after)
    assert httpx.delete(f"{sim.url}/admin/faults/slow-chaos", headers=AUTH, timeout=10).status_code == 404


def _5xx(sim: SimProcess) -> float:
    return _sample(_metrics(sim), "http_requests", "http_requests_total", status="5xx")


def test_http_500_fault_counts_an_error_finish_and_its_500(sim: SimProcess) -> None:
    """As vLLM: a request failed by the server is finished_reason="error" (what the SLI reads) and, answered
    500, also an HTTP 5xx (an echo the SLI leaves alone)."""
    errors_before = _5xx(sim)
    finished_before = _finished(sim, "chaos", "error")
    r = _add_fault(sim, {"kind": "errors", "rate": 1.0, "model": "chaos"})
    try:
        with openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client:
            for _ in range(2):
                with pytest.raises(openai.InternalServerError) as info:
                    client.chat.completions.create(model="chaos", messages=[{"role": "user", "content": "x"}])
                assert info.value.status_code == 500
            ok = client.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "x"}], max_tokens=1
            )  # the fault is scoped to one model
            assert ok.choices[0].message.content == " tok"
    finally:
        httpx.delete(f"{sim.url}/admin/faults/{r.json()['id']}", headers=AUTH, timeout=10)
    assert _5xx(sim) == errors_before + 2
    assert _finished(sim, "chaos", "error") == finished_before + 2


def test_abort_stream_fault_cuts_streams_and_counts_a_server_error(sim: SimProcess) -> None:
    errors = _finished(sim, "chaos", "error")
    errors_before = _5xx(sim)
    r = _add_fault(
        sim,
        {
            "kind": "errors",
            "mode": "abort_stream",
            "rate": 1.0,
            "abort_after_tokens": 3,
            "model": "chaos",
            "duration_s": 30,
        },
    )
    fault_id = r.json()["id"]
    try:
        result = _run(
            _stream(
                f"{sim.base_url}/chat/completions",
                {"model": "chaos", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10},
            )
        )
        with (
            openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client,
            pytest.raises((openai.APIError, httpx.HTTPError)),
        ):
            list(client.completions.create(model="chaos", prompt="x", max_tokens=10, stream=True))
        # A full (non-streaming) answer cannot be cut in half: the connection closes with no answer.
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(
                f"{sim.base_url}/completions",
                json={"model": "chaos", "prompt": "x", "max_tokens": 4},
                timeout=10,
            )
    finally:
        httpx.delete(f"{sim.url}/admin/faults/{fault_id}", headers=AUTH, timeout=10)
    assert len(result["times"]) == 3 and not result["clean"] and result["error"] is not None
    _wait_for(lambda: _finished(sim, "chaos", "error") >= errors + 3)
    assert _5xx(sim) == errors_before  # the cut streams had answered 200; the full answer got none


def test_stall_fault_pauses_the_stream(sim: SimProcess) -> None:
    r = _add_fault(sim, {"kind": "stall", "model": "chaos", "stall_s": 0.25, "at_token": 2})
    try:
        result = _run(
            _stream(f"{sim.base_url}/completions", {"model": "chaos", "prompt": "x", "max_tokens": 4})
        )
    finally:
        httpx.delete(f"{sim.url}/admin/faults/{r.json()['id']}", headers=AUTH, timeout=10)
    t = result["times"]
    # The stall sits between tokens 2 and 3 (not before the first gap), and lasts at least 0.25 s.
    assert len(t) == 4 and t[2] - t[1] >= 0.25 - EARLY and t[2] - t[1] > t[1] - t[0], t


def test_client_disconnect_is_counted_as_vllm_counts_it(sim: SimProcess) -> None:
    """vLLM counts a client that hangs up in no vllm:* counter (only as an HTTP 200): no finish reason moves."""
    finished = sum(_finished(sim, "chaos", reason) for reason in ("stop", "length", "error"))
    answered = _sample(_metrics(sim), "http_requests", "http_requests_total", status="2xx")
    result = _run(
        _stream(
            f"{sim.base_url}/completions", {"model": "chaos", "prompt": "x", "max_tokens": 400}, read_tokens=2
        )
    )
    assert len(result["times"]) == 2
    _wait_for(lambda: _sample(_metrics(sim), "http_requests", "http_requests_total", status="2xx") >= answered + 1)
    assert sum(_finished(sim, "chaos", reason) for reason in ("stop", "length", "error")) == finished
    running = _sample(
        _metrics(sim), "vllm:num_requests_running", "vllm:num_requests_running", model_name="chaos"
    )
    assert running == 0


def test_outage_fails_requests_turns_health_503_and_ends_by_itself() -> None:
    # This server takes its admin token from the environment.
    env = {**__import__("os").environ, "FORGE_SLO_SIM_ADMIN_TOKEN": "envtok"}
    with SimProcess(env=env) as sim:
        headers = {"Authorization": "Bearer envtok"}
        assert _get(f"{sim.url}/health").status_code == 200
        with openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client:
            client.completions.create(model="sim-llama", prompt="x", max_tokens=2)
            assert _add_fault(sim, {"kind": "outage"}).status_code == 401
            r = _add_fault(sim, {"kind": "outage", "duration_s": 1.0}, headers=headers)
            assert r.status_code == 201 and 0 < r.json()["remaining_s"] <= 1.0
            for _ in range(3):
                with pytest.raises(openai.InternalServerError):
                    client.completions.create(model="sim-llama", prompt="x", max_tokens=2)
            assert _get(f"{sim.url}/health").status_code == 503
            fams = _metrics(sim)
            assert _sample(fams, "http_requests", "http_requests_total", status="5xx") == 3
            # The engine failed them: finished with "error", once each, beside the one answered request.
            assert _sample(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="error") == 3
            assert _sample(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="length") == 1
            _wait_for(lambda: _get(f"{sim.url}/health").status_code == 200, timeout=3)
            assert httpx.get(f"{sim.url}/admin/faults", headers=headers, timeout=10).json() == {"faults": []}
            r2 = client.completions.create(model="sim-llama", prompt="x", max_tokens=2)
            assert r2.choices[0].text == " tok tok"
    assert sim.returncode == 0  # SIGTERM is a clean stop
    assert "first-token scheduling lag" in sim.log_text()


def test_port_in_use_exits_1(sim: SimProcess) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "forge_slo.sim", "--port", str(sim.port)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{sim.port}" in proc.stderr and "Traceback" not in proc.stderr


def test_gauges_follow_running_requests_and_kv_cache() -> None:
    config = parse_sim_config(
        {
            "models": [
                _model("m", prefill_base_s=0.01, itl_s=0.02, max_num_seqs=1, kv_cache_tokens=100),
            ]
        }
    )

    async def go() -> tuple[dict[str, float], dict[str, float]]:
        async with SimServer(config) as server, aiohttp.ClientSession() as session:
            body = {"model": "m", "prompt": "x" * 160, "max_tokens": 20, "stream": True}  # 40 prompt tokens
            resp = await session.post(f"{server.url}/v1/completions", json=body)
            other = asyncio.create_task(session.post(f"{server.url}/v1/completions", json=body))
            await resp.content.readline()
            await asyncio.sleep(0.1)
            async with session.get(f"{server.url}/metrics") as m:
                fams = {f.name: f for f in text_string_to_metric_families(await m.text())}
            during = {
                n: fams[n].samples[0].value
                for n in (
                    "vllm:num_requests_running",
                    "vllm:num_requests_waiting",
                    "vllm:kv_cache_usage_perc",
                )
            }
            await resp.read()
            resp.release()
            second = await other
            await second.read()
            second.release()
            async with session.get(f"{server.url}/metrics") as m:
                fams = {f.name: f for f in text_string_to_metric_families(await m.text())}
            after = {n: fams[n].samples[0].value for n in during}
            return during, after

    during, after = _run(go())
    assert during["vllm:num_requests_running"] == 1 and during["vllm:num_requests_waiting"] == 1
    assert 0.42 <= during["vllm:kv_cache_usage_perc"] <= 0.5  # 40 prompt + a few generated of 100
    assert after == dict.fromkeys(after, 0.0)


def test_tracing_exporters_start_and_stop() -> None:
    from forge_slo.sim.config import TracingConfig
    from forge_slo.sim.tracing import Tracing

    for cfg in (TracingConfig("console"), TracingConfig("otlp", "http://127.0.0.1:9/v1/traces")):
        tracing = Tracing(cfg, 0.0)
        assert tracing.enabled
        tracing.shutdown()
    off = Tracing(TracingConfig(), 0.0)
    assert not off.enabled and off.extract({"traceparent": "x"}) is None


# ---------------------------------------------------------------------------------------------------------
# Tracing (in-process, with an in-memory exporter)


def test_spans_follow_the_incoming_traceparent() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    config = parse_sim_config({"models": [_model("m", prefill_base_s=0.01, itl_s=0.002)]})
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    async def go() -> None:
        async with SimServer(config, span_exporter=exporter) as server, aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{server.url}/v1/completions",
                json={"model": "m", "prompt": "hi", "max_tokens": 3},
                headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            )
            assert resp.status == 200
            await resp.read()
            resp.release()

    _run(go())
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /v1/completions", "queued", "prefill", "decode"}
    root = spans["POST /v1/completions"]
    assert format(root.context.trace_id, "032x") == trace_id
    assert root.parent is not None and format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert root.attributes["gen_ai.usage.output_tokens"] == 3
    assert root.attributes["gen_ai.response.finish_reasons"] == ("length",)
    for child in ("queued", "prefill", "decode"):
        assert spans[child].parent.span_id == root.context.span_id
    assert spans["prefill"].end_time - spans["prefill"].start_time >= 9_000_000


# ---------------------------------------------------------------------------------------------------------
# Config


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sim.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_config_file_loads_with_models_faults_and_tracing(tmp_path: Path) -> None:
    cfg = load_sim_config(
        _write(
            tmp_path,
            """\
seed: 3
models:
  - name: small
    itl_s: 0.01
    itl_distribution: lognormal
    output_tokens: {distribution: uniform, min: 4, max: 9}
  - name: big
    max_num_seqs: 8
faults:
  - {kind: latency, model: big, ttft_multiplier: 2, duration_s: 60}
tracing:
  exporter: off
""",
        )
    )
    assert [m.name for m in cfg.models] == ["small", "big"]
    assert cfg.models[0].output_tokens == OutputTokens("uniform", 4, 9)
    assert cfg.faults[0].model == "big" and cfg.tracing.exporter == "off"


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("models:\n  - name: a\n    itl_sec: 0.1\n", 3, "models[0].itl_sec", "did you mean 'itl_s'"),
        ("models:\n  - name: a\n    max_num_seqs: lots\n", 3, "models[0].max_num_seqs", "integer"),
        ("models:\n  - name: a\n    max_num_seqs: true\n", 3, "models[0].max_num_seqs", "integer"),
        ("models:\n  - name: a\n  - name: a\n", 3, "models[1].name", "duplicate"),
        ("seed: 1\nfaults:\n  - kind: errors\n    rate: 2\n", 4, "faults[0].rate", "between 0 and 1"),
        ("faults:\n  - kind: latency\n    model: ghost\n", 3, "faults[0].model", "unknown model"),
        ("tracing:\n  exporter: jaeger\n", 2, "tracing.exporter", "one of"),
        ("models: {name: a}\n", 1, "models", "list"),
        ("seed: 1\npreset: lmdeploy\n", 2, "preset", "one of vllm, sglang, tgi, triton"),
        ("models:\n  - name: a\n    max_queued_requests: -1\n", 3, "models[0].max_queued_requests", "between 0"),
        (
            "models:\n  - name: a\n    output_tokens: {distribution: uniform, min: 9, max: 2}\n",
            3,
            "models[0].output_tokens.max",
            ">= min",
        ),
    ],
)
def test_bad_config_names_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, words: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_sim_config(path)
    err = info.value
    assert (err.file, err.line, err.field) == (path, line, field)
    assert words in err.reason


def test_invalid_yaml_is_a_spec_error_with_a_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_sim_config(_write(tmp_path, "models:\n  - name: [a\n"))
    assert info.value.line is not None and "invalid YAML" in info.value.reason


def test_bad_config_file_exits_2_without_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:\n  - name: a\n    prefill_base_s: fast\n")
    proc = subprocess.run(
        [sys.executable, "-m", "forge_slo.sim", "--port", "0", "--config", path],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert f"{path}:3: models[0].prefill_base_s: must be a number" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def _alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes whose aliases expand to 9**levels values (a "billion laughs")."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("data", "line", "field", "words"),
    [
        (b"seed: 1\nseed: 2\n", 2, "seed", "duplicate key"),
        (b"seed: " + b"9" * 401 + b"\n", 1, "seed", "too large"),
        (b"faults:\n  - kind: latency\n    ttft_add_s: 1.0e+308\n", 3, "faults[0].ttft_add_s", "between 0 and 3600"),
        (b"faults:\n  - {kind: stall, stall_s: 100000}\n", 2, "faults[0].stall_s", "above 0 and at most 3600"),
        (b"faults:\n  - {kind: errors, duration_s: 1.0e+12}\n", 2, "faults[0].duration_s", "at most 86400"),
        (b"models:\n  - name: m\n    batch_slowdown: 1.0e+300\n", 3, "models[0].batch_slowdown", "between 0 and 1000"),
        (b"models:\n  - name: m\n    max_num_seqs: 100000000\n", 3, "models[0].max_num_seqs",
         "between 1 and 65536"),
        (b"models: &m [*m]\n", 1, "models[0]", "recursive alias"),
        (b"models: " + b"[" * 600 + b"]" * 600 + b"\n", 1, "", "nest deeper than 64 levels"),
        (b"models:\n  - name: caf\xe9\n", 2, "", "not UTF-8 text"),
        (b"models:\n  - name: a\x00b\n", 2, "", "a NUL byte"),
    ],
)
def test_hostile_config_file_is_refused_with_its_line(
    tmp_path: Path, data: bytes, line: int, field: str, words: str
) -> None:
    path = tmp_path / "sim.yaml"
    path.write_bytes(data)
    with pytest.raises(SpecError) as info:
        load_sim_config(str(path))
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), line, field), err
    assert words in err.reason


def test_config_alias_bomb_exits_2_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, _alias_bomb())
    proc = subprocess.run(
        [sys.executable, "-m", "forge_slo.sim", "--port", "0", "--config", path],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert f"{path}:5: l4[0]: aliases expand to more than" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "latency", "ttft_add_s": 1e308},
        {"kind": "latency", "itl_multiplier": -1},
        {"kind": "errors", "rate": 1.5},
        {"kind": "errors", "abort_after_tokens": 3},
        {"kind": "stall", "at_token": 2.5, "stall_s": 1},
        {"kind": "outage", "id": "no spaces"},
        {"kind": "quake"},
    ],
)
def test_a_fault_fails_the_same_in_a_file_and_in_the_api(tmp_path: Path, fault: dict[str, Any]) -> None:
    from forge_slo.sim.config import ConfigFieldError, parse_fault

    with pytest.raises(ConfigFieldError) as api:
        parse_fault(fault)
    with pytest.raises(SpecError) as file:
        load_sim_config(_write(tmp_path, yaml.safe_dump({"faults": [fault]}, default_flow_style=True)))
    assert file.value.reason == api.value.reason
    assert file.value.field == f"faults[0].{api.value.field}" and file.value.line == 1


def test_plain_data_with_shared_or_cyclic_values_is_a_field_error() -> None:
    from forge_slo.sim.config import ConfigFieldError, parse_fault

    bomb: list[Any] = ["lol"] * 9
    for _ in range(9):  # the same list nine times at each level: 9**10 values if walked naively
        bomb = [bomb] * 9
    cyclic: dict[str, Any] = {"kind": "outage"}
    cyclic["id"] = [cyclic]
    with pytest.raises(ConfigFieldError, match="shared values expand to more than"):
        parse_fault({"kind": "outage", "id": bomb})
    with pytest.raises(ConfigFieldError, match="the value contains itself"):
        parse_fault(cyclic)
    with pytest.raises(ConfigFieldError, match="the value contains itself"):
        parse_sim_config({"models": [cyclic]})


def test_itl_samples_are_seeded_and_keep_their_mean() -> None:
    def samples(dist: str) -> list[float]:
        cfg = ModelConfig(name="m", itl_s=0.02, itl_distribution=dist, itl_stddev_s=0.005)  # type: ignore[arg-type]
        loop = asyncio.new_event_loop()
        try:
            engine = ModelEngine(cfg, 11, loop, LagStats(), TokenClock(loop))
            return [engine.sample_itl() for _ in range(4000)]
        finally:
            loop.close()

    for dist in ("normal", "lognormal"):
        a, b = samples(dist), samples(dist)
        assert a == b
        mean = sum(a) / len(a)
        sd = math.sqrt(sum((x - mean) ** 2 for x in a) / len(a))
        assert abs(mean - 0.02) < 0.001 and abs(sd - 0.005) < 0.001, (dist, mean, sd)
    assert set(samples("fixed")) == {0.02}
    loop = asyncio.new_event_loop()
    try:
        cfg = ModelConfig(name="m", itl_s=0.02, itl_distribution="fixed", batch_slowdown=0.5, max_num_seqs=10)
        engine = ModelEngine(cfg, 0, loop, LagStats(), TokenClock(loop))
        engine.running = 10  # a full batch decodes slower
        assert engine.sample_itl() == pytest.approx(0.03)
    finally:
        loop.close()


def test_outage_cuts_running_streams() -> None:
    config = parse_sim_config({"models": [_model("m", prefill_base_s=0.01, itl_s=0.01)]})

    async def go() -> tuple[dict[str, Any], int, float]:
        async with SimServer(config) as server, aiohttp.ClientSession() as session:
            url = f"{server.url}/v1/completions"
            running = asyncio.create_task(_stream(url, {"model": "m", "prompt": "x", "max_tokens": 500}))
            await asyncio.sleep(0.2)
            async with session.post(f"{server.url}/admin/faults", json={"kind": "outage"}) as r:
                assert r.status == 201
            result = await running
            async with session.get(f"{server.url}/health") as h:
                health = h.status
            async with session.get(f"{server.url}/metrics") as m:
                fams = {f.name: f for f in text_string_to_metric_families(await m.text())}
            errors = _sample(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="error")
            return result, health, errors

    result, health, errors = _run(go())
    assert 5 <= len(result["times"]) < 500 and not result["clean"] and result["error"] is not None
    assert health == 503 and errors == 1  # the cut stream is a request the server failed


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize(("n", "per_chunk"), [(1, 1), (2, 1), (7, 1), (7, 3), (2, 3)])
@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_frames_are_openai_chunks(kind: str, n: int, per_chunk: int, include_usage: bool) -> None:
    from forge_slo.sim.wire import Identity, stream_frames

    ident = Identity(kind, "cmpl-1", 1700000000, 'm"odel')  # type: ignore[arg-type]
    first, mid, last = stream_frames(ident, " tok", per_chunk, n, "length", 11, include_usage)
    chunks = n // per_chunk + (1 if n % per_chunk else 0)
    body = first if chunks == 1 else first + mid * (chunks - 2) + last
    events: list[bytes] = []
    while body:
        size, _, rest = body.partition(b"\r\n")
        length = int(size, 16)
        assert rest[length : length + 2] == b"\r\n"
        events += [e for e in rest[:length].split(b"\n\n") if e]
        body = rest[length + 2 :]
    assert events[-1] == b"data: [DONE]"
    parsed = [json.loads(e[6:]) for e in events[:-1]]
    for raw, obj in zip(events, parsed, strict=False):  # compact JSON, keys in OpenAI's order
        assert raw[6:] == json.dumps(obj, separators=(",", ":")).encode()
    obj_name = "chat.completion.chunk" if kind == "chat" else "text_completion"
    assert {(p["id"], p["object"], p["created"], p["model"]) for p in parsed} == {
        ("cmpl-1", obj_name, 1700000000, 'm"odel')
    }
    if include_usage:
        usage_chunk = parsed.pop()
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"] == {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
    final = parsed.pop()["choices"][0]
    assert final["finish_reason"] == "length"
    if kind == "chat":
        assert parsed.pop(0)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        texts = [p["choices"][0]["delta"]["content"] for p in parsed]
        assert final["delta"] == {}
    else:
        texts = [p["choices"][0]["text"] for p in parsed]
        assert final["text"] == ""
    assert "".join(texts) == " tok" * n and len(texts) == chunks
    assert all(p["choices"][0]["finish_reason"] is None for p in parsed)


def test_lag_histogram_quantiles_round_up_to_their_bin() -> None:
    from forge_slo.sim.metrics import LagHistogram

    h = LagHistogram()
    for ms in [0.0] * 98 + [3.0, 250.0]:
        h.record(ms / 1000)
    s = h.summary()
    assert s["count"] == 100 and s["max"] == 0.25
    assert s["p50"] == pytest.approx(0.00005)  # upper edge of the bin holding 0
    assert s["p99"] == pytest.approx(0.00305)
    assert s["p999"] == pytest.approx(0.1)  # beyond the last bin: its edge, and max tells the rest
    empty = LagHistogram().summary()
    assert empty["count"] == 0 and empty["p99"] == 0.0


# ---------------------------------------------------------------------------------------------------------
# The server's edges: context length, hostile bodies and headers, exposure, slow clients, shutdown


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to 127.0.0.1:port; everything the server answers before it closes the connection."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_prompt_over_max_model_len_is_400_with_or_without_max_tokens(sim: SimProcess) -> None:
    """As vLLM: a 1 MB prompt is refused at once, naming both lengths, not served for its whole length."""
    prompt = "x" * 1_000_000  # 250000 tokens by the simulator's estimate, + 3 for the chat message
    cases = [
        ("/v1/chat/completions", {"model": "fast", "messages": [{"role": "user", "content": prompt}]}, 250003),
        ("/v1/completions", {"model": "fast", "prompt": prompt}, 250000),
        ("/v1/completions", {"model": "fast", "prompt": list(range(32768))}, 32768),
        ("/v1/completions", {"model": "fast", "prompt": prompt, "max_tokens": 5}, 250000),
    ]
    for path, body, prompt_tokens in cases:
        r = httpx.post(f"{sim.url}{path}", json=body, timeout=30)
        assert r.status_code == 400, (path, r.text[:200])
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded"
        assert "maximum context length is 32768 tokens" in err["message"]
        assert str(prompt_tokens) in err["message"]
    # One token short of the context fits: without max_tokens the answer stops at the context's end.
    r = httpx.post(f"{sim.url}/v1/completions", json={"model": "fast", "prompt": list(range(32767))}, timeout=30)
    assert r.status_code == 200, r.text[:200]
    assert r.json()["usage"]["completion_tokens"] == 1 and r.json()["choices"][0]["finish_reason"] == "length"


def test_deeply_nested_json_is_400_not_500(sim: SimProcess) -> None:
    nested = b'{"model": "fast", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for path, headers in (("/v1/chat/completions", {}), ("/v1/completions", {}), ("/admin/faults", AUTH)):
        r = httpx.post(f"{sim.url}{path}", content=nested, timeout=30,
                       headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 400, (path, r.text[:200])
        assert r.json()["error"]["code"] == "invalid_json" and "nested too deeply" in r.json()["error"]["message"]
    assert httpx.get(f"{sim.url}/health", timeout=10).status_code == 200


def test_admin_token_check_is_total_over_any_header(sim: SimProcess) -> None:
    """Header bytes that are not UTF-8, non-ASCII, empty or huge: a 401, never a 500."""
    for header in (b"Bearer \xff\xfe", b"Bearer s3cr\xc3\xa9t", b"", b"Bearer", b"Bearer " + b"x" * 8000,
                   b"Basic s3cret"):
        answer = _raw(sim.port, b"GET /admin/faults HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                b"Authorization: " + header + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401"), (header[:40], answer[:300])
    assert httpx.get(f"{sim.url}/admin/faults", headers={"Authorization": f"bearer  {TOKEN}"},
                     timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--host", "0.0.0.0"], None, "--admin-token TOKEN"),
        (["--admin-token", " "], None, "--admin-token: the token is empty or only whitespace"),
        (["--admin-token", "tab\there"], None, "--admin-token: the token holds whitespace"),
        ([], "admin_token: 'sécret'\n", "admin_token: the token holds the character 'é'"),
    ],
)
def test_the_fault_api_needs_a_usable_token_beyond_loopback(
    tmp_path: Path, args: list[str], config: str | None, message: str
) -> None:
    """/admin/faults changes what every client gets: on 0.0.0.0 without a token it is refused (exit 2)."""
    if config is not None:
        args = [*args, "--config", _write(tmp_path, config)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge_slo.sim", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, stdin=subprocess.DEVNULL,
    )
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:  # it started serving instead of refusing
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err
    assert message in err and "Traceback" not in err
    if "--host" in args:
        assert "--host 127.0.0.1" in err


def _start_sim(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge_slo.sim", "--port", "0", "--ready-file", str(ready), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=ROOT,
    )
    _wait_for(lambda: ready.exists() or proc.poll() is not None, timeout=20)
    assert proc.poll() is None, "the simulator did not start"
    return proc, int(json.loads(ready.read_text())["port"])


def test_a_request_sent_slowly_is_cut_at_the_read_timeout(tmp_path: Path) -> None:
    """Slowloris: headers sent a byte at a time lose the connection; a body that stalls gets 408 and a close."""
    import socket

    proc, port = _start_sim(tmp_path, "--read-timeout", "1s")
    try:
        for partial, drip in (
            (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", b"X"),
            (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", b" "),
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(partial)
                started, answer, closed = time.monotonic(), b"", False
                while time.monotonic() - started < 8 and not closed:
                    try:
                        sock.sendall(drip)
                        sock.settimeout(0.3)
                        chunk = sock.recv(65536)
                        answer += chunk
                        closed = chunk == b""
                    except TimeoutError:
                        continue
                    except OSError:
                        closed = True
                assert closed, f"the connection sending {partial!r} slowly was still open after 8 s"
                if b"Content-Length" in partial:
                    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_sigterm_stops_the_simulator_under_20_streams() -> None:
    """20 clients mid-stream, SIGTERM: exit 0 well within a busy machine's bound, no process left."""
    import http.client
    import os
    import signal
    import threading

    config = {"models": [_model("long", prefill_base_s=0.005, itl_s=0.005, max_num_seqs=64)]}
    body = json.dumps({"model": "long", "max_tokens": 5000, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    with SimProcess(config) as sim:
        stop = threading.Event()
        chunks = [0] * 20

        def client(i: int) -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
                try:
                    conn.request("POST", "/v1/chat/completions", body=body,
                                 headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    while not stop.is_set() and response.read1(65536):
                        chunks[i] += 1
                except (OSError, http.client.HTTPException):
                    time.sleep(0.05)
                finally:
                    conn.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(20)]
        for thread in threads:
            thread.start()
        try:
            _wait_for(lambda: all(chunks), timeout=20)
            assert sim.proc is not None
            proc = sim.proc
            started = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            code = proc.wait(timeout=6)  # the requirement is 2 s; the room is for a loaded CI machine
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
    assert code == 0 and elapsed < 6
    assert "Traceback" not in sim.last_log
    assert not Path(f"/proc/{proc.pid}").exists()


def test_stacked_latency_faults_stay_bounded_and_never_stall_other_models() -> None:
    """110 faults of 1000x each, then one of 0x: the product overflowed to inf (and inf x 0 to NaN), which froze
    the token clock of every model. Stacked faults slow a model at most as much as one fault may."""
    from forge_slo.sim.config import MAX_DELAY_S, MAX_MULTIPLIER

    config = parse_sim_config({"admin_token": TOKEN, "models": [_model("slowed", prefill_base_s=0.001, itl_s=0.001),
                                                               _model("other", prefill_base_s=0.001, itl_s=0.001)]})

    async def go() -> tuple[list[dict[str, Any]], int, str]:
        async with SimServer(config) as server, aiohttp.ClientSession(headers=AUTH) as session:
            faults = [{"kind": "latency", "model": "slowed", "ttft_multiplier": 1000, "itl_multiplier": 1000,
                       "ttft_add_s": MAX_DELAY_S}] * 110
            for fault in [*faults, {"kind": "latency", "model": "slowed", "ttft_multiplier": 0, "itl_multiplier": 0}]:
                async with session.post(f"{server.url}/admin/faults", json=fault) as r:
                    assert r.status == 201, await r.text()
            mods = server.engines["slowed"].mods
            bounds = [{"ttft_multiplier": mods.ttft_multiplier, "ttft_add_s": mods.ttft_add_s}]
            slowed = asyncio.create_task(session.post(f"{server.url}/v1/completions",
                                                      json={"model": "slowed", "prompt": "x", "max_tokens": 2}))
            await asyncio.sleep(0.3)  # the slowed request is queued on its engine
            body = {"model": "other", "prompt": "x", "max_tokens": 2, "stream": True}
            try:
                async with asyncio.timeout(20), session.post(f"{server.url}/v1/completions", json=body) as r:
                    return bounds, r.status, await r.text()
            except TimeoutError:
                return bounds, 0, "no answer within 20 s"
            finally:
                slowed.cancel()

    [bounds], status, text = _run(go())
    assert status == 200 and "[DONE]" in text, text
    assert 0 <= bounds["ttft_multiplier"] <= MAX_MULTIPLIER and 0 <= bounds["ttft_add_s"] <= MAX_DELAY_S


def test_own_session_keeps_a_terminal_ctrl_c_away_from_the_simulator(tmp_path: Path) -> None:
    """own_session: the simulator is outside the caller's process group, so the terminal's SIGINT reaches only
    the caller (which stops it in its own time); its log stays in the caller's file after stop."""
    import os

    log = tmp_path / "sim.log"
    with SimProcess(own_session=True, log_path=log) as alone, SimProcess() as shared:
        assert os.getsid(alone.pid) == alone.pid and os.getpgid(alone.pid) != os.getpgid(0)
        assert os.getpgid(shared.pid) == os.getpgid(0)
        assert _get(f"{alone.url}/health").status_code == 200
    assert alone.returncode == 0 and alone.proc is None
    assert log.read_text() == alone.log_text() and "first-token scheduling lag" in log.read_text()
