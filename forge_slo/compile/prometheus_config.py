"""A Prometheus configuration that scrapes the given targets and loads compiled rule files."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forge_slo.durations import format_duration, parse_duration
from forge_slo.errors import UsageError

_TARGET = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$")


def check_target(target: str) -> str:
    match = _TARGET.match(target)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise UsageError(f"--scrape: {target!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    return target


def prometheus_config(targets: Sequence[str], rule_files: Sequence[str], *, scrape_interval: str = "15s",
                      evaluation_interval: str | None = None, job: str = "forge-slo") -> dict[str, Any]:
    for flag, value in (("--scrape-interval", scrape_interval), ("--evaluation-interval", evaluation_interval)):
        if value is not None:
            try:
                parse_duration(value)
            except ValueError as exc:
                raise UsageError(f"{flag}: {exc}") from None
    if not targets:
        raise UsageError("--scrape: give at least one HOST:PORT to scrape")
    scrape_s = parse_duration(scrape_interval)
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval or scrape_interval,
            # A scrape must finish before the next one starts.
            "scrape_timeout": format_duration(min(scrape_s, 10.0)),
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
