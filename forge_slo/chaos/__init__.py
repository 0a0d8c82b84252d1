"""forge-slo's Chaos Toolkit extension and game-day runner.

Activities (each module lists its own in ``__all__``, as Chaos Toolkit's discovery requires):

- probes: :mod:`forge_slo.chaos.slo.probes` (burn rate, error budget, SLI, latency percentile, alerts),
  :mod:`forge_slo.chaos.gpu.probes` (health, XIDs, ECC, throttling, temperature),
  :mod:`forge_slo.chaos.training.probes` (hung collective, stragglers, bus bandwidth);
- actions: :mod:`forge_slo.chaos.inference.actions` (simulator faults), :mod:`forge_slo.chaos.process.actions`
  (kill or pause a process), :mod:`forge_slo.chaos.training.actions` (the all-reduce job and its ranks),
  :mod:`forge_slo.chaos.gpu.actions` (NVML power cap and clocks, fake-fleet errors),
  :mod:`forge_slo.chaos.network.actions` (netem inside a network namespace);
- control: :mod:`forge_slo.chaos.control` (abort when the budget burn crosses a limit).

Importing this package is cheap; chaoslib is imported by :func:`discover` and the control only.
"""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["discover"]

ACTION_MODULES = (
    "forge_slo.chaos.inference.actions",
    "forge_slo.chaos.process.actions",
    "forge_slo.chaos.training.actions",
    "forge_slo.chaos.gpu.actions",
    "forge_slo.chaos.network.actions",
)
PROBE_MODULES = (
    "forge_slo.chaos.slo.probes",
    "forge_slo.chaos.gpu.probes",
    "forge_slo.chaos.training.probes",
)
CONTROL_MODULE = "forge_slo.chaos.control"
# Environment variables the experiments in experiments/ read their endpoints from.
ENDPOINT_ENV = (
    "FORGE_SLO_PROMETHEUS_URL",
    "FORGE_SLO_SIM_URL",
    "FORGE_SLO_GPU_EXPORTER_URL",
    "FORGE_SLO_TRAIN_STATE_DIR",
    "FORGE_SLO_TRAIN_METRICS_PORT",
    "FORGE_SLO_CHAOS_NETNS",
)


def discover(discover_system: bool = True) -> dict[str, Any]:
    """Chaos Toolkit's discovery: every activity of this extension and, optionally, what this machine offers."""
    import importlib

    from forge_slo import __version__

    # chaoslib ships no type information: its functions are Any here.
    chaos_discovery: Any = importlib.import_module("chaoslib.discovery.discover")
    result: dict[str, Any] = chaos_discovery.initialize_discovery_result("forge-slo", __version__, "forge-slo")
    for module in ACTION_MODULES:
        result["activities"].extend(chaos_discovery.discover_actions(module))
    for module in PROBE_MODULES:
        result["activities"].extend(chaos_discovery.discover_probes(module))
    if discover_system:
        result["system"] = system_info()
    return result


def system_info() -> dict[str, Any]:
    """What experiments can use here: torch for training, root and iproute2 for namespaces, GPUs."""
    from importlib.util import find_spec

    from forge_slo.chaos.network.actions import netns_support

    gpus: int | str
    try:
        import importlib

        pynvml: Any = importlib.import_module("pynvml")
        pynvml.nvmlInit()
        gpus = int(pynvml.nvmlDeviceGetCount())
        pynvml.nvmlShutdown()
    except Exception as exc:  # no driver, no library: say why
        gpus = f"none ({type(exc).__name__})"
    return {
        "python": platform.python_version(),
        "torch": find_spec("torch") is not None,
        "network_namespaces": netns_support() or "available",
        "nvidia_gpus": gpus,
        "endpoints": {name: os.environ[name] for name in ENDPOINT_ENV if name in os.environ},
    }
