"""The files a load run leaves in ``--out``: records.jsonl, run.json, summary.json, report.html.

``write_outputs`` runs at the end of a run (in the Locust master or the only process); ``rebuild_outputs``
does the same from the files alone, e.g. when the run was killed before it could.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forge_slo.errors import SourceError
from forge_slo.load.judge import SpecInfo
from forge_slo.load.server_view import SERVER_METRICS, Sample, read_samples, window_quantiles
from forge_slo.load.summary import build_summary, write_json
from forge_slo.sources.records import RequestRecord, read_records

RECORDS = "records.jsonl"
RUN = "run.json"
SUMMARY = "summary.json"
REPORT = "report.html"


def write_outputs(out: Path, run: dict[str, Any], spec: SpecInfo | None) -> dict[str, Any]:
    write_json(out / RUN, run)
    records = _records(out)
    summary = build_summary(records, run, spec)
    meta, samples = read_samples(out / SERVER_METRICS)
    if samples:
        attach_server(summary, samples, meta)
    write_json(out / SUMMARY, summary)
    from forge_slo.load.report import render_report

    tmp = out / (REPORT + ".tmp")
    tmp.write_text(render_report(summary, records, samples), encoding="utf-8")
    tmp.replace(out / REPORT)
    return summary


def attach_server(summary: dict[str, Any], samples: list[Sample], meta: dict[str, Any]) -> None:
    """Each stage's figures from the server's own metrics (``server`` in the stage): its TTFT p50/p99 over the
    stage, the mean running and waiting requests, the highest KV-cache usage."""
    summary["server_metrics"] = {"source": meta.get("source"), "preset": meta.get("preset"),
                                 "samples": len(samples)}
    for stage in summary.get("stages", []):
        start = float(stage.get("started_at") or 0.0)
        end = start + float(stage.get("wall_s") or 0.0) + 1.0
        if stage.get("ended_at"):
            end = max(end, float(stage["ended_at"]))
        inside = [s for s in samples if start <= s["t"] <= end]
        p50, p99 = window_quantiles(samples, start, end)

        def mean(key: str, inside: list[Sample] = inside) -> float | None:
            values = [float(s[key]) for s in inside if s.get(key) is not None]
            return sum(values) / len(values) if values else None

        kv = [float(s["kv_cache_usage"]) for s in inside if s.get("kv_cache_usage") is not None]
        stage["server"] = {"ttft_p50": p50, "ttft_p99": p99, "running_mean": mean("running"),
                           "waiting_mean": mean("waiting"), "kv_cache_usage_max": max(kv) if kv else None,
                           "samples": len(inside)}


def _records(out: Path) -> list[RequestRecord]:
    path = out / RECORDS
    if not path.exists():
        return []
    try:
        return read_records(path)
    except SourceError:
        # A run killed mid-write can leave half a last line: keep every complete record before it.
        from forge_slo.sources.records import iter_records

        with path.open(encoding="utf-8") as handle:
            lines = handle.readlines()
        if lines and not lines[-1].endswith("\n"):
            return list(iter_records(lines[:-1], str(path)))
        raise


def rebuild_outputs(out: Path, spec: SpecInfo | None, fallback_run: dict[str, Any]) -> dict[str, Any] | None:
    """Summary and report from ``records.jsonl`` and ``run.json`` (or ``fallback_run``); None without records."""
    run_path = out / RUN
    run: dict[str, Any] = fallback_run
    if run_path.exists():
        try:
            run = json.loads(run_path.read_text(encoding="utf-8"))
        except ValueError:
            run = fallback_run
    if not (out / RECORDS).exists() and not run.get("stages"):
        return None
    if not run.get("stages"):
        records = _records(out)
        if not records:
            return None
        names: list[str] = []
        for r in records:
            if r.stage not in names:
                names.append(r.stage)
        stages = []
        for name in names:
            times = [r.start_time for r in records if r.stage == name]
            mode, _, value = name.partition("=")
            stages.append({"name": name, "mode": mode, "value": float(value or 0), "started_at": min(times),
                           "measure_from": min(times), "ended_at": max(times), "stopped_by": "interrupt"})
        run = {**run, "stages": stages, "interrupted": True}
    return write_outputs(out, run, spec)
