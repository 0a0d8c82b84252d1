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
    write_json(out / SUMMARY, summary)
    from forge_slo.load.report import render_report

    tmp = out / (REPORT + ".tmp")
    tmp.write_text(render_report(summary, records), encoding="utf-8")
    tmp.replace(out / REPORT)
    return summary


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
