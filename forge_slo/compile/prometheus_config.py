"""A Prometheus configuration that scrapes the given targets and loads compiled rule files."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forge_slo.durations import format_duration
from forge_slo.errors import UsageError

_TARGET = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$")


def check_target(target: str) -> str:
    match = _TARGET.match(target)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise UsageError(f"--scrape: {target!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    return target


def prometheus_config(targets: Sequence[str], rule_files: Sequence[str], *, scrape_interval_s: float = 15.0,
                      evaluation_interval_s: float | None = None, job: str = "forge-slo") -> dict[str, Any]:
    """The configuration; intervals in seconds, written as Prometheus spells durations (2.5 s is ``2s500ms``:
    Prometheus refuses decimals)."""
    if not targets:
        raise UsageError("--scrape: give at least one HOST:PORT to scrape")
    return {
        "global": {
            "scrape_interval": format_duration(scrape_interval_s),
            "evaluation_interval": format_duration(evaluation_interval_s or scrape_interval_s),
            # A scrape must finish before the next one starts.
            "scrape_timeout": format_duration(min(scrape_interval_s, 10.0)),
        },
        "rule_files": list(rule_files),
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [check_target(t) for t in targets]}]}],
    }


def rule_files_in(directory: Path) -> list[str]:
    """The compiled rule files under ``directory`` (``DIR/prometheus/*.rules.yaml`` or ``DIR/*.rules.yaml``)."""
    for candidate in (directory / "prometheus", directory):
        files = sorted(candidate.glob("*.rules.yaml"))
        if files:
            return [str(f.resolve()) for f in files]
    raise UsageError(f"--rules: no *.rules.yaml in {directory} or {directory / 'prometheus'}; "
                     "run forge-slo compile first")
