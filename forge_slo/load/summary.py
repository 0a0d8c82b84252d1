"""``summary.json``: per stage throughput, latency percentiles, errors by kind, SLO attainment and goodput.

Built from the exact per-request records and the run's stage windows (``run.json``), so it can be
rebuilt after the fact (``build_summary``) and an interrupted run still gets one.

Two rates per stage, side by side, never one in place of the other:

- offered (``sent_per_s``): requests sent over the stage's sending window (``duration_s``, from the end of
  the warm-up to the end of sending);
- served (``requests_per_s``, and with it ``output_tokens_per_s`` and ``goodput_requests_per_s``): successful
  requests (their tokens, those that met every latency SLO) over the stage's wall time ``wall_s``, from its
  first request sent to its last request finished, so the drain is included (vLLM's benchmark divides by
  its whole run, AIPerf and genai-perf by first request to last response).

A stage is *saturated* when its server could not keep up with what was sent (:func:`saturation`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forge_slo.load.judge import Criterion, SpecInfo, good_requests, judge, stage_verdict
from forge_slo.sources.records import ERROR_KINDS, RequestRecord, outcome_of

SUMMARY_VERSION = 1
PERCENTILES = (50, 90, 99)
# Queueing grew when the first-token wait rose by at least this much per second of sending, and by at
# least GROWTH_MIN_S over the stage: far above what jitter gives a server that keeps up (its wait stays flat).
GROWTH_SLOPE = 0.05
GROWTH_MIN_S = 0.5
GROWTH_MIN_REQUESTS = 10


def latency_stats(values: Iterable[float]) -> dict[str, Any]:
    """count, mean, p50, p90, p99, min, max (seconds); percentiles interpolate linearly (numpy's default)."""
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None}
    p = np.percentile(arr, PERCENTILES)
    return {"count": int(arr.size), "mean": float(arr.mean()), "p50": float(p[0]), "p90": float(p[1]),
            "p99": float(p[2]), "min": float(arr.min()), "max": float(arr.max())}


def _end(record: RequestRecord) -> float:
    return record.start_time + (record.e2e_s or 0.0)


def wall_time(records: Sequence[RequestRecord]) -> float:
    """First request sent -> last request finished (its last token, or its failure): the drain included."""
    if not records:
        return 0.0
    return max(0.0, max(_end(r) for r in records) - min(r.start_time for r in records))


def _first_token_waits(records: Sequence[RequestRecord]) -> list[tuple[float, float]]:
    """(sent, wait for the first token) of every request that got one, or timed out waiting for it (the
    wait is then at least its time to the timeout, which is what the queue made it)."""
    out = []
    for r in records:
        if r.ttft_s is not None:
            out.append((r.start_time, r.ttft_s))
        elif r.error_kind == "timeout" and r.e2e_s is not None:
            out.append((r.start_time, r.e2e_s))
    return out


def queue_growth(records: Sequence[RequestRecord]) -> tuple[float, float] | None:
    """(slope, growth over the sending span) of the least-squares line of first-token wait against send time;
    None with too few requests. A server that keeps up has a flat line; one whose queue grows, a line that
    rises by (sent rate / served rate - 1) seconds per second."""
    points = _first_token_waits(records)
    if len(points) < GROWTH_MIN_REQUESTS:
        return None
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    xs -= xs.mean()
    spread = float((xs * xs).sum())
    if spread <= 0.0:
        return None
    slope = float((xs * (ys - ys.mean())).sum()) / spread
    return slope, slope * float(xs.max() - xs.min())


def saturation(records: Sequence[RequestRecord], dropped: int, growth: tuple[float, float] | None) -> list[str]:
    """Why the server could not keep up with the stage (empty: it kept up): arrivals dropped at
    ``--max-in-flight``, requests shed (429, 503), or a queue that grew over the stage (``growth``, from
    :func:`queue_growth`)."""
    reasons = []
    if dropped:
        reasons.append(f"{dropped} arrivals dropped at --max-in-flight")
    shed = sum(1 for r in records if outcome_of(r) == "shed")
    if shed:
        reasons.append(f"the server shed {shed} requests (429, 503)")
    if growth is not None and growth[0] >= GROWTH_SLOPE and growth[1] >= GROWTH_MIN_S:
        reasons.append(f"queueing grew: the wait for the first token rose {growth[1]:.2f}s over the stage "
                       f"({growth[0] * 1000:.0f} ms per second of sending)")
    return reasons


def _rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def stage_summary(stage: dict[str, Any], records: Sequence[RequestRecord],
                  criteria: Sequence[Criterion]) -> dict[str, Any]:
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    failed = len(measured) - len(ok)
    start = stage.get("measure_from") or stage.get("started_at") or 0.0
    end = stage.get("ended_at") or start
    duration = max(0.0, float(end) - float(start))
    wall = wall_time(measured)
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    kinds = Counter(r.error_kind or "other" for r in measured if not r.ok)
    statuses = Counter(str(r.status) for r in measured if not r.ok and r.status is not None)
    finish = Counter(r.finish_reason or "none" for r in ok)
    slos = judge(measured, criteria)
    judged = [s for s in slos if s["judged"]]
    good = good_requests(measured, criteria) if criteria else len(ok)
    verdict = "no_spec" if not criteria else ("pass" if all(s["met"] for s in judged) else "fail")
    dropped = int(stage.get("dropped", 0))
    growth = queue_growth(measured)
    reasons = saturation(measured, dropped, growth)
    return {
        "name": stage["name"],
        "mode": stage["mode"],
        "target": stage["value"],
        "started_at": stage.get("started_at"),
        "measure_from": start,
        "ended_at": end,
        "duration_s": duration,
        "wall_s": wall,
        "stopped_by": stage.get("stopped_by"),
        "requests": len(measured),
        "succeeded": len(ok),
        "failed": failed,
        "warmup_requests": len(records) - len(measured),
        "dropped_arrivals": dropped,
        "cancelled_in_flight": int(stage.get("cancelled", 0)),
        "max_schedule_lag_s": stage.get("max_schedule_lag_s"),
        "sent_per_s": _rate(len(measured), duration),
        "requests_per_s": _rate(len(ok), wall),
        "output_tokens_per_s": _rate(out_tokens, wall),
        "prompt_tokens_per_s": _rate(prompt_tokens, wall),
        "output_tokens": out_tokens,
        "prompt_tokens": prompt_tokens,
        "tokens_from_usage": sum(1 for r in ok if r.tokens_from == "usage"),
        "saturated": bool(reasons),
        "saturation": reasons,
        "queue_growth_s_per_s": None if growth is None else growth[0],
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
        "top_errors": top_errors(measured),
        "models": _per_model(measured),
        "slos": slos,
        "missed": [s["name"] for s in judged if not s["met"]],
        "good_requests": good,
        "goodput_requests_per_s": _rate(good, wall),
        "verdict": verdict,
    }


def top_errors(records: Sequence[RequestRecord], limit: int = 3) -> list[dict[str, Any]]:
    """The most frequent failures: kind, message (its first 160 characters) and how many requests had it."""
    seen = Counter((r.error_kind or "other", r.error[:160]) for r in records if not r.ok)
    return [{"kind": k, "message": m, "requests": n}
            for (k, m), n in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def _per_model(records: Sequence[RequestRecord]) -> dict[str, dict[str, Any]]:
    """Requests, successes and TTFT p50/p99 per model, when the run sent to more than one."""
    models = sorted({r.model for r in records})
    if len(models) < 2:
        return {}
    out = {}
    for model in models:
        mine = [r for r in records if r.model == model]
        ttft = latency_stats(r.ttft_s for r in mine if r.ok and r.ttft_s is not None)
        out[model] = {"requests": len(mine), "succeeded": sum(1 for r in mine if r.ok),
                      "ttft_p50": ttft["p50"], "ttft_p99": ttft["p99"]}
    return out


def search_answer(stages: Sequence[dict[str, Any]], search: dict[str, Any]) -> dict[str, Any]:
    """The capacity search's answer: the highest load that held with the confidence asked, below the lowest that
    did not; what broke first above it; every stage tried, in order."""
    asked = float(search["confidence"])
    failing = [s for s in stages if s["search_verdict"] != "held"]
    lowest_fail = min(failing, key=lambda s: float(s["target"])) if failing else None
    held = [s for s in stages if s["search_verdict"] == "held"
            and (lowest_fail is None or float(s["target"]) < float(lowest_fail["target"]))]
    best = max(held, key=lambda s: float(s["target"])) if held else None
    answer = None
    if best is not None:
        judged = [x for x in best["slos"] if x["judged"]]
        least = min(judged, key=lambda x: x["held_confidence"]) if judged else None
        answer = {"stage": best["name"], "value": best["target"], "goodput_requests_per_s":
                  best["goodput_requests_per_s"], "requests_per_s": best["requests_per_s"],
                  "sent_per_s": best["sent_per_s"], "output_tokens_per_s": best["output_tokens_per_s"],
                  "confidence": best["search_confidence"], "sure": best["search_confidence"] >= asked,
                  "least_sure": None if least is None else {"name": least["name"],
                                                            "held_confidence": least["held_confidence"]}}
    above = None
    if lowest_fail is not None:
        broke = sorted((x for x in lowest_fail["slos"] if x["judged"] and x["name"] in lowest_fail["search_slos"]),
                       key=lambda x: (x["held_confidence"], (x["attainment_percent"] or 0.0) - x["objective_percent"]))
        above = {"stage": lowest_fail["name"], "value": lowest_fail["target"],
                 "verdict": lowest_fail["search_verdict"], "confidence": lowest_fail["search_confidence"],
                 "sure": lowest_fail["search_confidence"] >= asked,
                 "broke": [{"name": x["name"], "attainment_percent": x["attainment_percent"],
                            "objective_percent": x["objective_percent"], "held_confidence": x["held_confidence"]}
                           for x in broke]}
    return {**search, "answer": answer, "above": above,
            "tried": [{"stage": s["name"], "value": s["target"], "verdict": s["search_verdict"],
                       "confidence": s["search_confidence"], "slos": s["search_slos"], "stopped_by": s["stopped_by"],
                       "duration_s": s["duration_s"]} for s in stages]}


def saturation_note(summary: dict[str, Any]) -> str:
    """``"; saturated: rate=24 (served 7.9 of 24.0 req/s offered)"`` for the verdict line, or nothing."""
    parts = [f"{s['name']} (served {s['requests_per_s']:.2f} of {s['sent_per_s']:.2f} req/s offered)"
             for s in summary.get("stages", []) if s.get("saturated")]
    return f"; saturated: {', '.join(parts)}" if parts else ""


def build_summary(records: Sequence[RequestRecord], run: dict[str, Any], spec: SpecInfo | None) -> dict[str, Any]:
    """The whole summary: run facts plus one entry per stage that ran."""
    criteria = spec.criteria if spec else ()
    by_stage: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_stage.setdefault(r.stage, []).append(r)
    stages = []
    for stage in run.get("stages", []):
        stages.append(stage_summary(stage, by_stage.get(stage["name"], []), criteria))
    search = run.get("search")
    if search and criteria:
        for st in stages:
            st["search_verdict"], st["search_confidence"], st["search_slos"] = stage_verdict(st["slos"])
    if not criteria:
        verdict = "no_spec"
    elif not stages:
        verdict = "fail"
    else:
        verdict = "pass" if all(s["verdict"] == "pass" for s in stages) else "fail"
    answer = search_answer(stages, search) if search and criteria else None
    if answer is not None:  # a search fails stages on purpose: it passes when some load held
        verdict = "pass" if answer["answer"] is not None else "fail"
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
        "saturated_stages": [s["name"] for s in stages if s["saturated"]],
        "search": answer,
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
