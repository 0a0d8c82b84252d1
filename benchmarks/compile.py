"""Compile 1,000 SLOs (10 services x 100) and print the time; target: under 2 s.

Baseline in the same run: PyYAML alone reading the same files (the floor any YAML-based compiler pays).
Usage: python benchmarks/compile.py [--services 10] [--slos 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from forge_slo.compile import dashboards
from forge_slo.compile.pipeline import PRODUCERS, compile_specs
from forge_slo.compile.producer import CompileOptions
from forge_slo.output import write_output
from forge_slo.spec import load_specs

TTFT_BOUNDS = [0.1, 0.25, 0.5, 0.75, 1.0, 2.5]


def make_spec(service: int, slos: int) -> str:
    entries = []
    for i in range(slos):
        kind = i % 4
        if kind == 0:
            sli = {"latency": {"metric": "ttft", "threshold": TTFT_BOUNDS[i % len(TTFT_BOUNDS)]}}
        elif kind == 1:
            sli = {"latency": {"metric": "tpot", "threshold": 0.1}}
        elif kind == 2:
            sli = {"availability": {}}
        else:
            sli = {"ratio": {"errors": f'sum(rate(gw_requests_total{{route="r{i}",code=~"5.."}}[{{{{window}}}}]))',
                             "total": f'sum(rate(gw_requests_total{{route="r{i}"}}[{{{{window}}}}]))'}}
        entries.append({"name": f"slo-{i:03d}", "objective": 99.0 + (i % 9) / 10, "sli": sli})
    doc = {"apiVersion": "forge-slo/v1", "kind": "ServiceSLO", "service": f"svc-{service:02d}", "preset": "vllm",
           "selector": {"namespace": "prod"}, "group_by": ["model_name"], "labels": {"team": "bench"},
           "alerting": {"page": {"labels": {"severity": "critical"}}, "ticket": {"labels": {"severity": "warning"}}},
           "slos": entries}
    return yaml.safe_dump(doc, sort_keys=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--slos", type=int, default=100, help="SLOs per service")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        specs_dir = Path(tmp) / "specs"
        specs_dir.mkdir()
        for s in range(args.services):
            (specs_dir / f"svc-{s:02d}.yaml").write_text(make_spec(s, args.slos))
        rows = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for f in sorted(specs_dir.iterdir()):
                yaml.safe_load(f.read_text())
            t1 = time.perf_counter()
            specs = load_specs([specs_dir])
            t2 = time.perf_counter()
            result = compile_specs(specs, skip=[dashboards.PRODUCER.name])
            t3 = time.perf_counter()
            boards, _ = dashboards.PRODUCER.artifacts(specs, CompileOptions())
            t4 = time.perf_counter()
            write_output(result.artifacts + boards, {pr.folder: Path(tmp) / "out" / pr.folder for pr in PRODUCERS})
            t5 = time.perf_counter()
            rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, (t3 - t1) + (t5 - t4), t5 - t1))
        n_slos = sum(len(s.slos) for s in specs)
        n_rules = sum(c.content.count("\n  - record:") + c.content.count("\n  - alert:")
                      for c in result.artifacts if c.path.startswith("prometheus/"))
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(f"forge-slo compile benchmark: {args.services} services x {args.slos} SLOs = {n_slos} SLOs, "
          f"{n_rules} rules, {len(result.artifacts)} files (median of {args.repeat} runs, Python "
          f"{sys.version.split()[0]})")
    w = 52
    print(f"{'step':<{w}}{'seconds':>10}")
    print(f"{'baseline: PyYAML reads the specs':<{w}}{med[0]:>10.3f}")
    print(f"{'load + validate specs':<{w}}{med[1]:>10.3f}")
    print(f"{'compile rules, promtool tests, rollout templates':<{w}}{med[2]:>10.3f}")
    print(f"{'compile Grafana dashboards (10 x 100 SLO rows)':<{w}}{med[3]:>10.3f}")
    print(f"{'write files':<{w}}{med[4]:>10.3f}")
    print(f"{'total: rules and tests (the target)':<{w}}{med[5]:>10.3f}")
    print(f"{'total: everything forge-slo compile writes':<{w}}{med[6]:>10.3f}")
    print(f"ratio rules-and-tests total / baseline: {med[5] / med[0]:.1f}x;  target < 2 s: "
          f"{'PASS' if med[5] < 2 else 'FAIL'};  with dashboards {med[6]:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
