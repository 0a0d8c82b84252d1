"""How many concurrent streams can one simulator process serve before it distorts the timings it promises?

Starts ``python -m forge_slo.sim`` (one process, pinned to one CPU when there are several) with a fixed
TTFT and a fixed ITL, then drives it from separate client processes (aiohttp streaming clients by
default, loopback only) at increasing concurrency. Per step it prints:

- tokens/s served: the simulator's own ``vllm:generation_tokens_total`` over the window;
- sim CPU: the simulator's utime + stime (``/proc/<pid>/stat``) over wall time, 100% = one core;
- other load: CPU time other processes took on the simulator's CPU (the machine may be shared);
- client CPU, requests done and failed;
- TTFT err: TTFT measured at the client minus the configured TTFT (includes the client's own lag);
- sim lag: how late the simulator sent first tokens (and every token) against its own schedule, from
  ``GET /debug/stats`` sampled every second; "quiet" figures use only the seconds in which other
  processes took under 5% of the simulator's CPU, so a busy neighbour does not count against it.

    python benchmarks/sim_capacity.py                    # about 45 s
    python benchmarks/sim_capacity.py --levels 100,1000 --window 5 --client raw

Verdict: PASS when a step with >= 1,000 streams served >= 20,000 tokens/s on at most one core, without
failures, with the simulator's first-token lag p99 <= 2 ms over its quiet seconds; INCONCLUSIVE when the
machine was never quiet; FAIL otherwise. It is a report: it exits 0 unless the simulator itself fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import resource
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forge_slo.sim import SimProcess  # noqa: E402

TARGET_STREAMS = 1000
TARGET_TOKENS_PER_S = 20_000.0
TARGET_LAG_S = 0.002
QUIET_OTHER_LOAD = 0.05


@dataclass(frozen=True)
class Step:
    streams: int
    tokens_per_s: float
    sim_cpu: float
    other_load: float
    client_cpu: float
    completed: int
    failed: int
    ttft_p50_err_ms: float
    ttft_p99_err_ms: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    token_lag_p99_ms: float
    seconds: int
    quiet_seconds: int
    quiet_lag_p99_ms: float
    quiet_lag_max_ms: float
    quiet_token_lag_p99_ms: float


class Bins:
    """Merged lag histograms from /debug/stats?bins=1 (50 us bins)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.low_s = 0.0
        self.bin_s = 1.0

    def add(self, bins: dict[str, Any], key: str) -> None:
        self.low_s, self.bin_s = bins["low_s"], bins["bin_s"]
        for i, c in bins[key]:
            self.counts[i] = self.counts.get(i, 0) + c

    def quantile_ms(self, q: float) -> float:
        total = sum(self.counts.values())
        if not total:
            return float("nan")
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= q * total:
                return (self.low_s + (i + 1) * self.bin_s) * 1000
        return float("nan")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (psutil is not needed)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_busy(cpu: int | None) -> tuple[float, float]:
    """(busy, total) jiffies of one CPU, or of all CPUs when ``cpu`` is None, from /proc/stat."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            if parts[0] == name:
                values = [float(v) for v in parts[1:]]
                idle = values[3] + values[4]
                return sum(values) - idle, sum(values)
    raise RuntimeError(f"{name} not in /proc/stat")


def _other_load(busy: float, total: float, sim_share: float, sim_cpu: int | None) -> float:
    """Share of the simulator's CPU used by anything else (with no pinning: of the whole machine's CPUs)."""
    if total <= 0:
        return 0.0
    cpus = 1 if sim_cpu is not None else len(os.sched_getaffinity(0))
    return max(0.0, busy / total * cpus - sim_share)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        data: bytes = resp.read()
        return data


def _generation_tokens(base: str) -> float:
    text = _get(f"{base}/metrics").decode()
    return sum(float(v) for v in re.findall(r"^vllm:generation_tokens_total\{[^}]*\} (\S+)$", text, re.M))


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------------------------------------------------
# Client processes


async def _client(
    url: str,
    streams: int,
    ramp_s: float,
    start_at: float,
    measure_from: float,
    measure_to: float,
    body: bytes,
) -> dict[str, object]:
    import aiohttp

    ttfts: list[float] = []
    tokens = 0
    completed = 0
    failed = 0
    marker = b' tok"'
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=120)
    loop = asyncio.get_running_loop()
    headers = {"Content-Type": "application/json"}

    async def worker(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal tokens, completed, failed
        await asyncio.sleep(max(0.0, start_at + ramp_s * i / streams - time.time()))
        while time.time() < measure_to:
            sent = loop.time()
            t_wall = time.time()
            ttft = -1.0
            prev = last = b""
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    content = resp.content
                    while ttft < 0:
                        last = await content.readany()
                        if not last:
                            break
                        if marker in last:
                            ttft = loop.time() - sent
                    # Past the first token only the end matters: keep the last two reads, nothing else.
                    while True:
                        data = await content.readany()
                        if not data:
                            break
                        prev, last = last, data
            except aiohttp.ClientError:
                failed += 1
                continue
            tail = prev[-400:] + last
            if not tail.endswith(b"data: [DONE]\n\n"):
                failed += 1
                continue
            m = re.search(rb'"completion_tokens":(\d+)', tail)
            if measure_from <= t_wall and time.time() <= measure_to:
                completed += 1
                tokens += int(m.group(1)) if m else 0
                ttfts.append(ttft)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(i, session) for i in range(streams)))
    return {"ttfts": ttfts, "tokens": tokens, "completed": completed, "failed": failed}


class _RawStream(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client: one callback per socket read, no per-chunk coroutine.

    It only needs what the benchmark measures: when the first token arrives, when the response ends (the
    chunked terminator), and the usage in the last chunk.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[tuple[float, bytes]] | None = None
        self.sent = 0.0
        self.ttft = -1.0
        self.tail = b""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def request(self, raw: bytes) -> asyncio.Future[tuple[float, bytes]]:
        assert self.transport is not None
        self.done = self.loop.create_future()
        self.ttft = -1.0
        self.tail = b""
        self.sent = self.loop.time()
        self.transport.write(raw)
        return self.done

    def data_received(self, data: bytes) -> None:
        tail = self.tail[-600:] + data
        if self.ttft < 0 and b' tok"' in tail:
            self.ttft = self.loop.time() - self.sent
        self.tail = tail
        if tail.endswith(b"\r\n0\r\n\r\n") and self.done is not None and not self.done.done():
            self.done.set_result((self.ttft, tail))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost"))


async def _raw_client(
    url: str,
    streams: int,
    ramp_s: float,
    start_at: float,
    measure_from: float,
    measure_to: float,
    body: bytes,
) -> dict[str, object]:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    raw = (
        f"POST /{path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    ttfts: list[float] = []
    tokens = completed = failed = 0

    async def worker(i: int) -> None:
        nonlocal tokens, completed, failed
        await asyncio.sleep(max(0.0, start_at + ramp_s * i / streams - time.time()))
        proto: _RawStream | None = None
        while time.time() < measure_to:
            if proto is None or proto.lost:
                _, proto = await loop.create_connection(lambda: _RawStream(loop), host, int(port))
            t_wall = time.time()
            try:
                ttft, tail = await proto.request(raw)
            except ConnectionError:
                failed += 1
                continue
            if b"data: [DONE]" not in tail:
                failed += 1
                continue
            m = re.search(rb'"completion_tokens":(\d+)', tail)
            if measure_from <= t_wall and time.time() <= measure_to:
                completed += 1
                tokens += int(m.group(1)) if m else 0
                ttfts.append(ttft)
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    await asyncio.gather(*(worker(i) for i in range(streams)))
    return {"ttfts": ttfts, "tokens": tokens, "completed": completed, "failed": failed}


_ClientArgs = tuple[str, int, float, float, float, float, bytes, int | None, str]


def _client_main(args: _ClientArgs, out: mp.Queue) -> None:  # type: ignore[type-arg]
    url, streams, ramp_s, start_at, measure_from, measure_to, body, cpu, kind = args
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    t0 = _cpu_seconds(os.getpid())
    client = _raw_client if kind == "raw" else _client
    result = asyncio.run(client(url, streams, ramp_s, start_at, measure_from, measure_to, body))
    result["cpu_s"] = _cpu_seconds(os.getpid()) - t0
    out.put(result)


# ---------------------------------------------------------------------------------------------------------


def run_step(
    sim: SimProcess,
    streams: int,
    args: argparse.Namespace,
    client_cpus: list[int | None],
    sim_cpu: int | None,
) -> Step:
    body = json.dumps(
        {
            "model": "bench",
            "prompt": "hello simulator",
            "max_tokens": args.tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    procs = max(1, min(len(client_cpus), args.client_procs or len(client_cpus)))
    # Requests last ttft + tokens * itl; measure whole requests only, after the ramp.
    request_s = args.ttft + args.tokens * args.itl
    start_at = time.time() + 0.5 + 0.3 * procs
    measure_from = start_at + args.ramp + request_s
    measure_to = measure_from + args.window
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    workers = []
    for p in range(procs):
        share = streams // procs + (1 if p < streams % procs else 0)
        client_args = (
            f"{sim.url}/v1/completions",
            share,
            args.ramp,
            start_at,
            measure_from,
            measure_to,
            body,
            client_cpus[p % len(client_cpus)],
            args.client,
        )
        w = ctx.Process(target=_client_main, args=(client_args, queue))
        w.start()
        workers.append(w)

    time.sleep(max(0.0, measure_from - time.time()))
    _get(f"{sim.url}/debug/stats?reset=1")
    gen0, cpu0, t0 = _generation_tokens(sim.url), _cpu_seconds(sim.pid), time.monotonic()
    busy0, total0 = _cpu_busy(sim_cpu)
    all_first, all_tokens, quiet_first, quiet_tokens = Bins(), Bins(), Bins(), Bins()
    seconds = quiet = 0
    quiet_max = all_max = 0.0
    prev = (cpu0, busy0, total0, t0)
    # One sample a second: lag histograms (reset each time) and who else used the simulator's CPU.
    while time.time() < measure_to - 0.5:
        time.sleep(min(1.0, max(0.0, measure_to - time.time())))
        stats = json.loads(_get(f"{sim.url}/debug/stats?reset=1&bins=1"))
        cpu, (busy, total), now = _cpu_seconds(sim.pid), _cpu_busy(sim_cpu), time.monotonic()
        other = _other_load(busy - prev[1], total - prev[2], (cpu - prev[0]) / (now - prev[3]), sim_cpu)
        prev = (cpu, busy, total, now)
        seconds += 1
        all_first.add(stats["bins"], "first_token")
        all_tokens.add(stats["bins"], "token")
        if other < QUIET_OTHER_LOAD:
            quiet += 1
            quiet_first.add(stats["bins"], "first_token")
            quiet_tokens.add(stats["bins"], "token")
            quiet_max = max(quiet_max, stats["first_token_lag_s"]["max"] * 1000)
        all_max = max(all_max, stats["first_token_lag_s"]["max"] * 1000)
    gen1, cpu1, t1 = _generation_tokens(sim.url), _cpu_seconds(sim.pid), time.monotonic()
    busy1, total1 = _cpu_busy(sim_cpu)
    results = [queue.get(timeout=request_s + 60) for _ in workers]
    for w in workers:
        w.join(30)
    ttfts = [t for r in results for t in r["ttfts"] if t >= 0]
    wall = t1 - t0
    return Step(
        streams=streams,
        tokens_per_s=(gen1 - gen0) / wall,
        sim_cpu=(cpu1 - cpu0) / wall,
        other_load=_other_load(busy1 - busy0, total1 - total0, (cpu1 - cpu0) / wall, sim_cpu),
        client_cpu=sum(float(r["cpu_s"]) for r in results) / (measure_to - start_at),
        completed=sum(int(r["completed"]) for r in results),
        failed=sum(int(r["failed"]) for r in results),
        ttft_p50_err_ms=(_quantile(ttfts, 0.5) - args.ttft) * 1000,
        ttft_p99_err_ms=(_quantile(ttfts, 0.99) - args.ttft) * 1000,
        lag_p50_ms=all_first.quantile_ms(0.5),
        lag_p99_ms=all_first.quantile_ms(0.99),
        lag_max_ms=all_max,
        token_lag_p99_ms=all_tokens.quantile_ms(0.99),
        seconds=seconds,
        quiet_seconds=quiet,
        quiet_lag_p99_ms=quiet_first.quantile_ms(0.99),
        quiet_lag_max_ms=quiet_max if quiet else float("nan"),
        quiet_token_lag_p99_ms=quiet_tokens.quantile_ms(0.99),
    )


def _table(steps: list[Step]) -> list[str]:
    head = (
        "streams",
        "tokens/s",
        "sim CPU",
        "other load",
        "client CPU",
        "done",
        "failed",
        "TTFT err p50/p99 ms",
        "sim lag p50/p99/max ms",
        "token lag p99",
        "quiet s",
        "quiet lag p99/max ms",
        "quiet token lag p99",
    )
    rows = [
        (
            str(s.streams),
            f"{s.tokens_per_s:,.0f}",
            f"{s.sim_cpu:.0%}",
            f"{s.other_load:.0%}",
            f"{s.client_cpu:.0%}",
            str(s.completed),
            str(s.failed),
            f"{s.ttft_p50_err_ms:+.2f} / {s.ttft_p99_err_ms:+.2f}",
            f"{s.lag_p50_ms:.2f} / {s.lag_p99_ms:.2f} / {s.lag_max_ms:.2f}",
            f"{s.token_lag_p99_ms:.2f}",
            f"{s.quiet_seconds}/{s.seconds}",
            f"{s.quiet_lag_p99_ms:.2f} / {s.quiet_lag_max_ms:.2f}",
            f"{s.quiet_token_lag_p99_ms:.2f}",
        )
        for s in steps
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="100,500,1000,1500", help="concurrent streams per step")
    p.add_argument("--ttft", type=float, default=0.05, help="configured TTFT, seconds (default 0.05)")
    p.add_argument("--itl", type=float, default=0.02, help="configured ITL, seconds (default 0.02)")
    p.add_argument("--tokens", type=int, default=50, help="max_tokens per request (default 50)")
    p.add_argument("--window", type=float, default=6.0, help="measured seconds per step (default 6)")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which streams start (default 1)")
    p.add_argument(
        "--client-procs", type=int, default=0, help="client processes (default: one per free CPU, max 4)"
    )
    p.add_argument(
        "--client",
        choices=("aiohttp", "raw"),
        default="aiohttp",
        help="aiohttp streaming clients (default), or a minimal asyncio HTTP/1.1 client that costs a "
        "few times less CPU per token, for when the client side is the bottleneck",
    )
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * max(levels) + 256)), hard))
    cpus = sorted(os.sched_getaffinity(0))
    sim_cpu = cpus[0] if len(cpus) > 1 else None
    client_cpus: list[int | None] = list(cpus[1:5]) if len(cpus) > 1 else [None]
    procs = max(1, min(len(client_cpus), args.client_procs or len(client_cpus)))
    config = {
        "seed": 1,
        "models": [
            {
                "name": "bench",
                "max_num_seqs": 100_000,
                "kv_cache_tokens": 100_000_000,
                "max_model_len": 100_000,
                "prefill_base_s": args.ttft,
                "prefill_per_token_s": 0.0,
                "itl_s": args.itl,
                "itl_distribution": "fixed",
                "itl_stddev_s": 0.0,
                "batch_slowdown": 0.0,
            }
        ],
    }
    pinned = f" pinned to CPU {sim_cpu}" if sim_cpu is not None else ""
    print(
        f"simulator: 1 process{pinned}; clients ({args.client}): {procs} process(es) on CPU "
        f"{','.join(str(c) for c in client_cpus)}; TTFT {args.ttft * 1000:g} ms, ITL {args.itl * 1000:g} ms, "
        f"{args.tokens} tokens/request, {args.window:g} s per step",
        flush=True,
    )
    steps: list[Step] = []
    started = time.monotonic()
    with SimProcess(config, cpu=sim_cpu) as sim:
        for n in levels:
            step = run_step(sim, n, args, client_cpus, sim_cpu)
            steps.append(step)
            print(f"  {n} streams: {step.tokens_per_s:,.0f} tokens/s, sim CPU {step.sim_cpu:.0%}", flush=True)
    print()
    print("\n".join(_table(steps)))
    print()
    print(
        "TTFT err: client-measured TTFT minus configured (includes the client's own lag and HTTP overhead)."
    )
    print(
        "sim lag: first token sent minus scheduled, measured by the simulator (GET /debug/stats), 50 us bins;"
    )
    print(
        f"quiet: only the seconds in which other processes took < {QUIET_OTHER_LOAD:.0%} of the simulator's CPU."
    )
    eligible = [
        s
        for s in steps
        if s.streams >= TARGET_STREAMS
        and s.tokens_per_s >= TARGET_TOKENS_PER_S
        and s.sim_cpu <= 1.0
        and s.failed == 0
    ]
    judged = [s for s in eligible if s.quiet_seconds >= 2]
    ok = [s for s in judged if s.quiet_lag_p99_ms <= TARGET_LAG_S * 1000]
    verdict = (
        "PASS" if ok else "FAIL" if judged or not eligible else "INCONCLUSIVE (the machine was never quiet)"
    )
    where = f" (at {', '.join(str(s.streams) for s in ok)} streams)" if ok else ""
    print(
        f"target: >= {TARGET_STREAMS} streams and >= {TARGET_TOKENS_PER_S:,.0f} tokens/s on one core with "
        f"first-token lag p99 <= {TARGET_LAG_S * 1000:g} ms: {verdict}{where}"
    )
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
