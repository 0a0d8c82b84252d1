"""A verdict as a table for people (JSON is :meth:`CanaryVerdict.to_json`)."""

from __future__ import annotations

from forge_slo.canary.judge import burn_text, duration_text, interval_text, pct, share_text
from forge_slo.canary.model import CanaryVerdict, CheckResult
from forge_slo.runtime.text import table


def _value(result: CheckResult, value: float | None) -> str:
    if value is None:
        return "-"
    if result.unit == "ratio":
        return share_text(value)
    if value < 1.0:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s"


def _allowed(result: CheckResult) -> str:
    if result.direction == "increase":
        return pct(result.allowed)
    if result.direction == "decrease":
        return pct(-result.allowed)
    return f"±{result.allowed * 100:g}%"


def _burn(result: CheckResult) -> str:
    """'6.2x / 0.8x': the canary's and the baseline's burn rates of the SLO's error budget."""
    if result.budget is None or result.status in ("insufficient", "invalid"):
        return "-"
    return f"{burn_text(result.budget.canary_burn)} / {burn_text(result.budget.baseline_burn)}"


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
    if verdict.stage is not None:
        lines.append(f"stage: {verdict.stage}")
    if verdict.checks:
        lines.append(f"alpha {verdict.alpha:g} across {len(verdict.checks)} checks and every look "
                     f"({verdict.alpha_per_check:.3g} per check)")
        header = ("check", "status", "change", "interval", "allowed", "baseline", "canary", "budget burn",
                  "n base", "n canary")
        rows = [header]
        for r in verdict.checks:
            status = r.status + ("" if r.critical else " (advisory)")
            rows.append((r.name, status, pct(r.estimate), interval_text(r.lower, r.upper), _allowed(r),
                         _value(r, r.baseline_value), _value(r, r.canary_value), _burn(r),
                         f"{r.baseline_samples:.0f}", f"{r.canary_samples:.0f}"))
        lines.append("")
        lines.extend(table(rows[0], rows[1:], indent=""))
        lines.append("")
        lines.extend(f"{r.name}: {r.explanation}" for r in verdict.checks
                     if r.status in ("fail", "doubt", "insufficient", "invalid"))
    lines.extend(f"skipped {s.name}: {s.reason}" for s in verdict.skipped)
    return "\n".join(lines).rstrip() + "\n"
