"""``forge-slo demo``: the simulator, a short load and a verdict, with nothing to set up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forge_slo.errors import UsageError
from forge_slo.load.launch import run_load
from forge_slo.load.options import MAX_WORKERS, LoadOptions, Stage, endpoint_for
from forge_slo.load.workload import LengthDist

EXAMPLE_SPEC = Path("slo_specs") / "chat.yaml"
DEMO_MODEL = "sim-llama"
DEMO_DEFAULT_DURATION = "15s"
DEMO_DEFAULT_RATE = 4.0
DEMO_WARMUP_S = 1.0

# The example spec as shipped in slo_specs/chat.yaml, for installs without a checkout.
BUILTIN_SPEC = """\
# A multi-model chat service served by vLLM: one SLO per model for every objective below.
apiVersion: forge-slo/v1
kind: ServiceSLO
service: chat
description: Chat completions for the assistant product, two models behind one vLLM deployment.
preset: vllm
selector: {namespace: prod}
group_by: [model_name]
period: 30d
labels: {team: inference}
slos:
  - name: ttft
    description: First token within 500 ms for 99% of requests.
    objective: 99
    sli: {latency: {metric: ttft, threshold: 0.5}}
  - name: tpot
    description: Time per output token (after the first) at most 100 ms for 99% of requests.
    objective: 99
    sli: {latency: {metric: tpot, threshold: 0.1}}
  - name: e2e
    description: Whole answers within 20 s for 99.5% of requests.
    objective: 99.5
    sli: {latency: {metric: e2e, threshold: 20}}
  - name: availability
    description: 99.9% of requests are served; a request the server fails or sheds under load counts against it.
    objective: 99.9
    sli: {availability: {}}
  - name: gateway-errors
    description: The API gateway in front of vLLM answers without 5xx.
    objective: 99.5
    sli:
      ratio:
        errors: sum(rate(http_requests_total{job="gw",code=~"5.."}[{{window}}]))
        total: sum(rate(http_requests_total{job="gw"}[{{window}}]))
"""

# vLLM-like timing: 20 ms prefill plus 0.1 ms per prompt token, 20 ms per output token.
SIM_CONFIG: dict[str, Any] = {
    "seed": 1,
    "models": [{"name": DEMO_MODEL, "max_num_seqs": 64, "prefill_base_s": 0.02, "prefill_per_token_s": 0.0001,
                "itl_s": 0.02, "itl_distribution": "normal", "itl_stddev_s": 0.002, "batch_slowdown": 0.5}],
}
FAULTS: dict[str, dict[str, Any]] = {
    "slow": {"kind": "latency", "ttft_add_s": 0.6},
    "errors": {"kind": "errors", "rate": 0.05, "mode": "http_500"},
}


def run_demo(*, out: str, duration_s: float, rate: float, spec: str | None, fault: str, workers: int,
             progress: str) -> int:
    """Start the simulator, load it at ``rate`` for ``duration_s`` and judge the run; the exit code."""
    from forge_slo.sim import SimProcess

    if duration_s <= DEMO_WARMUP_S:
        raise UsageError(f"--duration: the demo needs more than {DEMO_WARMUP_S:g}s (its first second is warm-up)")
    if not 0 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers: {workers} is not between 0 and {MAX_WORKERS}")
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: {out_dir}: {exc.strerror or exc}") from None
    spec = spec or _default_spec(out_dir)
    config = dict(SIM_CONFIG)
    if fault != "none":
        config["faults"] = [FAULTS[fault]]
    with SimProcess(config) as sim:
        print(f"simulator: {sim.base_url} (model {DEMO_MODEL}{', fault: ' + fault if fault != 'none' else ''})")
        print(f"spec: {spec}")
        options = LoadOptions(
            target=sim.url, endpoint=endpoint_for("chat"), model=DEMO_MODEL, stages=(Stage("rate", rate),),
            duration_s=duration_s, warmup_s=DEMO_WARMUP_S, prompt_tokens=LengthDist("uniform", 64, 256),
            output_tokens=LengthDist("uniform", 32, 96), timeout_s=30.0, spec_path=spec, out=str(out_dir),
            workers=workers, progress=progress)
        code = run_load(options)
    print(f"report: {out_dir / 'report.html'}")
    return code


def _default_spec(out_dir: Path) -> str:
    """slo_specs/chat.yaml when it is here, else the built-in copy written to ``out_dir``."""
    if EXAMPLE_SPEC.is_file():
        return str(EXAMPLE_SPEC)
    builtin = out_dir / "demo-spec.yaml"
    builtin.write_text(BUILTIN_SPEC, encoding="utf-8")
    return str(builtin)
