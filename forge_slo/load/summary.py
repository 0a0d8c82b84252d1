"""``summary.json``: per stage throughput, latency percentiles, errors by kind, SLO attainment and goodput.

Built from the exact per-request records and the run's stage windows (``run.json``), so it can be
rebuilt after the fact (``build_summary``) and an interrupted run still gets one.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forge_slo.load.judge import Criterion, SpecInfo, good_requests, judge
from forge_slo.sources.records import ERROR_KINDS, RequestRecord

SUMMARY_VERSION = 1
PERCENTILES = (50, 90, 99)


def latency_stats(values: Iterable[float]) -> dict[str, Any]:
    """count, mean, p50, p90, p99, min, max (seconds); percentiles interpolate linearly (numpy's default)."""
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None}
    p = np.percentile(arr, PERCENTILES)
    return {"count": int(arr.size), "mean": float(arr.mean()), "p50": float(p[0]), "p90": float(p[1]),
            "p99": float(p[2]), "min": float(arr.min()), "max": float(arr.max())}


def stage_summary(stage: dict[str, Any], records: Sequence[RequestRecord],
                  criteria: Sequence[Criterion]) -> dict[str, Any]:
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    failed = len(measured) - len(ok)
    start = stage.get("measure_from") or stage.get("started_at") or 0.0
    end = stage.get("ended_at") or start
    duration = max(0.0, float(end) - float(start))
    per_s = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    kinds = Counter(r.error_kind or "other" for r in measured if not r.ok)
    statuses = Counter(str(r.status) for r in measured if not r.ok and r.status is not None)
    finish = Counter(r.finish_reason or "none" for r in ok)
    slos = judge(measured, criteria)
    judged = [s for s in slos if s["judged"]]
    good = good_requests(measured, criteria) if criteria else len(ok)
    verdict = "no_spec" if not criteria else ("pass" if all(s["met"] for s in judged) else "fail")
    return {
        "name": stage["name"],
        "mode": stage["mode"],
        "target": stage["value"],
        "started_at": stage.get("started_at"),
        "measure_from": start,
        "ended_at": end,
        "duration_s": duration,
        "stopped_by": stage.get("stopped_by"),
        "requests": len(measured),
        "succeeded": len(ok),
        "failed": failed,
        "warmup_requests": len(records) - len(measured),
        "dropped_arrivals": int(stage.get("dropped", 0)),
        "cancelled_in_flight": int(stage.get("cancelled", 0)),
        "max_schedule_lag_s": stage.get("max_schedule_lag_s"),
        "sent_per_s": per_s(len(measured)),
        "requests_per_s": per_s(len(ok)),
        "output_tokens_per_s": per_s(out_tokens),
        "prompt_tokens_per_s": per_s(prompt_tokens),
        "output_tokens": out_tokens,
        "prompt_tokens": prompt_tokens,
        "tokens_from_usage": sum(1 for r in ok if r.tokens_from == "usage"),
        "latency": {
            "ttft_s": latency_stats(r.ttft_s for r in ok if r.ttft_s is not None),
            "tpot_s": latency_stats(r.tpot_s for r in ok if r.tpot_s is not None),
            "itl_s": latency_stats(g for r in ok for g in r.itl_s),
            "e2e_s": latency_stats(r.e2e_s for r in ok if r.e2e_s is not None),
        },
        "errors": {
            "rate": failed / len(measured) if measured else 0.0,
            "by_kind": {k: kinds[k] for k in ERROR_KINDS if kinds[k]},
            "by_status": dict(sorted(statuses.items())),
        },
        "finish_reasons": dict(sorted(finish.items())),
        "slos": slos,
        "good_requests": good,
        "goodput_requests_per_s": per_s(good),
        "verdict": verdict,
    }


def build_summary(records: Sequence[RequestRecord], run: dict[str, Any], spec: SpecInfo | None) -> dict[str, Any]:
    """The whole summary: run facts plus one entry per stage that ran."""
    criteria = spec.criteria if spec else ()
    by_stage: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_stage.setdefault(r.stage, []).append(r)
    stages = []
    for stage in run.get("stages", []):
        stages.append(stage_summary(stage, by_stage.get(stage["name"], []), criteria))
    if not criteria:
        verdict = "no_spec"
    elif not stages:
        verdict = "fail"
    else:
        verdict = "pass" if all(s["verdict"] == "pass" for s in stages) else "fail"
    return {
        "version": SUMMARY_VERSION,
        "target": run.get("target"),
        "endpoint": run.get("endpoint"),
        "model": run.get("model"),
        "api": run.get("api"),
        "workers": run.get("workers", 0),
        "workload": run.get("workload", {}),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
        "interrupted": bool(run.get("interrupted")),
        "stopped_early": run.get("stopped_early"),
        "stages_planned": run.get("stages_planned", [s["name"] for s in run.get("stages", [])]),
        "records": len(records),
        "spec": None if spec is None else {
            "service": spec.service, "source": spec.source,
            "slos": [c.to_dict() for c in spec.criteria],
        },
        "verdict": verdict,
        "stages": stages,
    }


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a reader never sees half a file); NaN becomes null."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
