"""Benchmark: how fast SIGTERM stops each server while 20 clients use it. Target: within 2 s, every time.

For each server -- the GPU exporter (fake fleet), the simulator, the canary gate (its Prometheus hung: a
socket that completes the TCP handshake and never answers, or slow: answers after 2 s) -- ``--runs`` times:

1. start it as a child process on 127.0.0.1, port 0, and wait until it listens;
2. start ``--clients`` concurrent clients (exporter: scrapers, half on keep-alive connections, half opening a
   connection per scrape; simulator: streaming chat completions of 5000 tokens; gate: Argo GET /v1/argo and
   Flagger POST /v1/flagger/rollout looks) and wait until every one has a request in flight (and, for the
   exporter and the simulator, has had a first answer);
3. send SIGTERM and time until the process has exited. Every other run addresses the signal to one of the
   server's threads other than the main one, when it has one: the kernel may hand a process-directed signal
   to any thread, and this makes that case certain instead of rare.

A server still alive 10 s after the signal is killed and counted as hung. Prints, per server: runs, hung,
exit codes other than 0, p50 and max stop time against the 2 s target. Loopback only; every loop is bounded
in count and time (``--max-seconds`` for the whole benchmark). No assertions: numbers depend on the machine.

    PYTHONPATH=. python benchmarks/shutdown.py [--runs 20] [--clients 20] [--servers exporter,sim,gate-hung]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FLEET = REPO / "experiments" / "fleets" / "bench-8gpu.yaml"
TARGET_S = 2.0
HUNG_AFTER_S = 10.0
TOKEN = "shutdown-bench-token"
SPEC = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: sim
preset: vllm
slos:
  - name: ttft
    objective: 99
    sli: {latency: {metric: ttft, threshold: 0.25}}
  - name: availability
    objective: 99.9
    sli: {availability: {}}
"""
SERVERS = ("exporter", "sim", "gate-hung", "gate-slow")


@dataclass
class Server:
    """A server child process and where it listens."""

    process: subprocess.Popen[bytes]
    host_port: str
    log: Path


@dataclass
class Clients:
    """Client threads: each counts requests sent and answers seen, and stops when ``stop`` is set."""

    stop: threading.Event = field(default_factory=threading.Event)
    sent: list[int] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, n: int, loop: Callable[[int, Clients], None]) -> None:
        self.sent = [0] * n
        self.answered = [0] * n
        for i in range(n):
            thread = threading.Thread(target=loop, args=(i, self), daemon=True)
            self.threads.append(thread)
            thread.start()

    def busy(self, need_answer: bool) -> bool:
        counts = self.answered if need_answer else self.sent
        return all(c > 0 for c in counts)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


def _wait_ready(process: subprocess.Popen[bytes], ready: Path, log: Path, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while not ready.exists() or not ready.read_text(encoding="utf-8").strip():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise SystemExit(f"the server did not start:\n{log.read_text(encoding='utf-8', errors='replace')}")
        time.sleep(0.05)
    info = json.loads(ready.read_text(encoding="utf-8"))
    return f"127.0.0.1:{info['port']}"


def start_exporter(tmp: Path) -> Server:
    log = tmp / "exporter.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "forge_slo.telemetry", "--port", "0", "--host", "127.0.0.1", "--fake-fleet",
             str(FLEET), "--interval", "200ms"],
            stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL, env=_env(), cwd=REPO)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    process.stdout.close()
    if not line.startswith("listening on http://"):
        process.kill()
        process.wait()
        raise SystemExit(f"the exporter did not start: {line!r}\n{log.read_text()}")
    return Server(process, line.split("//", 1)[1].split("/", 1)[0], log)


def start_sim(tmp: Path) -> Server:
    ready, log = tmp / "sim.json", tmp / "sim.log"
    config = tmp / "sim.yaml"
    config.write_text("models:\n  - name: m\n    max_num_seqs: 256\n    itl_s: 0.005\n", encoding="utf-8")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "forge_slo.sim", "--port", "0", "--host", "127.0.0.1", "--config", str(config),
             "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(), cwd=REPO)
    return Server(process, _wait_ready(process, ready, log), log)


def start_gate(tmp: Path, prometheus: str) -> Server:
    spec, ready, log = tmp / "sim.slo.yaml", tmp / "gate.json", tmp / "gate.log"
    spec.write_text(SPEC, encoding="utf-8")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "forge_slo.canary", "gate", "serve", "--spec", str(spec), "--prometheus",
             prometheus, "--port", "0", "--host", "127.0.0.1", "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(_env(), FORGE_SLO_GATE_TOKEN=TOKEN), cwd=REPO)
    return Server(process, _wait_ready(process, ready, log), log)


# ------------------------------------------------------------------------------------------------- clients

def _connection(host_port: str, timeout_s: float) -> http.client.HTTPConnection:
    host, port = host_port.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=timeout_s)


def scraper(host_port: str) -> Callable[[int, Clients], None]:
    def loop(i: int, clients: Clients) -> None:
        keep_alive = i % 2 == 0
        conn: http.client.HTTPConnection | None = None
        while not clients.stop.is_set():
            try:
                conn = conn or _connection(host_port, 5)
                clients.sent[i] += 1
                conn.request("GET", "/metrics", headers={} if keep_alive else {"Connection": "close"})
                conn.getresponse().read()
                clients.answered[i] += 1
                if not keep_alive:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()
    return loop


def streamer(host_port: str) -> Callable[[int, Clients], None]:
    body = json.dumps({"model": "m", "max_tokens": 5000, "stream": True,
                       "messages": [{"role": "user", "content": "hello " * 50}]})

    def loop(i: int, clients: Clients) -> None:
        while not clients.stop.is_set():
            conn = _connection(host_port, 10)
            try:
                clients.sent[i] += 1
                conn.request("POST", "/v1/chat/completions", body=body,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                while not clients.stop.is_set() and response.read1(65536):
                    clients.answered[i] += 1
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
            finally:
                conn.close()
    return loop


ARGO = ("/v1/argo?service=sim&baseline=deployment%3Dbaseline&canary=deployment%3Dcanary&window=30m"
        "&interval=1m&session=")


def looker(host_port: str) -> Callable[[int, Clients], None]:
    def loop(i: int, clients: Clients) -> None:
        while not clients.stop.is_set():
            conn = _connection(host_port, 30)
            try:
                clients.sent[i] += 1
                if i % 2 == 0:
                    conn.request("GET", f"{ARGO}{i}", headers={"Authorization": f"Bearer {TOKEN}"})
                else:
                    payload = {"name": f"c{i}", "namespace": "bench", "phase": "Progressing", "checksum": "1",
                               "metadata": {"service": "sim", "baseline": "deployment=baseline",
                                            "canary": "deployment=canary", "token": TOKEN}}
                    conn.request("POST", "/v1/flagger/rollout", body=json.dumps(payload),
                                 headers={"Content-Type": "application/json"})
                conn.getresponse().read()
                clients.answered[i] += 1
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
            finally:
                conn.close()
    return loop


# ------------------------------------------------------------------------------------------- Prometheus

class HungPrometheus:
    """A listening socket that never accepts: connections complete, requests are never answered."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


class SlowPrometheus:
    """Answers every API call with an empty result after ``delay_s``, as an overloaded Prometheus would."""

    def __init__(self, delay_s: float = 2.0) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                time.sleep(delay_s)
                body = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the gate hangs up on slow answers when it stops: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------------- runs

@dataclass
class Outcome:
    seconds: float | None  # None: hung (killed)
    code: int | None
    to_thread: bool


def _other_thread(pid: int) -> int | None:
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None
    others = [t for t in tids if t != pid]
    return others[len(others) // 2] if others else None


def one_run(kind: str, tmp: Path, n_clients: int, to_thread: bool) -> Outcome:
    prometheus: HungPrometheus | SlowPrometheus | None = None
    if kind == "exporter":
        server, loop, need_answer = start_exporter(tmp), scraper, True
    elif kind == "sim":
        server, loop, need_answer = start_sim(tmp), streamer, True
    else:
        prometheus = HungPrometheus() if kind == "gate-hung" else SlowPrometheus()
        server, loop, need_answer = start_gate(tmp, prometheus.url), looker, False
    clients = Clients()
    try:
        clients.start(n_clients, loop(server.host_port))
        deadline = time.monotonic() + 10
        while not clients.busy(need_answer) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # let the requests get into the server's handlers
        target = (_other_thread(server.process.pid) if to_thread else None) or server.process.pid
        started = time.monotonic()
        os.kill(target, signal.SIGTERM)
        try:
            code: int | None = server.process.wait(HUNG_AFTER_S)
            seconds: float | None = time.monotonic() - started
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
            code, seconds = None, None
        return Outcome(seconds, code, target != server.process.pid)
    finally:
        clients.finish()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        if prometheus is not None:
            prometheus.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--servers", default="exporter,sim,gate-hung,gate-slow",
                        help=f"comma-separated, of {', '.join(SERVERS)}")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop starting runs after this long")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SERVERS]
    if unknown or not 1 <= args.runs <= 200 or not 1 <= args.clients <= 200:
        parser.error(f"bad --servers {unknown}, or --runs/--clients out of 1-200")
    budget_end = time.monotonic() + args.max_seconds
    print(f"SIGTERM under {args.clients} concurrent clients; target: exit within {TARGET_S:g}s; "
          f"hung = alive {HUNG_AFTER_S:g}s after the signal", flush=True)
    print(f"{'server':<10} {'runs':>4} {'hung':>4} {'rc!=0':>5} {'p50 s':>7} {'max s':>7}  "
          f"{'to a thread':>11}  verdict", flush=True)
    failed = False
    with tempfile.TemporaryDirectory(prefix="forge-slo-shutdown-") as tmp_dir:
        for kind in kinds:
            outcomes: list[Outcome] = []
            for i in range(args.runs):
                if time.monotonic() > budget_end:
                    break
                run_dir = Path(tmp_dir) / f"{kind}-{i}"
                run_dir.mkdir()
                outcomes.append(one_run(kind, run_dir, args.clients, to_thread=i % 2 == 1))
            times = [o.seconds for o in outcomes if o.seconds is not None]
            hung = sum(o.seconds is None for o in outcomes)
            bad_codes = sum(o.code not in (0, None) for o in outcomes)
            p50 = statistics.median(times) if times else float("nan")
            worst = max(times) if times and not hung else float("inf")
            ok = bool(outcomes) and not hung and not bad_codes and worst <= TARGET_S
            failed |= not ok
            print(f"{kind:<10} {len(outcomes):>4} {hung:>4} {bad_codes:>5} {p50:>7.2f} {worst:>7.2f}  "
                  f"{sum(o.to_thread for o in outcomes):>11}  {'ok' if ok else 'MISSED'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
