"""How much error and CPU does forge-slo's Locust client add to what it measures?

Starts the simulator (one process, pinned to CPU 0 when there are several) with a fixed TTFT and a fixed
inter-token time, so every deviation a client sees is the simulator's own lag plus the client's. Then, at
10, 100, 500 and 1,000 concurrent streams, drives it with:

- ``forge-slo``: the load engine (``python -m forge_slo.load.engine``, what ``forge-slo load`` runs), one
  Locust process, closed loop, pinned to CPU 1;
- ``aiohttp``: a minimal asyncio + aiohttp client in the style of vLLM's ``benchmark_serving.py`` (iterate
  ``response.content`` line by line, ``json.loads`` each event), same pinning.

Per step and client it prints the client-added error of TTFT and ITL (measured minus configured, p50 and p99),
requests/s, tokens/s, client CPU per output token and tokens/s per client core, plus the simulator's own lag
(``/debug/stats``) over the same run, and a table of ratios forge-slo / aiohttp.

    python benchmarks/load_fidelity.py                     # about 2.5 minutes
    python benchmarks/load_fidelity.py --levels 10,100 --window 3s

Targets: at 100 streams TTFT error p99 under 2 ms, and CPU per token no more than the aiohttp client's in the
same run. Loopback only; every run is bounded in time. It is a report: it exits 0 unless a client fails to run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forge_slo.durations import duration_flag  # noqa: E402
from forge_slo.sim import SimProcess  # noqa: E402

TTFT_S = 0.05
ITL_S = 0.04
OUTPUT_TOKENS = 32
MODEL = "bench"
TARGET_TTFT_P99_ERR_MS = 2.0


@dataclass
class Result:
    client: str
    streams: int
    requests: int
    failed: int
    window_s: float
    tokens: int
    cpu_s: float
    ttft_err_ms: tuple[float, float]
    itl_err_ms: tuple[float, float]
    sim_lag_ms: tuple[float, float] = (float("nan"), float("nan"))
    other_load: float = float("nan")  # share of the client's CPU taken by other processes in the window

    @property
    def requests_per_core_s(self) -> float:
        return self.requests / self.cpu_s if self.cpu_s else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.window_s if self.window_s else 0.0

    @property
    def tps(self) -> float:
        return self.tokens / self.window_s if self.window_s else 0.0

    @property
    def us_per_token(self) -> float:
        return self.cpu_s / self.tokens * 1e6 if self.tokens else float("nan")

    @property
    def tokens_per_core_s(self) -> float:
        return self.tokens / self.cpu_s if self.cpu_s else float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def core_busy_seconds(cpu: int | None) -> float:
    """Busy time of one CPU (all processes), from /proc/stat; 0 when not pinned."""
    if cpu is None:
        return 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    return 0.0


class Sampler:
    """Samples a process's CPU time and its core's busy time every 0.1 s until the process exits."""

    def __init__(self, pid: int, cpu: int | None) -> None:
        self.pid = pid
        self.cpu = cpu
        self.samples: list[tuple[float, float, float]] = []

    def run(self, is_alive: Any, limit_s: float) -> None:
        deadline = time.time() + limit_s
        while is_alive() and time.time() < deadline:
            try:
                self.samples.append((time.time(), cpu_seconds(self.pid), core_busy_seconds(self.cpu)))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.1)

    def window(self, t0: float, t1: float) -> tuple[float, float]:
        """(process CPU seconds, share of the core other processes used) between two wall times."""
        ts = np.array([s[0] for s in self.samples])
        proc = np.array([s[1] for s in self.samples])
        core = np.array([s[2] for s in self.samples])
        own = float(np.interp(t1, ts, proc) - np.interp(t0, ts, proc))
        busy = float(np.interp(t1, ts, core) - np.interp(t0, ts, core))
        other = max(0.0, busy - own) / (t1 - t0) if self.cpu is not None and t1 > t0 else float("nan")
        return own, other


def errors_ms(values: list[float], expected: float) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    arr = (np.asarray(values) - expected) * 1000
    p50, p99 = np.percentile(arr, (50, 99))
    return float(p50), float(p99)


def sim_stats(url: str, reset: bool = False) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/debug/stats{'?reset=1' if reset else ''}", timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def pin(pid: int, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


# -- forge-slo: the load engine, as forge-slo load runs it -------------------------------------------------

def run_forge(url: str, streams: int, warmup: float, window: float, client_cpu: int | None) -> Result:
    from forge_slo.load.messages import EnginePlan
    from forge_slo.load.options import LoadOptions, Stage, endpoint_for
    from forge_slo.load.workload import LengthDist
    from forge_slo.runtime.process import child_env, python_module

    out = Path(tempfile.mkdtemp(prefix="forge-load-bench-"))
    options = LoadOptions(target=url, endpoint=endpoint_for("chat"), model=MODEL,
                          stages=(Stage("concurrency", streams),), duration_s=warmup + window, warmup_s=warmup,
                          prompt_tokens=LengthDist("fixed", 16), output_tokens=LengthDist("fixed", OUTPUT_TOKENS),
                          timeout_s=30.0, out=str(out), progress="off")
    proc = subprocess.Popen(python_module("forge_slo.load.engine"), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env())
    pin(proc.pid, client_cpu)
    assert proc.stdin is not None
    proc.stdin.write(EnginePlan(options).to_line())
    proc.stdin.close()
    sampler = Sampler(proc.pid, client_cpu)
    sampler.run(lambda: proc.poll() is None, warmup + window + 60)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise SystemExit(f"forge-slo engine failed at {streams} streams:\n{stderr}")
    run = json.loads((out / "run.json").read_text())
    stage = run["stages"][0]
    t0, t1 = stage["measure_from"], stage["ended_at"]
    cpu_window, other = sampler.window(t0, t1)
    ttft, itl, tokens, ok, failed = [], [], 0, 0, 0
    with (out / "records.jsonl").open() as handle:
        for line in handle:
            r = json.loads(line)
            if r["warmup"] or not (t0 <= r["start_time"] <= t1):
                continue
            if not r["ok"]:
                failed += 1
                continue
            ok += 1
            tokens += r["output_tokens"] or 0
            ttft.append(r["ttft_s"])
            itl.extend(r["itl_s"])
    return Result("forge-slo", streams, ok, failed, t1 - t0, tokens, cpu_window, errors_ms(ttft, TTFT_S),
                  errors_ms(itl, ITL_S), other_load=other)


# -- baseline: asyncio + aiohttp in the style of vLLM's benchmark_serving.py ------------------------------

async def _baseline(url: str, streams: int, warmup: float, window: float) -> dict[str, Any]:
    import aiohttp

    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 12}], "max_tokens": OUTPUT_TOKENS,
            "stream": True, "stream_options": {"include_usage": True}}
    api = f"{url}/v1/chat/completions"
    t_start = time.perf_counter()
    t0, t1 = t_start + warmup, t_start + warmup + window
    wall = time.time() - t_start
    out: dict[str, Any] = {"ttft": [], "itl": [], "tokens": 0, "ok": 0, "failed": 0, "t0_wall": t0 + wall,
                           "t1_wall": t1 + wall}
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        stagger = min(1.0, 0.05 * (warmup + window))  # start the streams spread out, as forge-slo does

        async def one(index: int) -> None:
            await asyncio.sleep(stagger * index / streams)
            while time.perf_counter() < t1:
                st = time.perf_counter()
                ttft = 0.0
                itl: list[float] = []
                last = st
                tokens = 0
                try:
                    async with session.post(api, json=body) as response:
                        if response.status != 200:
                            raise RuntimeError(response.status)
                        async for chunk_bytes in response.content:
                            chunk_bytes = chunk_bytes.strip()
                            if not chunk_bytes:
                                continue
                            chunk = chunk_bytes.decode("utf-8").removeprefix("data: ")
                            if chunk == "[DONE]":
                                continue
                            timestamp = time.perf_counter()
                            data = json.loads(chunk)
                            if data.get("usage"):
                                tokens = data["usage"]["completion_tokens"]
                            if data["choices"] and data["choices"][0]["delta"].get("content"):
                                if ttft == 0.0:
                                    ttft = timestamp - st
                                else:
                                    itl.append(timestamp - last)
                                last = timestamp
                    ok = True
                except Exception:  # noqa: BLE001 - counted
                    ok = False
                if t0 <= st <= t1:
                    if ok:
                        out["ok"] += 1
                        out["tokens"] += tokens
                        out["ttft"].append(ttft)
                        out["itl"].extend(itl)
                    else:
                        out["failed"] += 1

        await asyncio.gather(*(one(i) for i in range(streams)))
    return out


def _baseline_process(url: str, streams: int, warmup: float, window: float, cpu: int | None, conn: Any) -> None:
    pin(0, cpu)
    try:
        conn.send(asyncio.run(_baseline(url, streams, warmup, window)))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        conn.send({"error": repr(exc)})
    conn.close()


def run_baseline(url: str, streams: int, warmup: float, window: float, client_cpu: int | None) -> Result:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_baseline_process, args=(url, streams, warmup, window, client_cpu, child))
    proc.start()
    child.close()
    assert proc.pid is not None
    sampler = Sampler(proc.pid, client_cpu)
    sampler.run(lambda: not parent.poll(), warmup + window + 60)
    if not parent.poll(5):
        proc.kill()
        raise SystemExit(f"the aiohttp client did not finish at {streams} streams")
    data = parent.recv()
    proc.join(10)
    if "error" in data:
        raise SystemExit(f"the aiohttp client failed at {streams} streams: {data['error']}")
    cpu, other = sampler.window(data["t0_wall"], data["t1_wall"])
    return Result("aiohttp", streams, data["ok"], data["failed"], window, data["tokens"], cpu,
                  errors_ms(data["ttft"], TTFT_S), errors_ms(data["itl"], ITL_S), other_load=other)


# -- report -----------------------------------------------------------------------------------------------

def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="10,100,500,1000", help="concurrent streams per step")
    parser.add_argument("--window", type=duration_flag(), default="4s", help="measured time per run (default 4s)")
    parser.add_argument("--warmup", type=duration_flag(), default="2s", help="time before measuring (default 2s)")
    parser.add_argument("--clients", default="forge-slo,aiohttp", help="which clients to run")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    clients = [c.strip() for c in args.clients.split(",")]
    cpus = sorted(os.sched_getaffinity(0))
    sim_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    config = {"seed": 1, "models": [{
        "name": MODEL, "max_num_seqs": 4096, "kv_cache_tokens": 10_000_000, "prefill_base_s": TTFT_S,
        "prefill_per_token_s": 0.0, "itl_s": ITL_S, "itl_distribution": "fixed", "itl_stddev_s": 0.0,
        "batch_slowdown": 0.0, "output_tokens": {"distribution": "fixed", "value": OUTPUT_TOKENS}}]}
    print(f"simulator: TTFT {TTFT_S * 1000:.0f} ms, ITL {ITL_S * 1000:.0f} ms fixed, {OUTPUT_TOKENS} output tokens; "
          f"sim on CPU {sim_cpu}, client on CPU {client_cpu}; {args.warmup:g}s warm-up + {args.window:g}s measured")
    results: list[Result] = []
    started = time.time()
    with SimProcess(config, cpu=sim_cpu) as sim:
        for streams in levels:
            for client in clients:
                sim_stats(sim.url, reset=True)
                if client == "forge-slo":
                    result = run_forge(sim.url, streams, args.warmup, args.window, client_cpu)
                else:
                    result = run_baseline(sim.url, streams, args.warmup, args.window, client_cpu)
                lag = sim_stats(sim.url)["first_token_lag_s"]
                result.sim_lag_ms = (lag["p50"] * 1000, lag["p99"] * 1000)
                results.append(result)
                print(f"  {client:<9} {streams:>5} streams: {result.rps:7.1f} req/s {result.tps:9.0f} tok/s "
                      f"TTFT err p99 {fmt(result.ttft_err_ms[1], 2)} ms, {fmt(result.us_per_token)} us CPU/token",
                      flush=True)
    print()
    head = ("client", "streams", "req/s", "tok/s", "failed", "TTFT err p50/p99 ms", "ITL err p50/p99 ms",
            "sim lag p50/p99 ms", "CPU us/token", "req/s per core", "tok/s per core", "other load")
    rows = [head]
    for r in results:
        rows.append((r.client, str(r.streams), fmt(r.rps), fmt(r.tps, 0), str(r.failed),
                     f"{fmt(r.ttft_err_ms[0], 2)} / {fmt(r.ttft_err_ms[1], 2)}",
                     f"{fmt(r.itl_err_ms[0], 2)} / {fmt(r.itl_err_ms[1], 2)}",
                     f"{fmt(r.sim_lag_ms[0], 2)} / {fmt(r.sim_lag_ms[1], 2)}", fmt(r.us_per_token),
                     fmt(r.requests_per_core_s, 0), fmt(r.tokens_per_core_s, 0), f"{fmt(r.other_load * 100, 0)}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    by = {(r.client, r.streams): r for r in results}
    if set(clients) >= {"forge-slo", "aiohttp"}:
        print("\nratios forge-slo / aiohttp (CPU per token: below 1 is cheaper; TTFT error p99: below 1 is closer)")
        for streams in levels:
            f, a = by.get(("forge-slo", streams)), by.get(("aiohttp", streams))
            if f and a:
                print(f"  {streams:>5} streams: CPU/token {fmt(f.us_per_token / a.us_per_token, 2)}x, "
                      f"TTFT err p99 {fmt(f.ttft_err_ms[1] / a.ttft_err_ms[1], 2)}x, "
                      f"tokens/s {fmt(f.tps / a.tps, 2)}x")
    f100, a100 = by.get(("forge-slo", 100)), by.get(("aiohttp", 100))
    if f100 is not None:
        ok_ttft = f100.ttft_err_ms[1] < TARGET_TTFT_P99_ERR_MS
        ok_cpu = a100 is None or f100.us_per_token <= a100.us_per_token
        print(f"\ntarget at 100 streams: TTFT error p99 {fmt(f100.ttft_err_ms[1], 2)} ms "
              f"({'met' if ok_ttft else 'MISSED'}, < {TARGET_TTFT_P99_ERR_MS:g} ms); CPU per token "
              f"{fmt(f100.us_per_token)} us vs aiohttp {fmt(a100.us_per_token) if a100 else '-'} us "
              f"({'met' if ok_cpu else 'MISSED'})")
    print(f"total {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
