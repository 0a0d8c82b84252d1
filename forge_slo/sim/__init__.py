"""An OpenAI-compatible inference simulator that behaves like an inference server (vLLM, SGLang, TGI or Triton
metrics, as :mod:`forge_slo.spec.presets` describes them), without a GPU.

``run_simulator`` serves until a signal (the CLI calls it); :class:`SimServer` runs one in-process;
:class:`SimProcess` runs ``python -m forge_slo.sim`` as a child process (what tests and runners use).
"""

from __future__ import annotations

from forge_slo.sim.answers import SIM_PRESETS
from forge_slo.sim.config import (
    ErrorsFault,
    Fault,
    LatencyFault,
    ModelConfig,
    OutageFault,
    OutputTokens,
    SimConfig,
    StallFault,
    TracingConfig,
    default_config,
    load_sim_config,
    parse_fault,
    parse_sim_config,
)
from forge_slo.sim.process import SimProcess
from forge_slo.sim.server import ADMIN_TOKEN_ENV, SimServer, run_simulator

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ErrorsFault",
    "Fault",
    "LatencyFault",
    "ModelConfig",
    "OutageFault",
    "OutputTokens",
    "SIM_PRESETS",
    "SimConfig",
    "SimProcess",
    "SimServer",
    "StallFault",
    "TracingConfig",
    "default_config",
    "load_sim_config",
    "parse_fault",
    "parse_sim_config",
    "run_simulator",
]
