"""``forge-slo load compare RUN_A RUN_B``: two runs side by side, for a before/after.

A table of the stages both ran (matched by name; a capacity search's answers first), each figure of B beside
A's with the change, and a page (``--out``) with the same table and the runs' charts overlaid: latency against
throughput, and the latency distributions of every stage they share (A solid, B dashed). Reads only what each
run wrote (``summary.json``, ``records.jsonl``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from forge_slo.errors import SourceError, UsageError
from forge_slo.load.console import ms
from forge_slo.runtime.text import table
from forge_slo.sources.records import RequestRecord, read_records

DEFAULT_OUT = "forge-slo-compare.html"
# (label, how to read it from a stage, how to show it, higher is better)
FIGURES: tuple[tuple[str, str, str, bool], ...] = (
    ("served req/s", "requests_per_s", "num", True),
    ("goodput req/s", "goodput_requests_per_s", "num", True),
    ("tok/s", "output_tokens_per_s", "num0", True),
    ("TTFT p50", "latency.ttft_s.p50", "ms", False),
    ("TTFT p99", "latency.ttft_s.p99", "ms", False),
    ("TPOT p99", "latency.tpot_s.p99", "ms", False),
    ("ITL p99", "latency.itl_s.p99", "ms", False),
    ("e2e p99", "latency.e2e_s.p99", "ms", False),
    ("errors", "errors.rate", "pct", False),
)


@dataclass(frozen=True)
class Run:
    label: str
    path: Path
    summary: dict[str, Any]
    records: tuple[RequestRecord, ...]

    def stage(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.summary.get("stages", []) if s["name"] == name), None)


def build_compare_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = ("Compare two load runs (their --out directories): a table of every stage both ran, B "
                          "beside A with the change, and a page with their charts overlaid.")
    parser.add_argument("runs", nargs=2, metavar="RUN", help="two run directories: A (before) and B (after)")
    parser.add_argument("--out", dest="compare_out", default=DEFAULT_OUT, metavar="FILE",
                        help=f"the page with the table and overlaid charts (default {DEFAULT_OUT})")
    parser.add_argument("--labels", metavar="A,B", help="names of the runs (default: their directories' names)")
    return parser


def compare_from_args(args: argparse.Namespace) -> int:
    labels = _labels(args.labels, args.runs)
    runs = [load_run(Path(path), label) for path, label in zip(args.runs, labels, strict=True)]
    a, b = runs
    print("\n".join(compare_lines(a, b)))
    out = Path(args.compare_out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(render_compare(a, b), encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        raise UsageError(f"--out: {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}")
    return 0


def _labels(raw: str | None, paths: list[str]) -> list[str]:
    if not raw:
        names = [Path(p).resolve().name or p for p in paths]
        return names if names[0] != names[1] else ["A", "B"]
    labels = [part.strip() for part in raw.split(",")]
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
        raise UsageError(f"--labels: {raw!r} must be two different names, A,B")
    return labels


def load_run(path: Path, label: str) -> Run:
    """A run's summary and records; UsageError naming the directory when it is not a run's."""
    summary_path = path / "summary.json"
    if not path.is_dir():
        raise UsageError(f"{path}: no such directory (a forge-slo load --out directory)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no summary.json (is it a forge-slo load --out directory?)") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{summary_path}: cannot read it ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("stages"), list):
        raise UsageError(f"{summary_path}: not the summary of a forge-slo load run")
    records: tuple[RequestRecord, ...] = ()
    if (path / "records.jsonl").is_file():
        try:
            records = tuple(read_records(path / "records.jsonl"))
        except SourceError as exc:
            raise UsageError(str(exc)) from None
    return Run(label, path, summary, records)


def _get(stage: dict[str, Any], key: str) -> float | None:
    value: Any = stage
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _show(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "ms":
        return ms(value)
    if kind == "pct":
        return f"{value * 100:.2f}%"
    return f"{value:.0f}" if kind == "num0" else f"{value:.2f}"


def change(a: float | None, b: float | None, higher_better: bool) -> str:
    """``+12.5% better`` / ``-3.1% worse`` (B against A)."""
    if a is None or b is None:
        return "-"
    if a == 0:
        return "same" if b == 0 else "new"
    delta = (b - a) / abs(a) * 100
    if abs(delta) < 0.05:
        return "same"
    better = (delta > 0) == higher_better
    return f"{delta:+.1f}% {'better' if better else 'worse'}"


def shared_stages(a: Run, b: Run) -> list[str]:
    names_b = {s["name"] for s in b.summary.get("stages", [])}
    return [s["name"] for s in a.summary.get("stages", []) if s["name"] in names_b]


def compare_rows(a: Run, b: Run) -> list[tuple[str, ...]]:
    """(stage, figure, A, B, change) for every figure of every shared stage, and the verdicts."""
    rows: list[tuple[str, ...]] = []
    for name in shared_stages(a, b):
        sa, sb = a.stage(name), b.stage(name)
        assert sa is not None and sb is not None
        for label, key, kind, higher in FIGURES:
            va, vb = _get(sa, key), _get(sb, key)
            rows.append((name, label, _show(va, kind), _show(vb, kind), change(va, vb, higher)))
        rows.append((name, "verdict", str(sa.get("search_verdict") or sa["verdict"]),
                     str(sb.get("search_verdict") or sb["verdict"]), ""))
    return rows


def capacity_line(a: Run, b: Run) -> str | None:
    sa, sb = a.summary.get("search"), b.summary.get("search")
    if not sa and not sb:
        return None

    def value(search: dict[str, Any] | None) -> float | None:
        answer = (search or {}).get("answer")
        return float(answer["value"]) if answer else None

    va, vb = value(sa), value(sb)
    show = [f"{v:g}" if v is not None else "none held" for v in (va, vb)]
    return f"capacity: {a.label} {show[0]}, {b.label} {show[1]} ({change(va, vb, True)})"


def compare_lines(a: Run, b: Run) -> list[str]:
    lines = [f"A: {a.label} ({a.path}), B: {b.label} ({b.path})"]
    cap = capacity_line(a, b)
    if cap:
        lines.append(cap)
    rows = compare_rows(a, b)
    if not rows:
        lines.append("the runs share no stage (stages are matched by name, e.g. rate=4)")
        return lines
    return lines + table(("stage", "figure", a.label, b.label, "B against A"), rows)


def render_compare(a: Run, b: Run) -> str:
    from forge_slo.load.report import _CSS, METRICS, _cdf_chart, latency_against_throughput

    rows = "".join("<tr>" + "".join(f"<td class=l>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in compare_rows(a, b))
    head = "".join(f"<th class=l>{escape(h)}</th>" for h in ("stage", "figure", a.label, b.label, "B against A"))
    shared = shared_stages(a, b)
    charts = []
    for key, title, metric in (("ttft_s", "TTFT", "ttft"), ("tpot_s", "TPOT", "tpot"), ("e2e_s", "e2e", "e2e")):
        runs = [(run.label, run.summary, [s for s in run.summary.get("stages", []) if s["succeeded"]])
                for run in (a, b)]
        if chart := latency_against_throughput(runs, key, f"{title}: {a.label} and {b.label} (dashed)", metric):
            charts.append(chart)
    by_stage: dict[str, list[RequestRecord]] = {}
    dashed = set()
    for name in shared:
        by_stage[f"{a.label} {name}"] = [r for r in a.records if r.stage == name]
        by_stage[f"{b.label} {name}"] = [r for r in b.records if r.stage == name]
        dashed.add(f"{b.label} {name}")
    cdfs = [c for key, title, metric in METRICS
            if (c := _cdf_chart(a.summary, by_stage, key, title, metric, frozenset(dashed)))]
    cap = capacity_line(a, b)
    return "\n".join([
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>forge-slo load compare: {escape(a.label)} and {escape(b.label)}</title><style>{_CSS}</style>"
        "</head><body>",
        f"<h1>{escape(a.label)} (A) and {escape(b.label)} (B)</h1>",
        f"<p>A: {escape(str(a.path))}, B: {escape(str(b.path))}; stages matched by name.</p>",
        f"<div class=answer>{escape(cap)}</div>" if cap else "",
        f"<table><tr>{head}</tr>{rows}</table>" if rows else "<p>The runs share no stage.</p>",
        "<h2>Latency against throughput</h2><div class=charts>", "".join(charts), "</div>",
        "<h2>Latency distributions of the shared stages</h2><div class=charts>", "".join(cdfs), "</div>",
        "</body></html>",
    ])
