"""What a load run prints when it ends: a capacity search's answer first, then one row per stage, one row of SLO
attainment per stage (an SLO per column, not a row per SLO and stage), and a verdict that names the stages and
the SLOs they missed. Built from ``summary.json`` alone."""

from __future__ import annotations

from typing import Any

from forge_slo.runtime.text import table


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.2f}s"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def unit_of(mode: str) -> str:
    return "requests/s offered" if mode == "rate" else "concurrent streams"


def format_verdict(summary: dict[str, Any]) -> str:
    """The text printed at the end of a run."""
    lines: list[str] = []
    search = summary.get("search")
    if search:
        lines += search_lines(search) + [""]
    lines += stage_lines(summary)
    spec = summary.get("spec")
    if spec:
        lines += ["", f"SLOs of {spec['service']} ({spec['source']}):", *slo_lines(summary)]
    if summary.get("interrupted"):
        lines.append("interrupted: the figures cover what ran until then")
    if summary.get("stopped_early"):
        lines.append(f"sweep stopped early: {summary['stopped_early']}")
    lines.append(verdict_line(summary))
    return "\n".join(lines)


def sure_text(confidence: float, asked: float) -> str:
    """``97% sure`` and, under the confidence asked, what would firm it up."""
    text = f"{confidence * 100:.0f}% sure"
    return text if confidence >= asked else text + f", under the {asked * 100:g}% asked"


def search_lines(search: dict[str, Any]) -> list[str]:
    """The answer of a capacity search, its evidence, and the stages it tried."""
    asked = float(search["confidence"])
    answer, above = search.get("answer"), search.get("above")
    mode = search["mode"]
    if answer is None:
        lines = [f"capacity ({mode}): no load tried held every SLO"]
    else:
        least = answer.get("least_sure")
        lines = [f"capacity: {answer['value']:g} {unit_of(mode)} ({answer['stage']}): every SLO held, "
                 f"{sure_text(answer['confidence'], asked)}" + (f" (least sure: {least['name']})" if least else "")]
        lines.append(f"  there: goodput {answer['goodput_requests_per_s']:.2f} req/s, served "
                     f"{answer['requests_per_s']:.2f} req/s, {answer['output_tokens_per_s']:.0f} tok/s")
        if not answer.get("sure"):
            lines.append("  (longer stages, --duration, give more requests to be sure: a high objective needs "
                         "hundreds without a failure)")
    if above is not None:
        lines.append("  " + broke_text(above) + f", {sure_text(above['confidence'], asked)}")
    tried = ", ".join(f"{t['stage']} {t['verdict']}" for t in search.get("tried", []))
    lines.append(f"  {len(search.get('tried', []))} stages tried: {tried}")
    if search.get("ended"):
        lines.append(f"  search ended: {search['ended']}")
    return lines


def broke_text(above: dict[str, Any]) -> str:
    """``above it, rate=24 missed ttft first (attained 81.20% vs 95%)``."""
    broke = above.get("broke") or []
    if not broke:
        return f"above it, {above['stage']} missed an SLO"
    first = broke[0]
    att = first["attainment_percent"]
    attained = "no events" if att is None else f"attained {att:.2f}% vs {first['objective_percent']:g}%"
    others = f" (also {', '.join(b['name'] for b in broke[1:])})" if len(broke) > 1 else ""
    return f"above it, {above['stage']} missed {first['name']} first ({attained}){others}"


def stage_lines(summary: dict[str, Any]) -> list[str]:
    head = ("stage", "requests", "failed", "sent/s", "served/s", "tok/s", "TTFT p50", "TTFT p99", "TPOT p99",
            "ITL p99", "e2e p99", "goodput/s", "load", "verdict")
    rows: list[tuple[str, ...]] = []
    for s in summary.get("stages", []):
        lat = s["latency"]
        rows.append((s["name"], str(s["requests"]), str(s["failed"]), f"{s['sent_per_s']:.2f}",
                     f"{s['requests_per_s']:.2f}", f"{s['output_tokens_per_s']:.0f}", ms(lat["ttft_s"]["p50"]),
                     ms(lat["ttft_s"]["p99"]), ms(lat["tpot_s"]["p99"]), ms(lat["itl_s"]["p99"]),
                     ms(lat["e2e_s"]["p99"]), f"{s['goodput_requests_per_s']:.2f}",
                     "saturated" if s.get("saturated") else "kept up", stage_verdict(s)))
    lines = table(head, rows)
    for s in summary.get("stages", []):
        kinds = s["errors"]["by_kind"]
        if kinds:
            top = (s.get("top_errors") or [{}])[0]
            message = f" (most: {top['message']})" if top.get("message") else ""
            lines.append(f"errors in {s['name']}: " + ", ".join(f"{k} {v}" for k, v in kinds.items()) + message)
        if s.get("saturated"):
            lines.append(f"{s['name']} saturated: " + "; ".join(s.get("saturation", [])))
    lines.append("sent/s: offered, over the sending window; served/s, tok/s, goodput/s: over first request sent "
                 "to last finished (drain included)")
    return lines


def stage_verdict(stage: dict[str, Any]) -> str:
    verdict = str(stage.get("search_verdict") or stage["verdict"])
    return {"pass": "PASS", "fail": "FAIL", "no_spec": "-"}.get(verdict, verdict)


def slo_lines(summary: dict[str, Any]) -> list[str]:
    """One legend line per SLO, then one row per stage with each judged SLO's attainment in its column."""
    spec = summary["spec"]
    lines = []
    judged = []
    for crit in spec["slos"]:
        if crit["kind"] == "unjudged":
            lines.append(f"  {crit['name']}: {crit['objective_percent']:g}%, {crit['reason']}")
            continue
        judged.append(crit["name"])
        what = "availability" if crit["kind"] == "availability" else f"{crit['metric']} <= {crit['threshold_s']:g}s"
        lines.append(f"  {crit['name']}: {what} for {crit['objective_percent']:g}%")
    rows = []
    for s in summary.get("stages", []):
        by_name = {x["name"]: x for x in s["slos"]}
        rows.append((s["name"], *(_cell(by_name.get(name)) for name in judged)))
    return lines + table(("stage", *judged), rows) if judged else lines


def _cell(row: dict[str, Any] | None) -> str:
    if row is None or not row.get("judged"):
        return "-"
    att = row["attainment_percent"]
    verdict = "PASS" if row["met"] else "FAIL"
    return f"{verdict} (no events)" if att is None else f"{att:.2f}% of {row['events']} {verdict}"


def missed_text(summary: dict[str, Any]) -> str:
    """``rate=8 missed ttft (97.10% < 99%); rate=16 missed ttft, e2e``: each stage with the SLOs it missed."""
    parts = []
    for s in summary.get("stages", []):
        missed = [_missed(x) for x in s["slos"] if x["judged"] and not x["met"]]
        if missed:
            parts.append(f"{s['name']} missed {', '.join(missed)}")
    return "; ".join(parts)


def _missed(row: dict[str, Any]) -> str:
    att = row["attainment_percent"]
    attained = "no events" if att is None else f"{att:.2f}%"
    return f"{row['name']} ({attained} < {row['objective_percent']:g}%)"


def verdict_line(summary: dict[str, Any]) -> str:
    from forge_slo.load.summary import saturation_note

    verdict = summary.get("verdict")
    search = summary.get("search")
    if search:
        answer = search.get("answer")
        text = (f"verdict: PASS (capacity found: {answer['stage']})" if answer else
                "verdict: FAIL (no load tried held every SLO)")
    elif verdict == "pass":
        text = "verdict: PASS (every judged SLO held)"
    elif verdict == "fail":
        text = f"verdict: FAIL ({missed_text(summary) or 'an SLO was missed'})"
    else:
        text = "verdict: none (no --spec given)"
    return text + saturation_note(summary)
