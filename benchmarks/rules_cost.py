"""What the period SLI costs and how exact it is, on a real Prometheus holding 30 days of history.

Backfills 31 days of vLLM counters (20 pods, 1-minute scrapes, traffic 10x higher by day than by night,
incidents at night) with ``promtool tsdb create-blocks-from openmetrics``, backfills the base-window
recordings the compiled rules define with ``promtool tsdb create-blocks-from rules``, then compares three
ways to read the 30-day SLI at the end of the data against the exact errors/total of the generated data:

- forge-slo: the compiled ``forge_slo:period_error:ratio`` expression, a ratio of sums of the recorded
  5-minute rates;
- (a) an average of the recorded 5-minute ratios (Sloth's 30-day SLI);
- (b) a ``rate``/``increase`` over 30 days of the raw series (Pyrra's).

Prints query time (median of repeated queries) and error against the truth, with ratios.
Targets: forge-slo exact within 0.1% relative and at least 5x cheaper than (b).
Usage: python benchmarks/rules_cost.py [--pods 20] [--days 30] [--repeat 7] [--keep DIR]
Loopback only; needs promtool and prometheus (Debian's prometheus package).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from forge_slo import conventions as cv
from forge_slo.compile.rules import rules_document
from forge_slo.compile.sli import sli_queries
from forge_slo.spec import load_specs

SPEC = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: bench
preset: vllm
period: {days}d
slos:
  - name: availability
    objective: 99.9
    sli: {{availability: {{}}}}
"""
METRIC = "vllm:request_success_total"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def generate(pods: int, minutes: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-minute (requests, failures) per pod: 10x diurnal swing, 0.05% errors, night incidents."""
    rng = np.random.default_rng(seed)
    t = np.arange(minutes)
    hour = (t / 60) % 24
    # Smooth day/night swing between 1x (03:00) and 10x (15:00) requests per minute per pod.
    shape = 1 + 9 * (0.5 - 0.5 * np.cos((hour - 3) / 24 * 2 * np.pi))
    requests = rng.poisson(30 * shape, size=(pods, minutes)).astype(np.int64)
    error_ratio = np.full(minutes, 0.0005)
    days = minutes // 1440
    for day in range(1, days, 3):  # an incident every third night, 01:00-02:30, 25% of requests failing
        start = day * 1440 + 60
        error_ratio[start:start + 90] = 0.25
    failures = rng.binomial(requests, error_ratio)
    return requests, failures


def write_openmetrics(path: Path, requests: np.ndarray, failures: np.ndarray, end: int) -> None:
    pods, minutes = requests.shape
    ok = np.cumsum(requests - failures, axis=1)
    bad = np.cumsum(failures, axis=1)
    stamps = end - 60 * (minutes - 1 - np.arange(minutes))
    with path.open("w") as out:
        out.write(f"# TYPE {METRIC.removesuffix('_total')} counter\n")
        for pod in range(pods):
            for reason, values in (("length", ok[pod]), ("abort", bad[pod])):
                name = (f'{METRIC}{{finished_reason="{reason}",model_name="bench-model",pod="pod-{pod:02d}",'
                        f'engine="0"}}')
                out.writelines(f"{name} {v} {s}\n" for v, s in zip(values.tolist(), stamps.tolist(), strict=True))
        out.write("# EOF\n")


def run(cmd: list[str], **kw: object) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def start_prometheus(data: Path, rules: list[Path]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = data.parent / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"evaluation_interval": "1h"},
                                      "rule_files": [str(r) for r in rules]}))
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
                             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=120d",
                             "--log.level=error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("Prometheus did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def timed_query(url: str, expr: str, at: int, repeat: int) -> tuple[float, float]:
    """(median seconds, value) of an instant query at ``at``."""
    times, value = [], float("nan")
    with httpx.Client(timeout=300) as client:
        for _ in range(repeat):
            t0 = time.perf_counter()
            body = client.get(f"{url}/api/v1/query", params={"query": expr, "time": str(at)}).json()
            times.append(time.perf_counter() - t0)
            if body.get("status") != "success":
                raise SystemExit(f"query failed: {expr}: {body}")
            result = body["data"]["result"]
            value = float(result[0]["value"][1]) if result else float("nan")
    return statistics.median(times), value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--days", type=int, default=30, help="SLO period in days (one more day is generated)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="keep the work directory here")
    args = parser.parse_args()
    for tool in ("promtool", "prometheus"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install Debian's prometheus package")
    work = Path(tempfile.mkdtemp(prefix="forge-slo-rules-cost-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    minutes = (args.days + 1) * 1440
    end = (int(time.time()) // 3600 - 3) * 3600  # a whole hour, comfortably in the past
    start = end - 60 * (minutes - 1)

    t0 = time.perf_counter()
    requests, failures = generate(args.pods, minutes)
    period_minutes = args.days * 1440
    window = slice(minutes - period_minutes, minutes)  # increments inside (end - period, end]
    truth = failures[:, window].sum() / requests[:, window].sum()
    minute_ratio = failures.sum(axis=0) / np.maximum(requests.sum(axis=0), 1)
    print(f"generated {args.pods} pods x {minutes} minutes ({2 * args.pods * minutes:,} samples) "
          f"in {time.perf_counter() - t0:.1f}s; exact {args.days}-day error ratio {truth:.6%}; "
          f"mean of per-minute ratios {minute_ratio[window].mean():.6%}")

    spec_path = work / "bench.yaml"
    spec_path.write_text(SPEC.format(days=args.days))
    [spec] = load_specs([spec_path])
    [slo] = spec.slos
    doc = rules_document(spec)
    rules = doc["groups"][0]["rules"]
    base = spec.base_window_seconds
    base_names = {cv.error_rate(base), cv.request_rate(base), cv.error_ratio(base)}
    recordings = [r for r in rules if r.get("record") in base_names]
    period_rule = next(r for r in rules if r.get("record") == cv.PERIOD_ERROR_RATIO)
    backfill_rules = work / "base.rules.yaml"
    backfill_rules.write_text(yaml.safe_dump({"groups": [{"name": "base", "interval": "1m",
                                                          "rules": recordings}]}, sort_keys=False))

    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    om = work / "raw.om"
    t0 = time.perf_counter()
    write_openmetrics(om, requests, failures, end)
    run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(om), str(data)])
    om.unlink()
    print(f"backfilled raw series in {time.perf_counter() - t0:.1f}s")

    proc, url = start_prometheus(data, [])
    try:
        t0 = time.perf_counter()
        rule_blocks = work / "rule-blocks"
        shutil.rmtree(rule_blocks, ignore_errors=True)
        run(["promtool", "tsdb", "create-blocks-from", "rules", f"--start={start}", f"--end={end + 60}",
             f"--url={url}", "--eval-interval=60s", f"--output-dir={rule_blocks}", "-q", str(backfill_rules)])
        print(f"backfilled {len(recordings)} recording rules over {args.days + 1} days in "
              f"{time.perf_counter() - t0:.1f}s")
    finally:
        stop(proc)
    for block in rule_blocks.iterdir():
        shutil.move(str(block), data / block.name)

    proc, url = start_prometheus(data, [])
    try:
        period = f"{args.days}d"
        sel = f'{{{cv.SERVICE_LABEL}="bench",{cv.SLO_LABEL}="availability"}}'
        queries = sli_queries(spec, slo)
        candidates = [
            ("forge-slo: ratio of sums of recorded 5m rates", period_rule["expr"]),
            ("(a) average of recorded 5m ratios", f"avg_over_time({cv.error_ratio(base)}{sel}[{period}])"),
            (f"(b) rate over {period} of raw series",
             f"({queries.errors_over(period)}) / ({queries.total_over(period)})"),
        ]
        rows = []
        for name, expr in candidates:
            timed_query(url, expr, end, 1)  # warm the page cache
            seconds, value = timed_query(url, expr, end, args.repeat)
            rows.append((name, seconds, value))
    finally:
        stop(proc)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)

    ours = rows[0][1]
    version = subprocess.run(["prometheus", "--version"], capture_output=True, text=True).stdout.split()[2]
    print(f"\n{args.days}-day SLI of {args.pods} pods at 1-minute resolution, exact error ratio {truth:.6%} "
          f"(Prometheus {version})")
    print(f"{'method':<46}{'query ms':>10}{'x forge-slo':>12}{'error ratio':>13}{'rel. error':>12}")
    for name, seconds, value in rows:
        rel = (value - truth) / truth
        print(f"{name:<46}{seconds * 1000:>10.1f}{seconds / ours:>12.1f}{value:>13.6%}{rel:>+12.3%}")
    exact = abs(rows[0][2] - truth) / truth
    cheaper = rows[2][1] / ours
    print(f"\nforge-slo within 0.1% of the truth: {'PASS' if exact <= 0.001 else 'FAIL'} ({exact:.4%}); "
          f"at least 5x cheaper than (b): {'PASS' if cheaper >= 5 else 'FAIL'} ({cheaper:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
