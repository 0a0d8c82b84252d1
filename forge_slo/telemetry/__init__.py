"""GPU telemetry: a Prometheus exporter in dcgm-exporter's names, over NVML or a fake fleet.

``import forge_slo.telemetry`` is light: pynvml loads only when the NVML backend opens, and prometheus_client
and the HTTP server only when the exporter is first used (the exporter names below resolve lazily).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from forge_slo.telemetry.backend import (
    FaultInjector,
    GpuBackend,
    GpuBackendUnavailable,
    GpuInfo,
    GpuReading,
    GpuUnavailable,
)
from forge_slo.telemetry.command import build_parser, main_from_args

if TYPE_CHECKING:
    from forge_slo.telemetry.exporter import (
        ExporterOptions,
        GpuExporter,
        open_backend,
        run_exporter,
        start_exporter,
    )

_LAZY = {"ExporterOptions", "GpuExporter", "open_backend", "run_exporter", "start_exporter"}

__all__ = [
    "ExporterOptions",
    "FaultInjector",
    "GpuBackend",
    "GpuBackendUnavailable",
    "GpuExporter",
    "GpuInfo",
    "GpuReading",
    "GpuUnavailable",
    "build_parser",
    "main_from_args",
    "open_backend",
    "run_exporter",
    "start_exporter",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("forge_slo.telemetry.exporter"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
