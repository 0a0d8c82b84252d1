"""forge-slo load, driven like a user would: real Locust (one process and two workers) against the simulator
on 127.0.0.1, started and stopped by fixtures. Locust monkey-patches the standard library with gevent, so it
runs only in child processes (``python -m forge_slo.load``, ``python -m locust``), never in this one.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from forge_slo.errors import RunnerError, UsageError
from forge_slo.load.judge import Criterion, SpecInfo, good_requests, judge
from forge_slo.load.lifeline import watch
from forge_slo.load.messages import EnginePlan, StageCommand, WorkerReport, WorkerSetup
from forge_slo.load.options import LoadOptions, options_from_namespace
from forge_slo.load.report import render_report
from forge_slo.load.stream import StreamError, StreamMeter, record_json
from forge_slo.load.summary import build_summary
from forge_slo.load.workload import Arrivals, load_dataset, parse_length
from forge_slo.sim import SimProcess
from forge_slo.sources.records import RequestRecord, read_records
from forge_slo.spec.presets import VLLM_TTFT_BUCKETS

ROOT = Path(__file__).resolve().parents[1]
TTFT = 0.05
ITL = 0.01


def _model(name: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": name, "prefill_base_s": TTFT, "prefill_per_token_s": 0.0, "itl_s": ITL,
                            "itl_distribution": "fixed", "itl_stddev_s": 0.0, "batch_slowdown": 0.0,
                            "output_tokens": {"distribution": "fixed", "value": 20}}
    base.update(kw)
    return base


NARROW_SEQS = 2  # "narrow" serves two requests at a time: about 2 / (TTFT + 19 ITL) = 8 requests/s of 20 tokens
SIM_CONFIG = {"seed": 3, "models": [
    _model("fixed"),
    _model("chunky", itl_s=0.02, tokens_per_chunk=4),
    _model("faulty", prefill_base_s=0.01, itl_s=0.005),
    _model("narrow", max_num_seqs=NARROW_SEQS),
]}

SPEC = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: chat
preset: vllm
group_by: [model_name]
slos:
  - {{name: ttft, objective: 95, sli: {{latency: {{metric: ttft, threshold: {ttft}}}}}}}
  - {{name: tpot, objective: 95, sli: {{latency: {{metric: tpot, threshold: 0.05}}}}}}
  - {{name: itl, objective: 95, sli: {{latency: {{metric: itl, threshold: 0.05}}}}}}
  - {{name: e2e, objective: 95, sli: {{latency: {{metric: e2e, threshold: 0.5}}}}}}
  - {{name: availability, objective: 99, sli: {{availability: {{}}}}}}
  - name: gateway
    objective: 99
    sli:
      ratio:
        errors: 'sum(rate(x_total{{code="500"}}[{{{{window}}}}]))'
        total: 'sum(rate(x_total[{{{{window}}}}]))'
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(SIM_CONFIG) as proc:
        yield proc


@pytest.fixture()
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(ttft=0.1), encoding="utf-8")
    return path


def run_load(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forge_slo.load", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def summary_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return data


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


def faults(sim: SimProcess, *bodies: dict[str, Any]) -> None:
    httpx.delete(f"{sim.url}/admin/faults", timeout=10).raise_for_status()
    for body in bodies:
        httpx.post(f"{sim.url}/admin/faults", json=body, timeout=10).raise_for_status()


# ---------------------------------------------------------------------------------------------------------
# Real runs against the simulator


def test_single_process_figures_match_the_simulators_timing(sim: SimProcess, spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_load("--target", sim.base_url, "--model", "fixed", "--concurrency", "4", "--duration", "3s",
                    "--warmup", "0.5s", "--output-tokens", "20", "--spec", str(spec_file), "--out", str(out),
                    "--progress", "plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_clean(proc)
    assert "verdict: PASS" in proc.stdout
    s = summary_of(out)
    (stage,) = s["stages"]
    lat = stage["latency"]
    # The simulator promises TTFT 50 ms and a token every 10 ms. The client can only see them later, never
    # earlier: lower bounds are the configured timing, upper bounds leave room for a machine busy with other
    # work (how close the client's clock is on a quiet machine is benchmarks/load_fidelity.py's job).
    assert TTFT <= lat["ttft_s"]["p50"] <= TTFT + 0.1, lat["ttft_s"]
    assert lat["ttft_s"]["p50"] <= lat["ttft_s"]["p99"] <= TTFT + 0.5, lat["ttft_s"]
    assert ITL - 0.0015 <= lat["itl_s"]["p50"] <= ITL + 0.01, lat["itl_s"]
    assert ITL - 0.001 <= lat["tpot_s"]["p50"] <= ITL + 0.01, lat["tpot_s"]
    e2e = TTFT + 19 * ITL
    assert e2e <= lat["e2e_s"]["p50"] <= e2e + 0.3, lat["e2e_s"]
    # The parts add up: e2e is TTFT plus 19 gaps of the request's own TPOT.
    assert lat["e2e_s"]["p50"] == pytest.approx(lat["ttft_s"]["p50"] + 19 * lat["tpot_s"]["p50"], rel=0.2)
    assert stage["failed"] == 0 and stage["requests"] > 8
    # Closed loop: 4 streams, each one request after another, so 4 / e2e is the ceiling.
    assert stage["requests_per_s"] <= 4 / e2e * 1.05
    assert stage["requests_per_s"] >= 4 / (lat["e2e_s"]["p50"] * 2), (stage["requests_per_s"], lat["e2e_s"])
    assert stage["output_tokens_per_s"] == pytest.approx(stage["requests_per_s"] * 20)
    assert stage["tokens_from_usage"] == stage["succeeded"]
    assert stage["finish_reasons"] == {"length": stage["succeeded"]}
    slos = {x["name"]: x for x in stage["slos"]}
    assert slos["ttft"]["met"] and slos["ttft"]["attainment_percent"] == 100.0
    assert slos["availability"]["met"]
    assert slos["gateway"]["judged"] is False and "not judged client-side" in slos["gateway"]["reason"]
    # Goodput: the requests that met every latency SLO, over the same wall time as the served rate. A stall of
    # the busy machine can cost a request its own ITL share, so most, not all, are expected to.
    assert stage["goodput_requests_per_s"] == pytest.approx(stage["good_requests"] / stage["wall_s"])
    assert stage["succeeded"] / 2 <= stage["good_requests"] <= stage["succeeded"]
    records = read_records(out / "records.jsonl")
    assert len(records) == stage["requests"] + stage["warmup_requests"]
    measured = [r for r in records if not r.warmup]
    assert all(r.output_tokens == 20 and len(r.itl_s) == 19 and r.status == 200 for r in measured)
    assert len({r.trace_id for r in records}) == len(records)
    assert all(re.fullmatch(r"[0-9a-f]{32}", r.trace_id) for r in records)
    # Exact values: no rounding to milliseconds as Locust's own stats do.
    assert any(round(r.ttft_s or 0, 3) != r.ttft_s for r in measured)
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "<svg" in report and "SLO ttft" in report and "<script" not in report


def test_two_workers_merge_records_and_summaries(sim: SimProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_load("--target", sim.url, "--model", "chunky", "--rate", "30", "--arrival", "constant",
                    "--duration", "3s", "--output-tokens", "12", "--workers", "2", "--out", str(out),
                    "--progress", "off")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_clean(proc)
    s = summary_of(out)
    assert s["workers"] == 2
    (stage,) = s["stages"]
    records = read_records(out / "records.jsonl")
    assert Counter(r.extra.get("worker") for r in records).keys() == {0, 1}
    assert len(records) == stage["requests"] == stage["succeeded"]
    assert 0.85 * 30 <= stage["sent_per_s"] <= 1.1 * 30, stage
    # Four tokens per chunk, a chunk every four decode steps of 20 ms: ITL per token, as the servers count it.
    # The second and third chunks each bring 4 tokens after a gap of 80 ms: 4 values of 20 ms each (the
    # first chunk's tokens are TTFT's). No zero gaps.
    for r in records:
        assert r.output_tokens == 12 and len(r.itl_s) == 8, r.itl_s
        assert min(r.itl_s) > 0
        assert r.itl_s[:4] == (r.itl_s[0],) * 4 and r.itl_s[4:] == (r.itl_s[4],) * 4
        assert sum(r.itl_s) == pytest.approx((r.tpot_s or 0) * 11)  # both span first -> last token chunk
    lat = stage["latency"]
    # Never earlier than the simulator's timing; later only by scheduling delay on a busy machine.
    assert TTFT <= lat["ttft_s"]["p50"] <= TTFT + 0.1, lat["ttft_s"]
    assert 0.02 - 0.003 <= lat["itl_s"]["p50"] <= 0.02 + 0.02, lat["itl_s"]
    tpot = 2 * 4 * 0.02 / 11  # two gaps of four decode steps between the first and last chunk, over 11
    assert tpot - 0.002 <= lat["tpot_s"]["p50"] <= tpot + 0.02, lat["tpot_s"]


def test_injected_errors_and_cut_streams_are_counted_by_kind(sim: SimProcess, spec_file: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    faults(sim, {"kind": "errors", "model": "faulty", "mode": "http_500", "rate": 0.25},
           {"kind": "errors", "model": "faulty", "mode": "abort_stream", "rate": 0.3, "abort_after_tokens": 3})
    try:
        proc = run_load("--target", sim.url, "--model", "faulty", "--concurrency", "4", "--duration", "2s",
                        "--output-tokens", "10", "--spec", str(spec_file), "--out", str(out), "--progress", "off")
    finally:
        faults(sim)
    assert_clean(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "verdict: FAIL" in proc.stdout
    (stage,) = summary_of(out)["stages"]
    kinds = stage["errors"]["by_kind"]
    assert set(kinds) == {"http", "stream_cut"}, kinds
    n = stage["requests"]
    assert n > 60
    assert 0.1 * n <= kinds["http"] <= 0.4 * n, kinds
    assert 0.1 * n <= kinds["stream_cut"] <= 0.45 * n, kinds
    assert stage["errors"]["by_status"] == {"200": kinds["stream_cut"], "500": kinds["http"]}
    slos = {x["name"]: x for x in stage["slos"]}
    assert not slos["availability"]["met"]
    assert slos["availability"]["good"] == stage["succeeded"]
    records = read_records(out / "records.jsonl")
    cut = [r for r in records if r.error_kind == "stream_cut"]
    assert all(r.ttft_s is not None and r.output_tokens == 3 for r in cut)
    assert all("HTTP 500" in r.error for r in records if r.error_kind == "http")


def test_a_sweep_stops_at_the_first_stage_that_misses_an_slo(sim: SimProcess, tmp_path: Path) -> None:
    spec = tmp_path / "strict.yaml"
    spec.write_text(SPEC.format(ttft=0.04), encoding="utf-8")  # the simulator's TTFT is 50 ms
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "hello there " * n}],
                                          "max_tokens": 6}) for n in (1, 5, 9)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    proc = run_load("--target", sim.url, "--model", "fixed", "--sweep", "rate=4,8,16", "--duration", "1.5s",
                    "--dataset", str(data), "--spec", str(spec), "--out", str(out), "--progress", "off")
    assert_clean(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    s = summary_of(out)
    assert s["stages_planned"] == ["rate=4", "rate=8", "rate=16"]
    assert [st["name"] for st in s["stages"]] == ["rate=4"]
    assert "ttft" in s["stopped_early"] and s["verdict"] == "fail"
    records = read_records(out / "records.jsonl")
    assert records and all(r.output_tokens == 6 for r in records)
    # Prompt tokens as the simulator counts them: 3 per message plus characters / 4.
    assert {r.prompt_tokens for r in records} <= {3 + -(-len("hello there " * n) // 4) for n in (1, 5, 9)}
    assert "sweep stopped early" in proc.stdout


def test_overload_reports_served_throughput_and_saturation(sim: SimProcess, tmp_path: Path) -> None:
    """Issue 14's overload case: an open-loop rate about 3x what the server can serve. Throughput is what was
    served, completed requests over first send -> last completion, beside what was offered; the stage says it
    was saturated. A stage at half the capacity, in the same sweep, kept up."""
    out = tmp_path / "out"
    proc = run_load("--target", sim.url, "--model", "narrow", "--sweep", "rate=4,24", "--arrival", "constant",
                    "--duration", "2.5s", "--output-tokens", "20", "--out", str(out), "--progress", "plain",
                    timeout=120)
    assert_clean(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = summary_of(out)
    calm, overload = s["stages"]
    records = read_records(out / "records.jsonl")
    for stage in (calm, overload):
        measured = [r for r in records if r.stage == stage["name"] and not r.warmup]
        ok = [r for r in measured if r.ok]
        wall = max(r.start_time + (r.e2e_s or 0.0) for r in measured) - min(r.start_time for r in measured)
        assert stage["requests_per_s"] == pytest.approx(len(ok) / wall, rel=0.05), stage
        assert stage["output_tokens_per_s"] == pytest.approx(sum(r.output_tokens or 0 for r in ok) / wall, rel=0.05)
    assert 0.85 * 24 <= overload["sent_per_s"] <= 1.1 * 24, overload
    assert overload["failed"] == 0
    # What the server can serve, not what was sent: never above its capacity, far below the offered rate.
    capacity = NARROW_SEQS / (TTFT + 19 * ITL)
    assert overload["requests_per_s"] <= capacity * 1.1, (overload["requests_per_s"], capacity)
    assert overload["requests_per_s"] < 0.6 * overload["sent_per_s"], overload
    assert overload["saturated"] and any("queueing grew" in why for why in overload["saturation"]), overload
    assert not calm["saturated"], calm
    assert s["saturated_stages"] == ["rate=24"]
    verdict = next(line for line in proc.stdout.splitlines() if line.startswith("verdict:"))
    assert "saturated: rate=24 (served" in verdict and "rate=4 " not in verdict, verdict
    assert re.search(r"rate=24 .*saturated", proc.stdout), proc.stdout
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "saturated: rate=24 (served" in report and "rate=24 saturated: queueing grew" in report
    assert "offered req/s" in report and "served req/s" in report


def test_sigint_leaves_a_summary_and_report_and_metrics_are_served(sim: SimProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "forge_slo.load", "--target", sim.url, "--model", "fixed",
                             "--rate", "10", "--duration", "60s", "--metrics-port", "0", "--out", str(out),
                             "--progress", "off"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"client metrics: (http://\S+)", line)
        assert match, line
        deadline = time.monotonic() + 15
        families: dict[str, Any] = {}
        while time.monotonic() < deadline:
            text = httpx.get(match.group(1), timeout=5).text
            families = {f.name: f for f in text_string_to_metric_families(text)}
            ttft = families.get("forge_load_time_to_first_token_seconds")
            if ttft and any(s.name.endswith("_count") and s.value >= 5 for s in ttft.samples):
                break
            time.sleep(0.3)
        ttft = families["forge_load_time_to_first_token_seconds"]
        bounds = sorted(float(s.labels["le"]) for s in ttft.samples if s.name.endswith("_bucket"))
        assert bounds[:-1] == list(VLLM_TTFT_BUCKETS)
        assert {s.labels["model_name"] for s in ttft.samples} == {"fixed"}
        assert "forge_load_inter_token_latency_seconds" in families
        assert "forge_load_requests" in families
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    s = summary_of(out)
    assert s["interrupted"] is True
    (stage,) = s["stages"]
    assert stage["stopped_by"] == "interrupt" and stage["requests"] >= 5
    assert 1.0 < stage["duration_s"] < 20
    assert "interrupted" in (out / "report.html").read_text(encoding="utf-8")
    assert "interrupted" in stdout


def test_server_spans_join_the_clients_trace(tmp_path: Path) -> None:
    config = {"models": [_model("traced", prefill_base_s=0.005, itl_s=0.002)], "tracing": {"exporter": "console"}}
    out = tmp_path / "out"
    with SimProcess(config) as traced:
        proc = run_load("--target", traced.url, "--model", "traced", "--concurrency", "1", "--duration", "2s",
                        "--max-requests", "3", "--output-tokens", "4", "--out", str(out), "--progress", "off")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    spans = traced.last_log
    records = read_records(out / "records.jsonl")
    assert len(records) == 3
    for r in records:
        assert f'"trace_id": "0x{r.trace_id}"' in spans  # the server span is in the client's trace


def test_refused_connections_are_failures_of_kind_connection(spec_file: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out = tmp_path / "out"
    proc = run_load("--target", f"http://127.0.0.1:{port}", "--no-check", "--model", "m", "--rate", "20",
                    "--duration", "1s", "--spec", str(spec_file), "--out", str(out), "--progress", "off")
    assert_clean(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (stage,) = summary_of(out)["stages"]
    assert stage["requests"] > 5 and stage["errors"]["by_kind"] == {"connection": stage["requests"]}
    slos = {x["name"]: x for x in stage["slos"]}
    assert slos["availability"]["attainment_percent"] == 0.0
    assert slos["ttft"]["met"] is False and slos["ttft"]["attainment_percent"] is None


class _BadServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    calls = 0
    giant_sent = 0                 # bytes of the giant line written before the client hung up
    stopping = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out or gave up closed its end: expected


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


def _content(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


GIANT_LINE_BYTES = 100 * 2**20
FIRST_PAUSE_S = 0.5
BAD_SERVER_BOUND_S = 30.0          # no answer of the bad server lasts longer, whatever the client does


class _BadHandler(http.server.BaseHTTPRequestHandler):
    """Answers by the request's model: each model is one way a server can break a client."""

    protocol_version = "HTTP/1.0"  # the body ends when the connection closes

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        server = self.server
        assert isinstance(server, _BadServer)
        server.calls += 1
        if body["model"] == "endless-headers":
            self.wfile.write(b"HTTP/1.0 200 OK\r\n")
            deadline = time.monotonic() + BAD_SERVER_BOUND_S
            while time.monotonic() < deadline and not server.stopping.is_set():
                self.wfile.write(b"X-Filler: " + b"y" * 1000 + b"\r\n")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        getattr(self, "_answer_" + str(body["model"]).replace("-", "_"))(server)
        self.wfile.flush()

    def _answer_m(self, server: _BadServer) -> None:
        self.wfile.write(_sse(_content("x")))
        self.wfile.flush()
        if server.calls % 2:
            self.wfile.write(b"data: {\"choices\": [{\"delta\": \n\n")  # not JSON
        else:
            server.stopping.wait(3.0)  # stall past the client's timeout

    def _answer_huge_usage(self, server: _BadServer) -> None:
        for text in ("a", "b", "c"):
            self.wfile.write(_sse(_content(text)))
        self.wfile.write(_sse(_content("", "length")))
        self.wfile.write(_sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 10**9,
                                                          "total_tokens": 10**9 + 5}}))
        self.wfile.write(_sse("[DONE]"))

    def _answer_endless(self, server: _BadServer) -> None:
        chunk = _sse(_content("x")) * 20
        deadline = time.monotonic() + BAD_SERVER_BOUND_S
        while time.monotonic() < deadline and not server.stopping.is_set():
            self.wfile.write(chunk)  # as fast as the client reads; ends when it hangs up

    def _answer_giant_line(self, server: _BadServer) -> None:
        self.wfile.write(b'data: {"choices":[{"index":0,"delta":{"content":"')
        block = b"x" * 2**16
        deadline = time.monotonic() + BAD_SERVER_BOUND_S
        while server.giant_sent < GIANT_LINE_BYTES and time.monotonic() < deadline:
            self.wfile.write(block)
            server.giant_sent += len(block)
        self.wfile.write(b'"},"finish_reason":null}]}\n\n' + _sse(_content("", "stop")) + _sse("[DONE]"))

    def _answer_bad_shape(self, server: _BadServer) -> None:
        # Valid JSON, but no "choices": no completion chunk carries its content at the top level.
        self._around(b'data: {"content":"x","finish_reason":null}\n\n')

    def _answer_bad_json(self, server: _BadServer) -> None:
        self._around(b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}}\n\n')

    # First token chunks that are not text, each after an opening role-only chunk and a pause: TTFT must stop
    # at them (vLLM's benchmark does), not at the role chunk nor at the first text.
    def _answer_role_then_special(self, server: _BadServer) -> None:
        self._slow_first({"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]})

    def _answer_role_then_tool(self, server: _BadServer) -> None:
        call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
        self._slow_first({"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]})

    def _answer_text_special(self, server: _BadServer) -> None:
        self._slow_first({"choices": [{"index": 0, "text": "", "finish_reason": None}]}, chat=False)

    def _slow_first(self, first: dict[str, Any], chat: bool = True) -> None:
        if chat:
            self._send(_sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]}))
        time.sleep(FIRST_PAUSE_S)
        self._send(_sse(first))
        time.sleep(FIRST_PAUSE_S)
        tail = [_sse(_content("a")), _sse(_content("b", "stop"))] if chat else \
            [_sse({"choices": [{"index": 0, "text": t, "finish_reason": f}]}) for t, f in (("a", None), ("b", "stop"))]
        self._send(b"".join(tail) + _sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                                                    "total_tokens": 8}}) + _sse("[DONE]"))

    def _send(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _around(self, bad: bytes) -> None:
        self.wfile.write(_sse(_content("a")) + bad + _sse(_content("b", "stop")) + _sse("[DONE]"))


@pytest.fixture()
def bad_server() -> Iterator[str]:
    with _serve_bad() as (url, _server):
        yield url


@contextlib.contextmanager
def _serve_bad() -> Iterator[tuple[str, _BadServer]]:
    server = _BadServer(("127.0.0.1", 0), _BadHandler)
    server.stopping = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_malformed_events_and_timeouts_are_failures_of_their_kind(bad_server: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_load("--target", bad_server, "--no-check", "--model", "m", "--concurrency", "2", "--duration", "1.5s",
                    "--timeout", "0.6s", "--out", str(out), "--progress", "off")
    assert_clean(proc)
    records = read_records(out / "records.jsonl")
    # No spec, so nothing is judged; but a run in which nothing succeeded exits 1.
    expected = 0 if any(r.ok for r in records if not r.warmup) else 1
    assert proc.returncode == expected, proc.stdout + proc.stderr
    kinds = Counter(r.error_kind for r in records)
    assert set(kinds) == {"malformed", "timeout"}, kinds
    timed_out = [r for r in records if r.error_kind == "timeout"]
    assert all(0.6 <= (r.e2e_s or 0) < 0.8 and r.ttft_s is not None for r in timed_out)
    assert all("not JSON" in r.error for r in records if r.error_kind == "malformed")


@pytest.mark.parametrize(("model", "api"), [("role-then-special", "chat"), ("role-then-tool", "chat"),
                                          ("text-special", "completions")])
def test_ttft_stops_at_the_first_token_chunk(model: str, api: str, bad_server: str, tmp_path: Path) -> None:
    """The opening role-only chunk is no token; a special token (empty content without a role, or an empty
    text) and a tool call are: TTFT stops at them, as vLLM's benchmark does, not at the first text."""
    out = tmp_path / "out"
    proc = run_load("--target", bad_server, "--no-check", "--model", model, "--api", api, "--concurrency", "1",
                    "--max-requests", "2", "--duration", "10s", "--out", str(out), "--progress", "off")
    assert_clean(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_records(out / "records.jsonl")
    assert len(records) == 2 and all(r.ok for r in records), records
    for r in records:
        assert r.ttft_s is not None and FIRST_PAUSE_S <= r.ttft_s < 2 * FIRST_PAUSE_S - 0.05, r
        assert r.output_tokens == 3 and r.e2e_s is not None and r.e2e_s >= 2 * FIRST_PAUSE_S


# A run under a memory cap, reporting the peak resident memory of its largest process (the engine): a client
# that allocated for what a server claims would fail here instead of taking the machine's memory.
_LIMITED = """
import resource, subprocess, sys
cap = int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
code = subprocess.run(sys.argv[2:], stdin=subprocess.DEVNULL).returncode
print(f"maxrss_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""
MEMORY_CAP_MB = 3072


def run_load_capped(*args: str, timeout: float = 90) -> tuple[subprocess.CompletedProcess[str], int]:
    """``run_load`` with an address-space cap on the CLI and its children; also returns their peak RSS (MiB)."""
    proc = subprocess.run([sys.executable, "-c", _LIMITED, str(MEMORY_CAP_MB), sys.executable, "-m",
                           "forge_slo.load", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    match = re.search(r"maxrss_kb=(\d+)", proc.stderr)
    assert match, proc.stderr
    return proc, int(match.group(1)) // 1024


def assert_every_request_recorded(out: Path, kind: str, requests: int) -> list[RequestRecord]:
    """Each request sent is a record of the given failure kind, and the summary counts it."""
    records = read_records(out / "records.jsonl")
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert [st["sent"] for st in run["stages"]] == [requests], run["stages"]
    assert len(records) == requests
    assert all(not r.ok and r.error_kind == kind and r.error for r in records), records
    (stage,) = summary_of(out)["stages"]
    assert (stage["requests"], stage["failed"]) == (requests, requests)
    assert stage["errors"]["by_kind"] == {kind: requests}
    return records


def test_a_huge_usage_claim_is_a_malformed_request_not_a_lost_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _serve_bad() as (url, _server):
        proc, rss_mb = run_load_capped("--target", url, "--no-check", "--model", "huge-usage", "--concurrency", "1",
                                       "--max-requests", "2", "--duration", "10s", "--output-tokens", "16",
                                       "--out", str(out), "--progress", "off")
    assert_clean(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # nothing succeeded
    records = assert_every_request_recorded(out, "malformed", 2)
    for r in records:
        assert "completion_tokens" in r.error and "1000000000" in r.error and "max_tokens 16" in r.error, r.error
        assert len(r.itl_s) <= 16
    assert rss_mb < 256, rss_mb


def test_an_endless_stream_ends_at_the_timeout(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _serve_bad() as (url, _server):
        started = time.monotonic()
        proc, _rss = run_load_capped("--target", url, "--no-check", "--model", "endless", "--concurrency", "1",
                                     "--max-requests", "1", "--duration", "10s", "--timeout", "2s",
                                     "--max-response-size", "1GiB", "--out", str(out), "--progress", "off")
        elapsed = time.monotonic() - started
    assert_clean(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (record,) = assert_every_request_recorded(out, "timeout", 1)
    # The timeout bounds the whole request, connect to last byte, even while bytes keep arriving.
    assert 2.0 <= (record.e2e_s or 0) < 4.0, record
    assert record.ttft_s is not None and "2s" in record.error
    assert elapsed < BAD_SERVER_BOUND_S, elapsed  # the bad server would have streamed for 30 s


def test_a_giant_line_is_cut_off_at_the_line_cap(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _serve_bad() as (url, server):
        proc, rss_mb = run_load_capped("--target", url, "--no-check", "--model", "giant-line", "--concurrency", "1",
                                       "--max-requests", "1", "--duration", "10s", "--max-line-size", "1MiB",
                                       "--out", str(out), "--progress", "off")
        sent = server.giant_sent
    assert_clean(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (record,) = assert_every_request_recorded(out, "malformed", 1)
    assert "--max-line-size" in record.error and "1MiB" in record.error, record.error
    # The client hung up soon after the cap (socket buffers hold a few MiB more), and kept little of it.
    assert sent < GIANT_LINE_BYTES // 4, sent
    assert (record.e2e_s or 0) < 10, record
    assert rss_mb < 256, rss_mb


def test_a_response_over_the_size_cap_is_cut_off(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _serve_bad() as (url, _server):
        proc = run_load("--target", url, "--no-check", "--model", "endless", "--concurrency", "1",
                        "--max-requests", "1", "--duration", "10s", "--max-response-size", "256KiB", "--out", str(out),
                        "--progress", "off")
    assert_clean(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (record,) = assert_every_request_recorded(out, "malformed", 1)
    assert "--max-response-size" in record.error and "256KiB" in record.error, record.error
    assert (record.e2e_s or 0) < 10, record


def test_endless_headers_are_cut_off(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _serve_bad() as (url, _server):
        proc = run_load("--target", url, "--no-check", "--model", "endless-headers", "--concurrency", "1",
                        "--max-requests", "1", "--duration", "10s", "--out", str(out), "--progress", "off")
    assert_clean(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (record,) = assert_every_request_recorded(out, "malformed", 1)
    assert "headers are longer than 1MiB" in record.error, record.error
    assert (record.e2e_s or 0) < 10, record


@pytest.mark.parametrize(("model", "reason"), [("bad-shape", "no 'choices'"), ("bad-json", "not JSON")])
def test_a_malformed_event_is_not_a_token(model: str, reason: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _serve_bad() as (url, _server):
        proc = run_load("--target", url, "--no-check", "--model", model, "--concurrency", "1", "--max-requests", "2",
                        "--duration", "10s", "--out", str(out), "--progress", "off")
    assert_clean(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for r in assert_every_request_recorded(out, "malformed", 2):
        assert reason in r.error, r.error
        assert r.output_tokens == 1  # the event before the bad one; the bad one is not counted


def test_help_documents_the_size_caps() -> None:
    proc = run_load("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--max-line-size" in text and "default 1MiB" in text
    assert "--max-response-size" in text and "default 64MiB" in text


def _proc_stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a live process, None once it is gone (a zombie is gone too)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (None if fields[0] == "Z" else (int(fields[1]), fields[0], fields[19]))


def _children(pid: int) -> list[tuple[int, str]]:
    """The child processes of ``pid``, each with its start time (a pid can be reused)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[0] == pid:
                found.append((int(entry.name), stat[2]))
    return found


def _alive(proc: tuple[int, str]) -> bool:
    stat = _proc_stat(proc[0])
    return stat is not None and stat[2] == proc[1]


def _served(sim: SimProcess) -> float:
    text = httpx.get(f"{sim.url}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "http_requests"
               for s in f.samples if s.name == "http_requests_total" and "completions" in s.labels["handler"])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the engine's processes in /proc")
@pytest.mark.parametrize("victim", ["cli", "engine"])
def test_killing_the_cli_or_engine_stops_the_load(victim: str, tmp_path: Path) -> None:
    with SimProcess(SIM_CONFIG) as own_sim:
        cli = subprocess.Popen([sys.executable, "-m", "forge_slo.load", "--target", own_sim.url, "--model", "fixed",
                                "--rate", "20", "--duration", "60s", "--output-tokens", "5", "--workers", "1",
                                "--out", str(tmp_path / "out"), "--progress", "off"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        spawned: list[tuple[int, str]] = []
        try:
            deadline = time.monotonic() + 60
            while _served(own_sim) < 20:  # the worker is sending
                assert cli.poll() is None and time.monotonic() < deadline, "the load never started"
                time.sleep(0.3)
            (engine,) = _children(cli.pid)
            workers = _children(engine[0])
            spawned += [engine, *workers]
            assert len(workers) == 1
            os.kill(cli.pid if victim == "cli" else engine[0], signal.SIGKILL)
            killed = time.monotonic()
            survivors = [engine, *workers] if victim == "cli" else workers
            while any(_alive(p) for p in survivors) and time.monotonic() - killed < 15:
                time.sleep(0.1)
            gone_after = time.monotonic() - killed
            assert not any(_alive(p) for p in survivors), "a Locust process outlived the kill"
            before = _served(own_sim)
            time.sleep(1.5)
            assert _served(own_sim) == before, "requests still arrive"
        finally:
            if cli.poll() is None:
                cli.kill()
            cli.wait(30)
            for pid, start in spawned:  # nothing left once the fix works; never leave a sender behind
                if _alive((pid, start)):
                    os.kill(pid, signal.SIGKILL)
    # Within a couple of seconds; the bound leaves room for a busy 2-core machine.
    assert gone_after < 5.0, gone_after


def test_the_lifeline_reports_the_end_of_its_pipe() -> None:
    read_end, write_end = os.pipe()
    gone = threading.Event()
    watcher = threading.Thread(target=watch, args=(read_end, gone.set, lambda fd: select.select([fd], [], [])),
                               daemon=True)
    watcher.start()
    try:
        os.write(write_end, b"ignored")  # bytes are not the end
        assert not gone.wait(0.5)
    finally:
        os.close(write_end)
    assert gone.wait(10)
    watcher.join(10)
    os.close(read_end)


def test_plain_locust_runs_the_same_flags(sim: SimProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    locustfile = run_load("locustfile").stdout.strip()
    assert Path(locustfile).is_file()
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", locustfile, "--headless", "--only-summary",
                           "-H", sim.url, "--model", "fixed", "--concurrency", "2", "--duration", "2s",
                           "--output-tokens", "5", "--out", str(out), "--loglevel", "WARNING"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (stage,) = summary_of(out)["stages"]
    assert stage["requests"] > 10 and stage["failed"] == 0
    # Locust's own table has the TTFT and e2e entries.
    assert re.search(r"chat\s+ttft", proc.stdout + proc.stderr)
    assert re.search(r"chat\s+e2e", proc.stdout + proc.stderr)


def _env_with_root() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_demo_works_from_a_fresh_directory(tmp_path: Path) -> None:
    env = _env_with_root()
    proc = subprocess.run([sys.executable, "-m", "forge_slo.load", "demo", "--duration", "3s", "--progress", "off"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=90, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_clean(proc)
    out = tmp_path / "forge-slo-demo"
    assert (out / "demo-spec.yaml").is_file()  # no slo_specs/ here: the built-in copy of the example spec
    assert (out / "report.html").is_file()
    assert "verdict: PASS" in proc.stdout
    # The SLO table: one row per stage, one column per judged SLO, the unjudged one named with its reason.
    lines = proc.stdout.splitlines()
    assert ["stage", "ttft", "tpot", "e2e", "availability"] in [line.split() for line in lines], proc.stdout
    (row,) = [line for line in lines if line.startswith("rate=4") and "% of" in line]
    assert row.count("PASS") == 4, row
    assert re.search(r"gateway-errors: .*not judged client-side", proc.stdout)


# ---------------------------------------------------------------------------------------------------------
# Bad input: a clear message and exit code 2, before anything starts


@pytest.mark.parametrize(("args", "message"), [
    (["--rate", "-1"], "--rate"),
    (["--rate", "1", "--concurrency", "2"], "not allowed with argument"),
    (["--sweep", "users=1,2"], "--sweep"),
    (["--rate", "1", "--prompt-tokens", "uniform:5"], "--prompt-tokens"),
    (["--rate", "1", "--duration", "soon"], "--duration"),
    (["--rate", "1", "--duration", "30"], "add a unit"),
    (["--rate", "1", "--timeout", "0"], "--timeout"),
    (["--rate", "1", "--warmup", "10s", "--duration", "5s"], "--warmup"),
    (["--rate", "1", "--burstiness", "0.5"], "--burstiness"),
    (["--rate", "1", "--metrics-port", "70000"], "--metrics-port"),
    (["--rate", "1", "--spec", "no/such/spec.yaml"], "--spec"),
    (["--rate", "1", "--max-line-size", "1TB"], "--max-line-size"),
    (["--rate", "1", "--max-response-size", "0"], "--max-response-size"),
])
def test_bad_flags_exit_2_with_a_message(args: list[str], message: str, tmp_path: Path) -> None:
    proc = run_load("--target", "http://127.0.0.1:9", "--model", "m", "--out", str(tmp_path / "o"), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_demo_refuses_a_duration_without_a_unit(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "forge_slo.load", "demo", "--duration", "15"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=_env_with_root(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--duration" in proc.stderr and "add a unit" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "forge-slo-demo").exists()  # refused before anything started


def test_bad_target_and_missing_model_exit_2(tmp_path: Path) -> None:
    proc = run_load("--target", "ftp://x", "--model", "m", "--rate", "1", "--out", str(tmp_path))
    assert proc.returncode == 2 and "--target" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_load("--target", "http://127.0.0.1:9", "--rate", "1", "--out", str(tmp_path))
    assert proc.returncode == 2 and "--model" in proc.stderr


def test_a_bad_dataset_names_the_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "hello"}\n{"prompt": "unterminated\n', encoding="utf-8")
    proc = run_load("--target", "http://127.0.0.1:9", "--model", "m", "--rate", "1", "--dataset", str(data),
                    "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert f"{data}:2: not JSON" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(UsageError, match=r"data.jsonl:1: messages: needs --api chat"):
        data.write_text('{"messages": [{"role": "user", "content": "x"}]}\n', encoding="utf-8")
        load_dataset(str(data), "completions")


def test_a_bad_spec_exits_2_with_file_and_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(SPEC.format(ttft=2), encoding="utf-8")  # 2 s is not a bucket bound of vLLM's TTFT
    proc = run_load("--target", "http://127.0.0.1:9", "--model", "m", "--rate", "1", "--spec", str(spec),
                    "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert f"{spec}:" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# The measuring and judging, without servers


def _feed(meter: StreamMeter, events: list[tuple[float, bytes]]) -> None:
    for t, payload in events:
        meter.feed(b"data: " + payload + b"\n", t)
        meter.feed(b"\n", t)


def _chunk(content: str | None, finish: str | None = None, usage: int | None = None) -> bytes:
    data: dict[str, Any] = {"choices": [] if content is None and finish is None else
                            [{"index": 0, "delta": {"content": content} if content is not None else {},
                              "finish_reason": finish}]}
    if usage is not None:
        data["usage"] = {"prompt_tokens": 7, "completion_tokens": usage, "total_tokens": 7 + usage}
    return json.dumps(data).encode()


def test_metric_definitions_on_a_chunked_stream() -> None:
    meter = StreamMeter(10.0, 16)
    _feed(meter, [(10.0, b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}'),
                  (10.1, _chunk("ab")), (10.3, _chunk("cd")), (10.4, _chunk("ef", "length")),
                  (10.41, _chunk(None, usage=6))])
    assert meter.feed(b"data: [DONE]\n", 10.42)
    r = meter.record(start_time=1.0, model="m", stage="s", warmup=False, trace_id="t")
    # The role-only chunk is no token; e2e ends at the last token chunk, not at [DONE].
    assert r.ok and r.ttft_s == pytest.approx(0.1) and r.e2e_s == pytest.approx(0.4)
    assert r.output_tokens == 6 and r.tokens_from == "usage" and r.prompt_tokens == 7
    # Three chunks of two tokens: the second and third each give two values of half their gap.
    assert r.itl_s == pytest.approx((0.1, 0.1, 0.05, 0.05))
    assert r.tpot_s == pytest.approx((10.4 - 10.1) / 5)
    assert r.finish_reason == "length"
    assert record_json(r) == r.to_json()


def test_without_usage_tokens_are_counted_from_the_stream() -> None:
    meter = StreamMeter(0.0, 16)
    _feed(meter, [(0.2, _chunk("a")), (0.25, _chunk("b")), (0.3, _chunk("c", "stop"))])
    meter.end_without_done(0.31)
    r = meter.record(start_time=1.0, model="m", stage="s", warmup=True, trace_id="t")
    assert r.ok and r.tokens_from == "stream" and r.output_tokens == 3
    assert r.itl_s == pytest.approx((0.05, 0.05)) and r.e2e_s == pytest.approx(0.3)  # the last token chunk


@pytest.mark.parametrize(("line", "kind"), [
    (b"data: {not json}\n", "malformed"),
    (b'data: {"choices": 3}\n', "malformed"),
    (b'data: {"error": {"message": "overloaded"}}\n', "other"),
])
def test_bad_events_raise_their_kind(line: bytes, kind: str) -> None:
    with pytest.raises(StreamError) as info:
        StreamMeter(0.0, 16).feed(line, 1.0)
    assert info.value.kind == kind


_TOKEN = b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"%s"},"logprobs":null,"finish_reason":null}]}\n'


@pytest.mark.parametrize(("content", "reason"), [
    (b'a"b', "not JSON"),                 # an unescaped quote ends the string early
    (b"a\\qb", "not JSON"),              # not a JSON escape
    (b"a\x01b", "not JSON"),              # a raw control character
    (b'a"},"x', "not JSON"),              # the same framing around more than one string
])
def test_an_event_framed_like_a_token_must_still_be_json(content: bytes, reason: str) -> None:
    meter = StreamMeter(0.0, 16)
    assert not meter.feed(_TOKEN % b"first", 0.1) and not meter.feed(_TOKEN % b"\\u00e9\\n", 0.2)
    with pytest.raises(StreamError) as info:
        meter.feed(_TOKEN % content, 0.3)
    assert info.value.kind == "malformed" and reason in info.value.message
    assert len(meter.token_times) == 2
    meter.feed(_TOKEN % b"", 0.4)  # empty content without a role: a special token, parsed in full
    assert len(meter.token_times) == 3


@pytest.mark.parametrize(("line", "reason"), [
    (b'data: {"content":"x","finish_reason":null}\n', "no 'choices'"),
    (b'data: {"choices":[{"delta":{"content":7}}]}\n', "'content' is not a string"),
    (b'data: {"choices":[{"delta":"x"}]}\n', "'delta' is not an object"),
    (b'data: {"choices":[{"text":"x","finish_reason":3}]}\n', "'finish_reason' is not a string"),
    (b'data: {"choices":[],"usage":{"completion_tokens":"12"}}\n', "usage.completion_tokens is not a whole"),
    (b'data: {"choices":[],"usage":{"completion_tokens":-1}}\n', "usage.completion_tokens is not a whole"),
    (b'data: {"choices":[],"usage":{"completion_tokens":17}}\n', "more than the request's max_tokens 16"),
    (b'data: {"choices":[],"usage":[1]}\n', "'usage' is not an object"),
    (b'data: {"choices":[{"delta":{"tool_calls":{"id":1}}}]}\n', "'tool_calls' is not a list"),
    (b'data: {"choices":[{"delta":{"function_call":"f"}}]}\n', "'function_call' is not an object"),
    (b"data: " + b"[" * 100_000 + b"\n", "not JSON"),
])
def test_events_of_the_wrong_shape_are_malformed(line: bytes, reason: str) -> None:
    with pytest.raises(StreamError) as info:
        StreamMeter(0.0, 16).feed(line, 1.0)
    assert info.value.kind == "malformed" and reason in info.value.message, info.value.message


def test_usage_tokens_are_spread_over_the_chunks_as_per_token_gaps() -> None:
    meter = StreamMeter(0.0, 16)
    _feed(meter, [(0.1, _chunk("ab")), (0.2, _chunk("cd", "length")), (0.21, _chunk(None, usage=16))])
    r = meter.record(start_time=1.0, model="m", stage="s", warmup=False, trace_id="t")
    # 16 tokens over two chunks: 8 each; the second's 8 share its 100 ms gap. Never a zero gap.
    assert r.ok and r.output_tokens == 16 and r.itl_s == pytest.approx((0.1 / 8,) * 8)
    meter = StreamMeter(0.0, 16)
    _feed(meter, [(0.1, _chunk("a")), (0.4, _chunk("b")), (0.5, _chunk("c", "stop")), (0.5, _chunk(None, usage=7))])
    r = meter.record(start_time=1.0, model="m", stage="s", warmup=False, trace_id="t")
    # 7 tokens over 3 chunks, as evenly as whole numbers allow: 2, 2, 3.
    assert r.itl_s == pytest.approx((0.15, 0.15, 0.1 / 3, 0.1 / 3, 0.1 / 3))
    assert sum(r.itl_s) == pytest.approx(0.4) and r.tpot_s == pytest.approx(0.4 / 6)


def _delta(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode()


def _text(text: str | None, finish: str | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if text is not None:
        choice["text"] = text
    return json.dumps({"choices": [choice]}).encode()


_TOOL = {"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]}


@pytest.mark.parametrize(("chunk", "token"), [
    (_delta({"role": "assistant", "content": ""}), False),   # the opening role chunk
    (_delta({"role": "assistant"}), False),
    (_delta({}, "stop"), False),                             # a closing chunk with no content
    (_delta({"content": None}), False),
    (_delta({"content": ""}), True),                         # a special token that prints as nothing
    (_delta({"content": "", "role": None}), True),
    (_delta({"content": ""}, "stop"), False),                # the closing chunk with the finish reason
    (_delta({"reasoning_content": "hm"}), True),
    (_delta(_TOOL), True),
    (_delta({"tool_calls": []}), False),
    (_delta({"function_call": {"name": "f"}}), True),
    (_delta({"role": "assistant", "content": "Hi"}), True),
    (_text(""), True),                                       # completions: an empty text is a token...
    (_text("", "length"), False),                            # ...except the closing chunk with the reason
    (_text("x", "length"), True),
    (_text(None, "stop"), False),
])
def test_which_chunks_bring_tokens(chunk: bytes, token: bool) -> None:
    meter = StreamMeter(0.0, 16)
    meter.feed(b"data: " + chunk + b"\n", 0.3)
    assert meter.events == (1 if token else 0)


def test_more_content_events_than_max_tokens_are_malformed_and_not_kept() -> None:
    meter = StreamMeter(0.0, 16)
    _feed(meter, [(0.1 + i / 100, _chunk("x")) for i in range(40)] + [(0.6, _chunk("", "stop"))])
    assert meter.feed(b"data: [DONE]\n", 0.61)
    assert len(meter.token_times) == 16 and meter.events == 40
    r = meter.record(start_time=1.0, model="m", stage="s", warmup=False, trace_id="t")
    assert not r.ok and r.error_kind == "malformed"
    assert "40 token chunks, more than the request's max_tokens 16" in r.error
    assert len(r.itl_s) == 15


def test_cut_and_aborted_streams_are_failures() -> None:
    meter = StreamMeter(0.0, 16)
    _feed(meter, [(0.1, _chunk("a"))])
    meter.end_without_done(0.2)
    r = meter.record(start_time=1.0, model="m", stage="s", warmup=False, trace_id="t")
    assert not r.ok and r.error_kind == "stream_cut" and r.ttft_s == pytest.approx(0.1)
    meter = StreamMeter(0.0, 16)
    _feed(meter, [(0.1, _chunk("a")), (0.2, _chunk("", "abort"))])
    meter.feed(b"data: [DONE]\n", 0.2)
    r = meter.record(start_time=1.0, model="m", stage="s", warmup=False, trace_id="t")
    assert not r.ok and r.error_kind == "stream_cut"


def _rec(ttft: float, tpot: float | None, itl: tuple[float, ...], ok: bool = True,
         kind: str | None = None) -> RequestRecord:
    return RequestRecord(start_time=1.0, model="m", ok=ok, error_kind=kind, ttft_s=ttft, tpot_s=tpot,
                         e2e_s=ttft + sum(itl), itl_s=itl, output_tokens=len(itl) + 1, stage="s")


def test_attainment_and_goodput() -> None:
    records = [_rec(0.1, 0.01, (0.01, 0.01)), _rec(0.3, 0.02, (0.01, 0.03)), _rec(0.1, None, ()),
               _rec(0.1, 0.01, (), ok=False, kind="http")]
    crits = [Criterion("ttft", "latency", 50, "ttft", 0.25), Criterion("itl", "latency", 90, "itl", 0.025),
             Criterion("tpot", "latency", 90, "tpot", 0.015), Criterion("av", "availability", 80),
             Criterion("ratio", "unjudged", 99, reason="not judged client-side")]
    res = {r["name"]: r for r in judge(records, crits)}
    assert (res["ttft"]["good"], res["ttft"]["events"], res["ttft"]["met"]) == (2, 3, True)
    assert (res["itl"]["good"], res["itl"]["events"], res["itl"]["met"]) == (3, 4, False)
    assert (res["tpot"]["good"], res["tpot"]["events"]) == (1, 2)
    assert (res["av"]["attainment_percent"], res["av"]["met"]) == (75.0, False)
    assert res["ratio"]["judged"] is False
    # Goodput: successful requests meeting every latency SLO (the second misses ttft, itl and tpot).
    assert good_requests(records, crits) == 2


def _status(status: int | None, kind: str | None = None) -> RequestRecord:
    ok = status == 200 and kind is None
    return RequestRecord(start_time=1.0, model="m", ok=ok, status=status, error_kind=None if ok else kind or "http",
                         ttft_s=0.1 if ok else None, e2e_s=0.2, itl_s=(0.01, 0.1) if ok else (), stage="s")


# SGLang: its counters tell shed requests apart, so both policies are specs it accepts (vLLM's do not).
AVAILABILITY_SPEC = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: chat
preset: sglang
slos:
  - {{name: av, objective: 90, sli: {{availability: {availability}}}}}
  - {{name: itl, objective: 90, sli: {{latency: {{metric: itl, threshold: 0.06}}}}}}
  - {{name: queue, objective: 90, sli: {{latency: {{metric: queue, threshold: 0.5}}}}}}
"""


@pytest.mark.parametrize(("availability", "good", "events"), [
    ("{}", 6, 10),                           # default: shed requests (429, 503) count as failures
    ("{load_shedding: ignore}", 6, 8),       # shed requests left out of both sides
])
def test_availability_sorts_requests_by_outcome_under_the_specs_policy(
        availability: str, good: int, events: int, tmp_path: Path) -> None:
    """As the canary and the presets do: served requests are good, server errors (500, timeouts, cut streams)
    bad, shed requests as the policy says, client errors (400, 404, 422) never counted."""
    path = tmp_path / "spec.yaml"
    path.write_text(AVAILABILITY_SPEC.format(availability=availability), encoding="utf-8")
    from forge_slo.load.judge import judged_spec

    spec = judged_spec(str(path), None)
    assert spec is not None
    records = [_status(200)] * 6 + [_status(500), _status(None, "timeout"), _status(503), _status(429),
                                    _status(400), _status(404), _status(422)]
    res = {r["name"]: r for r in judge(records, spec.criteria)}
    assert (res["av"]["good"], res["av"]["events"]) == (good, events)
    assert res["av"]["left_out"] == 13 - events
    # Latency aliases map to the record field of their one meaning (ITL: every per-token value of the
    # successful requests); server-only ones are named as such.
    assert (res["itl"]["field"], res["itl"]["good"], res["itl"]["events"]) == ("itl_s", 6, 12)
    assert res["queue"]["judged"] is False and "'queue time', which only the server measures" in res["queue"]["reason"]


def test_saturation_is_queueing_that_grows_not_a_long_drain() -> None:
    """A queue that grows (each request waits longer for its first token) is saturation; a stage whose last
    answers are long, so its drain is long and served/s is below sent/s, is not."""
    def rec(t: float, ttft: float, e2e: float) -> RequestRecord:
        return RequestRecord(start_time=1000.0 + t, model="m", ok=True, ttft_s=ttft, e2e_s=e2e, output_tokens=10,
                             stage="rate=10")
    stage = {"name": "rate=10", "mode": "rate", "value": 10, "started_at": 1000.0, "measure_from": 1000.0,
             "ended_at": 1003.0}
    growing = [rec(i / 10, 0.05 + 2 * i / 10, 0.5 + 2 * i / 10) for i in range(30)]
    long_tail = [rec(i / 10, 0.05 + 0.01 * (i % 3), 0.5 if i < 25 else 6.0) for i in range(30)]
    (sat,) = build_summary(growing, {"stages": [stage]}, None)["stages"]
    (calm,) = build_summary(long_tail, {"stages": [stage]}, None)["stages"]
    # Served: 30 requests over first send -> last completion (2.9 + 6.0 s for the long tail), beside offered.
    assert calm["requests_per_s"] == pytest.approx(30 / 8.9) and calm["sent_per_s"] == pytest.approx(10.0)
    assert sat["saturated"] and sat["queue_growth_s_per_s"] == pytest.approx(2.0)
    assert "rose 5.80s over the stage" in sat["saturation"][0]
    assert not calm["saturated"] and calm["saturation"] == []
    shed = [*long_tail, RequestRecord(start_time=1001.0, model="m", ok=False, status=503, error_kind="http",
                                      e2e_s=0.01, stage="rate=10")]
    (stage_shed,) = build_summary(shed, {"stages": [{**stage, "dropped": 2}]}, None)["stages"]
    assert stage_shed["saturation"] == ["2 arrivals dropped at --max-in-flight",
                                        "the server shed 1 requests (429, 503)"]


def test_summary_and_report_of_an_empty_stage_and_a_sweep() -> None:
    run = {"stages": [{"name": "rate=1", "mode": "rate", "value": 1, "started_at": 0.0, "measure_from": 0.0,
                       "ended_at": 10.0},
                      {"name": "rate=2", "mode": "rate", "value": 2, "started_at": 10.0, "measure_from": 10.0,
                       "ended_at": 20.0}]}
    records = [_rec(0.1, 0.01, (0.01,)), RequestRecord(start_time=12.0, model="m", ok=False,
                                                      error_kind="timeout", stage="rate=2")]
    crits = (Criterion("ttft", "latency", 99, "ttft", 0.25),)
    summary = build_summary([dataclass_replace(records[0], stage="rate=1"), records[1]], run,
                            SpecInfo("svc", "spec.yaml", crits))
    assert [s["verdict"] for s in summary["stages"]] == ["pass", "fail"]
    assert summary["stages"][1]["latency"]["ttft_s"]["p50"] is None
    assert summary["verdict"] == "fail"
    html = render_report(summary, records)
    assert html.count("<svg") >= 3 and "SLO ttft" in html


def dataclass_replace(record: RequestRecord, **changes: Any) -> RequestRecord:
    import dataclasses

    return dataclasses.replace(record, **changes)


def test_arrival_processes_keep_their_mean_rate() -> None:
    for kind, burstiness in (("constant", 1.0), ("poisson", 1.0), ("gamma", 0.5), ("gamma", 4.0)):
        arrivals = Arrivals(kind, 20.0, burstiness, random.Random(1))
        intervals = [arrivals.interval() for _ in range(20000)]
        assert sum(intervals) / len(intervals) == pytest.approx(0.05, rel=0.05), kind
    bursty = Arrivals("gamma", 20.0, 0.25, random.Random(2))
    gaps = [bursty.interval() for _ in range(5000)]
    mean = sum(gaps) / len(gaps)
    cv = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean
    assert cv == pytest.approx(2.0, rel=0.15)  # 1 / sqrt(burstiness): burstier than Poisson


def test_flag_parsing() -> None:
    opts = options_from_namespace({"target": "http://127.0.0.1:8000/v1/", "model": "m", "sweep": "rate=1, 2.5,4",
                                   "duration": "2.5s", "warmup": "500ms", "output_tokens": "normal:100:10"})
    assert opts.target == "http://127.0.0.1:8000" and opts.endpoint == "/v1/chat/completions"
    assert [s.name for s in opts.stages] == ["rate=1", "rate=2.5", "rate=4"]
    assert (opts.duration_s, opts.warmup_s) == (2.5, 0.5)
    assert opts.output_tokens.mean == 100
    opts = options_from_namespace({"target": "http://h:1/gw", "model": "m", "concurrency": "3", "api": "completions"})
    assert opts.endpoint == "/gw/v1/completions" and opts.stages[0].name == "concurrency=3"
    assert parse_length("uniform:3:9").sample(random.Random(0)) in range(3, 10)


def test_options_and_messages_travel_as_json(tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    opts = options_from_namespace({"target": "http://127.0.0.1:8000", "model": "m", "sweep": "rate=0.5,2",
                                   "duration": "2.5s", "warmup": "500ms", "timeout": "1m30s", "api": "completions",
                                   "prompt_tokens": "uniform:3:9", "output_tokens": "normal:100:10",
                                   "dataset": str(data), "api_key": "k", "workers": 3, "max_requests": "7"})
    spec = SpecInfo("chat", "spec.yaml", (Criterion("ttft", "latency", 99.5, "ttft", 0.25),
                                          Criterion("av", "availability", 99.9),
                                          Criterion("gw", "unjudged", 99, reason="not judged client-side")))
    plan = EnginePlan(opts, spec, lifeline=True)
    line = plan.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one line on the engine's standard input
    assert EnginePlan.from_line(line) == plan
    assert EnginePlan.from_line(EnginePlan(opts).to_line()).spec is None
    assert WorkerSetup.from_dict(json.loads(json.dumps(WorkerSetup(opts).to_dict()))).options == opts
    command = StageCommand(index=1, name="rate=2", mode="rate", value=2.0, run=True, procs=2, users=2,
                           duration_s=2.5, warmup_s=0.5, rate_per_user=1.0, max_requests=7)
    assert StageCommand.from_dict(json.loads(json.dumps(command.to_dict()))) == command
    assert command.stopped().run is False
    report = WorkerReport(index=1, run=True, in_flight=3, sent=9, dropped=1, max_lag_s=0.002, quota_done=False,
                          configured=True, lines=('{"a": 1}',))
    assert WorkerReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    # A message from another machine is checked field by field; a wrong one names the field.
    for bad, field in (({**report.to_dict(), "sent": "9"}, "'sent' is not a whole number"),
                       ({**report.to_dict(), "lines": [1]}, "'lines' is not a list of strings"),
                       ({k: v for k, v in command.to_dict().items() if k != "users"}, "no 'users'")):
        with pytest.raises(RunnerError, match=field):
            (WorkerReport if "lines" in bad else StageCommand).from_dict(bad)
    with pytest.raises(RunnerError, match=r"load options: stages\[0\]: 'mode' is not one of rate, concurrency"):
        LoadOptions.from_dict({**opts.to_dict(), "stages": [{"mode": "users", "value": 1}]})


def test_the_test_process_never_imports_locust() -> None:
    assert "locust" not in sys.modules and "gevent" not in sys.modules
