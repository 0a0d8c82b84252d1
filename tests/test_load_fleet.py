"""forge-slo load around the run itself, against real processes on 127.0.0.1: the check request before any stage,
the server's metrics read during the run (scraped, or from a real Prometheus), a master with workers started as
separate processes (as on other machines), comparing two runs, and the Kubernetes manifests."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from loopback_http import serve_handler
from prom_fixture import prometheus_available, start_prometheus

from forge_slo.runtime.process import free_port
from forge_slo.sim import SimProcess
from forge_slo.sources.records import read_records

ROOT = Path(__file__).resolve().parents[1]
SPEC = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: chat
preset: vllm
slos:
  - {name: ttft, objective: 90, sli: {latency: {metric: ttft, threshold: 0.5}}}
  - {name: availability, objective: 99, sli: {availability: {}}}
"""


def _model(name: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": name, "prefill_base_s": 0.03, "prefill_per_token_s": 0.0, "itl_s": 0.01,
                            "itl_distribution": "fixed", "itl_stddev_s": 0.0, "batch_slowdown": 0.0,
                            "output_tokens": {"distribution": "fixed", "value": 10}}
    base.update(kw)
    return base


# "narrow" serves 2 at a time, 0.03 + 9 x 0.01 = 0.12 s each: about 16 requests/s; more wait in its queue.
TOKENS = 10
SIM_CONFIG = {"seed": 7, "models": [_model("fast"), _model("narrow", max_num_seqs=2)]}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(SIM_CONFIG) as proc:
        yield proc


@pytest.fixture()
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC, encoding="utf-8")
    return path


def forge_load(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    if args[:1] not in (["manifests"], ["compare"]):
        args = ("--output-tokens", str(TOKENS), *args)
    return subprocess.run([sys.executable, "-m", "forge_slo.load", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def summary_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return data


# ---------------------------------------------------------------------------------------------------------
# The check request


class _KeyedHandler(http.server.BaseHTTPRequestHandler):
    """An OpenAI-like server that wants one API key: anything else is a 401 with OpenAI's error body."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Authorization") == "Bearer right-key":
            body = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"length"}]}\n\n' \
                   b"data: [DONE]\n\n"
            status, ctype = 200, "text/event-stream"
        else:
            body = json.dumps({"error": {"message": "Incorrect API key provided: wrong-key.", "type":
                                         "invalid_request_error", "code": "invalid_api_key"}}).encode()
            status, ctype = 401, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def keyed_server() -> contextlib.AbstractContextManager[str]:
    return serve_handler(_KeyedHandler)


def _closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


@pytest.mark.parametrize(("case", "message"), [
    ("model", "HTTP 404: The model `llama-7b` does not exist."),
    ("endpoint", "HTTP 404"),
    ("port", "Connection refused"),
    ("key", "HTTP 401: Incorrect API key provided: wrong-key."),
])
def test_the_check_request_ends_a_bad_run_at_once(case: str, message: str, sim: SimProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = {"model": ["--target", sim.url, "--model", "llama-7b"],
            "endpoint": ["--target", sim.url, "--model", "fast", "--endpoint", "/v2/chat/completions"],
            "port": ["--target", f"http://127.0.0.1:{_closed_port()}", "--model", "fast"],
            "key": ["--model", "m", "--api-key", "wrong-key"]}[case]
    with keyed_server() as keyed:
        if case == "key":
            args = ["--target", keyed, *args]
        started = time.monotonic()
        proc = forge_load(*args, "--rate", "5", "--duration", "30s", "--out", str(out), "--progress", "off")
        elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "the check request" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 20  # no 30 s stage was sent
    assert not (out / "records.jsonl").exists() and not (out / "report.html").exists()


def test_the_right_key_passes_the_check(tmp_path: Path) -> None:
    with keyed_server() as keyed:
        proc = forge_load("--target", keyed, "--model", "m", "--api-key", "right-key", "--concurrency", "1",
                          "--max-requests", "2", "--duration", "5s", "--output-tokens", "1", "--out",
                          str(tmp_path / "out"), "--progress", "off")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(read_records(tmp_path / "out" / "records.jsonl")) == 2


# ---------------------------------------------------------------------------------------------------------
# The server's view


def test_the_servers_metrics_are_recorded_and_charted(sim: SimProcess, spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # 30 requests/s for 3 s at a model that serves about 16: requests wait in the server's queue.
    proc = forge_load("--target", sim.url, "--model", "narrow", "--rate", "30", "--arrival", "constant",
                      "--duration", "3s", "--spec", str(spec_file), "--out", str(out), "--progress", "off")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    lines = (out / "server_metrics.jsonl").read_text(encoding="utf-8").splitlines()
    meta = json.loads(lines[0])["meta"]
    # The names come from the spec's preset (vLLM's), not typed anywhere in the load generator.
    assert meta["preset"] == "vllm" and meta["series"]["waiting"] == "vllm:num_requests_waiting"
    assert meta["source"] == f"{sim.url}/metrics"
    samples = [json.loads(line) for line in lines[1:]]
    assert len(samples) >= 3  # one a second
    assert all(b["t"] - a["t"] < 2.5 for a, b in zip(samples, samples[1:], strict=False))
    assert max(s["running"] for s in samples) == 2  # its two slots
    assert max(s["waiting"] for s in samples) >= 3
    assert max(s["kv_cache_usage"] for s in samples) > 0
    (stage,) = summary_of(out)["stages"]
    server = stage["server"]
    # The server's TTFT (from its histogram) is its own: at least the prefill, at most what the client saw.
    assert server["ttft_p50"] is not None and 0.03 <= server["ttft_p50"] <= stage["latency"]["ttft_s"]["p99"] + 0.5
    assert server["waiting_mean"] > 0 and server["running_mean"] > 1
    report = (out / "report.html").read_text(encoding="utf-8")
    for title in ("The server's view", "Server: requests running and waiting", "Server: KV-cache usage",
                  "TTFT, server and client"):
        assert title in report
    # A run of a few seconds still draws the TTFT over time: its windows are shorter than 5 s, each line
    # has points inside the chart (a window's middle never lies past the end of the run).
    chart = report[report.index("TTFT, server and client"):]
    chart = chart[:chart.index("</svg>")]
    assert "over 5 s windows" not in chart
    lines = re.findall(r'<polyline[^>]*points="([^"]+)"', chart)
    assert len(lines) >= 2, chart  # client's and server's p50 and p99
    xs = [float(p.split(",")[0]) for pts in lines for p in pts.split()]
    assert max(len(pts.split()) for pts in lines) >= 2 and len(set(xs)) >= 2, lines


def test_a_server_without_the_presets_series_is_said_once(sim: SimProcess, tmp_path: Path) -> None:
    proc = forge_load("--target", sim.url, "--model", "fast", "--rate", "5", "--duration", "2s",
                      "--server-preset", "tgi", "--out", str(tmp_path / "out"), "--progress", "off")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("has none of the tgi series") == 1, proc.stderr
    assert "The server's view" not in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


@pytest.mark.skipif(not prometheus_available(), reason="needs Debian's prometheus (scripts/test.sh installs it)")
def test_the_servers_metrics_from_a_prometheus(sim: SimProcess, tmp_path: Path) -> None:
    prom = start_prometheus(tmp_path, [f"127.0.0.1:{sim.port}"], interval="1s", job="vllm")
    try:
        prom.wait_for('up{job="vllm"} == 1')
        out = tmp_path / "out"
        proc = forge_load("--target", sim.url, "--model", "narrow", "--rate", "30", "--arrival", "constant",
                          "--duration", "3s", "--prometheus", prom.url, "--prometheus-selector", 'job="vllm"',
                          "--out", str(out), "--progress", "off")
    finally:
        prom.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (out / "server_metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["meta"]["source"] == f'{prom.url} ({{job="vllm"}})'
    samples = [json.loads(line) for line in lines[1:]]
    assert samples and max(s["waiting"] for s in samples) >= 1 and max(s["running"] for s in samples) == 2
    assert samples[-1]["ttft_buckets"] and samples[-1]["ttft_count"] > 0


# ---------------------------------------------------------------------------------------------------------
# A master and workers in separate processes, as on separate machines


def test_workers_started_elsewhere_join_one_run(sim: SimProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    port = free_port()
    master = subprocess.Popen(
        [sys.executable, "-m", "forge_slo.load", "--target", sim.url, "--model", "fast", "--rate", "20",
         "--output-tokens", str(TOKENS),
         "--arrival", "constant", "--duration", "3s", "--master", "--expect-workers", "2", "--master-bind-port",
         str(port), "--out", str(out), "--progress", "off"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    workers = [subprocess.Popen([sys.executable, "-m", "forge_slo.load", "--worker", "--master-host", "127.0.0.1",
                                 "--master-port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
               for _ in range(2)]
    try:
        stdout, stderr = master.communicate(timeout=90)
        logs = [w.communicate(timeout=30)[0] for w in workers]  # the master's end ends its workers
        codes = [w.returncode for w in workers]
    finally:
        for proc in (master, *workers):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert master.returncode == 0, stdout + stderr
    assert "waiting for 2 worker(s)" in stdout and "2 worker(s) connected" in stdout
    assert codes == [0, 0], logs
    records = read_records(out / "records.jsonl")
    assert Counter(r.extra.get("worker") for r in records).keys() == {0, 1}
    s = summary_of(out)
    assert s["workers"] == 2
    (stage,) = s["stages"]
    assert stage["requests"] == len(records) and stage["failed"] == 0
    assert 0.8 * 20 <= stage["sent_per_s"] <= 1.15 * 20, stage["sent_per_s"]
    assert (out / "report.html").is_file()


def test_a_master_without_its_workers_gives_up_with_a_message(sim: SimProcess, tmp_path: Path) -> None:
    proc = forge_load("--target", sim.url, "--model", "fast", "--rate", "5", "--duration", "2s", "--master",
                      "--expect-workers", "1", "--master-bind-port", str(free_port()), "--worker-wait", "2s",
                      "--out", str(tmp_path / "out"), "--progress", "off")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "0 of 1 workers connected within --worker-wait 2s" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_manifests_run_a_master_and_a_scalable_set_of_workers(tmp_path: Path) -> None:
    proc = forge_load("manifests", "--image", "registry.example/forge-slo:1", "--workers", "3", "--namespace",
                      "load", "--", "--target", "http://vllm:8000", "--model", "llama", "--rate", "50",
                      "--duration", "5m")
    assert proc.returncode == 0, proc.stderr
    job, service, deployment = yaml.safe_load_all(proc.stdout)
    assert (job["kind"], service["kind"], deployment["kind"]) == ("Job", "Service", "Deployment")
    master = job["spec"]["template"]["spec"]["containers"][0]
    assert master["args"][:8] == ["load", "--target", "http://vllm:8000", "--model", "llama", "--rate", "50",
                                  "--duration"]
    assert {"--master", "--expect-workers", "3", "0.0.0.0"} <= set(master["args"])
    worker = deployment["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"] == ["load", "--worker", "--master-host", "forge-slo-load-master", "--master-port", "5557"]
    assert deployment["spec"]["replicas"] == 3 and service["metadata"]["name"] == "forge-slo-load-master"
    assert service["spec"]["selector"] == job["spec"]["template"]["metadata"]["labels"]
    assert all(obj["metadata"]["namespace"] == "load" for obj in (job, service, deployment))
    again = forge_load("manifests", "--image", "registry.example/forge-slo:1", "--workers", "3", "--namespace",
                       "load", "--", "--target", "http://vllm:8000", "--model", "llama", "--rate", "50",
                       "--duration", "5m")
    assert again.stdout == proc.stdout  # deterministic
    bad = forge_load("manifests", "--image", "i", "--", "--target", "http://vllm:8000", "--model", "m",
                     "--rate", "-3")
    assert bad.returncode == 2 and "--rate" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------------------
# Two runs compared


def test_two_runs_compared_before_and_after(sim: SimProcess, tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    common = ("--target", sim.url, "--model", "fast", "--sweep", "rate=4,8", "--duration", "2s",
              "--progress", "off", "--server-metrics", "off")
    assert forge_load(*common, "--out", str(before)).returncode == 0
    httpx.post(f"{sim.url}/admin/faults", json={"kind": "latency", "ttft_add_s": 0.2}, timeout=10).raise_for_status()
    try:
        assert forge_load(*common, "--out", str(after)).returncode == 0
    finally:
        httpx.delete(f"{sim.url}/admin/faults", timeout=10).raise_for_status()
    page = tmp_path / "cmp.html"
    proc = forge_load("compare", str(before), str(after), "--out", str(page))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    ttft = [r for r in rows if r[:3] in (["rate=4", "TTFT", "p50"], ["rate=8", "TTFT", "p50"])]
    assert len(ttft) == 2
    for row in ttft:  # stage figure A B change better/worse: 200 ms more TTFT is much worse
        assert row[-1] == "worse" and float(row[-2].rstrip("%")) > 100, row
    html = page.read_text(encoding="utf-8")
    assert html.count("<svg") >= 4 and "before" in html and "after" in html
    assert "TTFT: before and after (dashed)" in html
    missing = forge_load("compare", str(before), str(tmp_path / "nope"))
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
