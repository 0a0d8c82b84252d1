#!/usr/bin/env bash
# Check the GPU exporter on a machine with real NVIDIA GPUs: run it against NVML for 10 s, print the scraped
# series, then time full NVML collections in-process (p50/p99 of reading every GPU once).
#
# Needs only python3 with nvidia-ml-py, prometheus-client and pyyaml, and this repository (the forge-slo
# package need not be installed). Run from anywhere:  bash scripts/gpu_check.sh   (DURATION=10 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
DURATION="${DURATION:-10}"

echo "== nvidia-smi -L"
nvidia-smi -L 2>&1 || echo "(nvidia-smi not available)"

exec "$PYTHON" - "$DURATION" <<'PY'
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

duration = float(sys.argv[1])
problems: list[str] = []


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


print(f"== python {sys.version.split()[0]}")
try:
    import pynvml  # noqa: F401 - only to print which bindings are used

    from importlib.metadata import version

    print(f"== nvidia-ml-py {version('nvidia-ml-py')}")
except Exception as e:  # report and go on: the exporter prints its own clear error
    print(f"== nvidia-ml-py not importable: {e}")

# 1. The exporter as a user runs it, against NVML, scraped once a second.
print(f"\n== python3 -m forge_slo.telemetry --port 0 --interval 1s  (for {duration:g} s)")
proc = subprocess.Popen([sys.executable, "-m", "forge_slo.telemetry", "--port", "0", "--host", "127.0.0.1",
                         "--interval", "1s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
err_lines: list[str] = []
threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True).start()
line = proc.stdout.readline()
if not line.startswith("listening on "):
    proc.wait(timeout=10)
    time.sleep(0.2)
    print(f"exporter did not start (exit {proc.returncode}):\n{''.join(err_lines)}{line}")
    sys.exit(1)
url = line.split()[-1]
scrape_ms: list[float] = []
body = ""
deadline = time.monotonic() + duration
while time.monotonic() < deadline:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read().decode()
    scrape_ms.append((time.perf_counter() - t0) * 1000)
    time.sleep(1.0)
proc.send_signal(signal.SIGTERM)
rc = proc.wait(timeout=15)
time.sleep(0.2)
print("".join(err_lines), end="")
print(f"exporter exit code after SIGTERM: {rc}")
if rc != 0:
    problems.append(f"exporter exited {rc}")

print(f"\n== last scrape of {url}")
series = [ln for ln in body.splitlines() if ln and not ln.startswith("#")]
for ln in series:
    print(ln)
families = list(text_string_to_metric_families(body))
print(f"\n== {len(series)} series in {len(families)} families (parsed by prometheus_client):")
for fam in families:
    print(f"  {fam.type:<9} {fam.name:<55} {len(fam.samples)} samples")
print(f"scrape latency over {len(scrape_ms)} scrapes: p50 {pct(scrape_ms, .5):.2f} ms, "
      f"max {max(scrape_ms):.2f} ms")
health = [ln for ln in series if ln.startswith("forge_gpu_healthy")]
if not health or any(not ln.endswith(" 1") for ln in health):
    problems.append("a GPU is reported unhealthy (see forge_gpu_healthy above)")

# 2. NVML read latency: full collections (every GPU once) through the same backend, in-process.
print("\n== NVML read latency of one full collection (all GPUs), 200 collections")
from forge_slo.telemetry.nvml import NvmlBackend  # noqa: E402

backend = NvmlBackend()
backend.start()
gpus = backend.gpus()
print(f"driver {backend.driver_version()}, {len(gpus)} GPUs: " + ", ".join(g.model_name for g in gpus))
print(f"XID event watch active: {backend.xid_watch_active}")
times: list[float] = []
failures = 0
for _ in range(200):
    t0 = time.perf_counter()
    for g in gpus:
        try:
            backend.read(g.index)
        except Exception as e:  # a failing GPU is what the exporter reports as unhealthy; count it here
            failures += 1
            last_error = e
        backend.xid_counts(g.index)
    times.append((time.perf_counter() - t0) * 1000)
print(f"p50 {pct(times, .5):.3f} ms   p99 {pct(times, .99):.3f} ms   max {max(times):.3f} ms   "
      f"mean {statistics.mean(times):.3f} ms   ({len(gpus)} GPUs, {failures} failed reads)")
if failures:
    problems.append(f"{failures} failed GPU reads, last: {last_error}")
reading = backend.read(gpus[0].index)
absent = [k for k, v in vars(reading).items() if v is None]
print(f"GPU 0 fields this GPU does not report (left out of /metrics): {', '.join(absent) or 'none'}")
backend.close()

print("\n== " + ("OK" if not problems else "PROBLEMS: " + "; ".join(problems)))
sys.exit(1 if problems else 0)
PY
