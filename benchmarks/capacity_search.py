"""Does ``forge-slo load --find-max`` find a known capacity, in fewer stages than a linear sweep?

Starts the simulator (loopback only) with one model of known capacity: ``SEQS`` slots, a fixed prefill and a
fixed time per token, so each request holds a slot for ``PREFILL + (TOKENS - 1) x ITL`` seconds and the
model serves at most ``SEQS`` divided by that many requests per second. Arrivals are evenly spaced
(``--arrival constant``), so below the capacity no request waits, and above it the queue, and TTFT with it,
grows by the second: the spec's TTFT SLO breaks just above the capacity.

1. The search: ``--find-max rate`` from ``--start 2``, bisecting to ``--resolution 0.05``.
2. A linear sweep of the same resolution: stages ``step, 2 x step, ...`` where the step is the search's final
   bracket (the highest rate that held to the lowest that did not), stopping at the first stage that misses.

It prints both: stages run, seconds taken, the capacity each found and its error against the known one.
Verdict PASS when the search is within 10% of the capacity and ran fewer stages than the sweep. Every stage
is bounded (``--duration``, a search stage at most ``--max-stage-duration``), so the whole run is too (a few
minutes on a quiet machine).

    python benchmarks/capacity_search.py
    python benchmarks/capacity_search.py --duration 6s
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forge_slo.sim import SimProcess  # noqa: E402

SEQS = 4
PREFILL_S = 0.05
ITL_S = 0.01
TOKENS = 21
SERVICE_S = PREFILL_S + (TOKENS - 1) * ITL_S
CAPACITY = SEQS / SERVICE_S  # 16 requests/s
MAX_ERROR = 0.10
SPEC = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: capacity-bench
preset: vllm
slos:
  - {name: ttft, objective: 95, sli: {latency: {metric: ttft, threshold: 0.25}}}
  - {name: availability, objective: 99, sli: {availability: {}}}
"""
SIM_CONFIG = {"seed": 1, "models": [{
    "name": "bench", "max_num_seqs": SEQS, "prefill_base_s": PREFILL_S, "prefill_per_token_s": 0.0, "itl_s": ITL_S,
    "itl_distribution": "fixed", "itl_stddev_s": 0.0, "batch_slowdown": 0.0,
    "output_tokens": {"distribution": "fixed", "value": TOKENS}}]}


def load(target: str, out: Path, spec: Path, duration: str, *args: str) -> tuple[dict[str, Any], float]:
    """One ``forge-slo load`` run; its summary and the seconds it took."""
    argv = [sys.executable, "-m", "forge_slo.load", "--target", target, "--model", "bench", "--arrival", "constant",
            "--duration", duration, "--warmup", "0.5s", "--output-tokens", str(TOKENS), "--spec", str(spec),
            "--out", str(out), "--progress", "off", "--server-metrics", "off", *args]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"forge-slo load failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return summary, elapsed


def sweep_found(summary: dict[str, Any]) -> float | None:
    """The highest stage of a sweep that met every SLO, below the first one that missed."""
    held = None
    for stage in summary["stages"]:
        if stage["verdict"] != "pass":
            break
        held = float(stage["target"])
    return held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="4s", help="each stage's sending time (default 4s)")
    parser.add_argument("--resolution", type=float, default=0.05, help="the search's resolution (default 0.05)")
    args = parser.parse_args()
    print(f"simulator: {SEQS} slots x {SERVICE_S * 1000:.0f} ms a request: capacity {CAPACITY:g} requests/s "
          f"(TTFT SLO: 95% within 250 ms); CPUs {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="forge-slo-capacity-") as tmp, SimProcess(SIM_CONFIG) as sim:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(SPEC, encoding="utf-8")
        found, search_s = load(sim.url, Path(tmp) / "search", spec, args.duration, "--find-max", "rate",
                               "--start", "2", "--resolution", str(args.resolution))
        search = found["search"]
        answer = search["answer"]
        value = float(answer["value"]) if answer else None
        bracket = (float(search["above"]["value"]) - value) if answer and search["above"] else None
        step = round(bracket if bracket else args.resolution * CAPACITY, 3)
        print(f"search: {len(found['stages'])} stages in {search_s:.0f} s: "
              + ", ".join(f"{t['stage']} {t['verdict']}" for t in search["tried"]))
        rates = [round(step * k, 3) for k in range(1, int(2 * CAPACITY / step) + 2)]
        swept, sweep_s = load(sim.url, Path(tmp) / "sweep", spec, args.duration,
                              "--sweep", "rate=" + ",".join(f"{r:g}" for r in rates))
        linear = sweep_found(swept)
        print(f"sweep:  {len(swept['stages'])} stages in {sweep_s:.0f} s: steps of {step:g} requests/s, "
              f"stopped at {swept['stages'][-1]['name']}")
    print()
    print(f"{'method':<18}{'stages':>7}{'seconds':>9}{'found req/s':>13}{'error':>9}")
    rows = (("capacity search", len(found["stages"]), search_s, value),
            ("linear sweep", len(swept["stages"]), sweep_s, linear))
    for name, stages, seconds, got in rows:
        error = f"{(got - CAPACITY) / CAPACITY * 100:+.1f}%" if got else "-"
        print(f"{name:<18}{stages:>7}{seconds:>9.0f}{(f'{got:g}' if got else 'none'):>13}{error:>9}")
    ok = value is not None and abs(value - CAPACITY) <= MAX_ERROR * CAPACITY and len(found["stages"]) < len(
        swept["stages"])
    print(f"verdict: {'PASS' if ok else 'FAIL'} (search within {MAX_ERROR:.0%} of {CAPACITY:g} requests/s, in fewer "
          "stages than the sweep)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
