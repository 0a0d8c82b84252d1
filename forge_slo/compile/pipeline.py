"""From specs to artifacts: every producer in turn. Writing files is the CLI's job (forge_slo.output)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from forge_slo.compile import alertmanager, dashboards, promtool_tests, rollouts, rules
from forge_slo.compile.artifact import Artifact
from forge_slo.compile.producer import CompileOptions, Producer
from forge_slo.spec.model import ServiceSpec

# Every output of `forge-slo compile`, in the order they are written. One line per output.
PRODUCERS: tuple[Producer, ...] = (
    rules.PRODUCER,
    promtool_tests.PRODUCER,
    dashboards.PRODUCER,
    rollouts.PRODUCER,
    alertmanager.PRODUCER,
)


def formats() -> dict[str, str]:
    """Every value of ``--format`` with its help line; the first is the default."""
    out: dict[str, str] = {}
    for producer in PRODUCERS:
        out.update(producer.formats)
    return out


@dataclass
class CompileResult:
    artifacts: list[Artifact] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def compile_specs(specs: Sequence[ServiceSpec], options: CompileOptions | None = None,
                  skip: Iterable[str] = ()) -> CompileResult:
    """What every producer (except those named in ``skip``) makes of ``specs``."""
    options = options or CompileOptions()
    if options.format not in formats():
        raise ValueError(f"unknown format {options.format!r}")
    skipped = set(skip)
    result = CompileResult()
    for producer in PRODUCERS:
        if producer.name in skipped:
            continue
        artifacts, warnings = producer.artifacts(specs, options)
        result.artifacts.extend(artifacts)
        result.warnings.extend(warnings)
    return result
