"""A verdict as a table for people (JSON is :meth:`CanaryVerdict.to_json`)."""

from __future__ import annotations

from forge_slo.canary.judge import duration_text, interval_text, pct
from forge_slo.canary.model import CanaryVerdict, CheckResult
from forge_slo.runtime.text import table


def _value(result: CheckResult, value: float | None) -> str:
    if value is None:
        return "-"
    if result.unit == "ratio":
        return f"{value:.3%}"
    if value < 1.0:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s"


def _allowed(result: CheckResult) -> str:
    if result.direction == "increase":
        return pct(result.allowed)
    if result.direction == "decrease":
        return pct(-result.allowed)
    return f"±{result.allowed * 100:g}%"


def render_table(verdict: CanaryVerdict) -> str:
    """The verdict, its reason, then one row per check and the skipped ones."""
    state = "complete" if verdict.complete else f"{duration_text(verdict.window_seconds)} window open"
    score = "-" if verdict.score is None else f"{verdict.score:.0f}"
    lines = [
        f"canary {verdict.service}: {verdict.verdict.upper()}  (decision {verdict.decision}, score {score}, "
        f"{duration_text(verdict.elapsed_seconds)} of data, {state})",
        f"  {verdict.reason}",
        f"source: {verdict.source}",
    ]
    if verdict.checks:
        lines.append(f"alpha {verdict.alpha:g} across {len(verdict.checks)} checks and every look "
                     f"({verdict.alpha_per_check:.3g} per check)")
        header = ("check", "status", "change", "interval", "allowed", "baseline", "canary", "n base", "n canary")
        rows = [header]
        for r in verdict.checks:
            status = r.status + ("" if r.critical else " (advisory)")
            rows.append((r.name, status, pct(r.estimate), interval_text(r.lower, r.upper), _allowed(r),
                         _value(r, r.baseline_value), _value(r, r.canary_value), f"{r.baseline_samples:.0f}",
                         f"{r.canary_samples:.0f}"))
        lines.append("")
        lines.extend(table(rows[0], rows[1:], indent=""))
        lines.append("")
        lines.extend(f"{r.name}: {r.explanation}" for r in verdict.checks
                     if r.status in ("fail", "insufficient", "invalid"))
    lines.extend(f"skipped {s.name}: {s.reason}" for s in verdict.skipped)
    return "\n".join(lines).rstrip() + "\n"
