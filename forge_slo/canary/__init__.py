"""Canary analysis: compare a canary against its baseline on the SLIs of a spec, once or continuously.

``judge.judge`` / ``judge_source`` give a :class:`CanaryVerdict` (pass, fail or inconclusive, a decision for the
rollout, a score and every check explained) from :class:`PrometheusSource` or :class:`RecordsSource` data.
The statistics (confidence sequences valid at every look) live in :mod:`forge_slo.canary.stats`; the CLI in
:mod:`forge_slo.canary.command`; the HTTP gate for Argo Rollouts and Flagger in :mod:`forge_slo.canary.gate`.

Names are imported on first use, so importing ``forge_slo.canary.command`` (as the CLI does) stays cheap:
numpy and scipy load only when something is judged.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "check_config_names": "judge", "hold_promotion": "judge", "judge_source": "judge", "plan_checks": "judge",
    "unavailable": "judge",
    "BudgetView": "model", "CanaryVerdict": "model", "CheckResult": "model", "ErrorData": "model",
    "InvalidData": "model", "JudgeConfig": "model", "LatencyData": "model", "MissingData": "model",
    "PlannedCheck": "model", "Policy": "model", "SkippedCheck": "model",
    "SelectorError": "selectors", "format_selector": "selectors", "parse_selector": "selectors",
    "CanarySource": "sources", "PrometheusSource": "sources", "RecordsSource": "sources",
}
__all__ = [
    "BudgetView", "CanarySource", "CanaryVerdict", "CheckResult", "ErrorData", "InvalidData", "JudgeConfig",
    "LatencyData", "MissingData", "PlannedCheck", "Policy", "PrometheusSource", "RecordsSource", "SelectorError",
    "SkippedCheck", "check_config_names", "format_selector", "hold_promotion", "judge_source", "parse_selector",
    "plan_checks", "unavailable",
]

if TYPE_CHECKING:
    from forge_slo.canary.judge import check_config_names, hold_promotion, judge_source, plan_checks, unavailable
    from forge_slo.canary.model import (
        BudgetView,
        CanaryVerdict,
        CheckResult,
        ErrorData,
        InvalidData,
        JudgeConfig,
        LatencyData,
        MissingData,
        PlannedCheck,
        Policy,
        SkippedCheck,
    )
    from forge_slo.canary.selectors import SelectorError, format_selector, parse_selector
    from forge_slo.canary.sources import CanarySource, PrometheusSource, RecordsSource


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forge_slo.canary' has no attribute {name!r}")
    return getattr(importlib.import_module(f"forge_slo.canary.{module}"), name)
