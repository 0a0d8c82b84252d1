"""How each simulated server answers a request it fails or sheds, beside what it counts.

What a server *counts* (metric names, labels, buckets, which series each outcome moves) comes from
:mod:`forge_slo.spec.presets`; what it *answers* (the HTTP status a client gets) is here, with the source it
was read from. ``tests/test_sim.py`` checks the two agree where a preset's examples carry a status label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# An outage is the engine failing every request at once: HTTP 500 on every server.
OUTAGE_STATUS = 500


@dataclass(frozen=True)
class Answers:
    """The HTTP status of a request the server fails (``server_error``) and of one it sheds because its
    queue is full (``shed``); ``tpot_one_token``: what the per-request TPOT histogram gets for an answer of
    one token (None: nothing is observed)."""

    server_error: int
    shed: int
    tpot_one_token: float | None = None


ANSWERS: Mapping[str, Answers] = MappingProxyType({
    # vLLM 0.33: GenerationError -> 500, QueueOverflowError -> 503 (vllm/exceptions.py); v1/metrics/stats.py
    # observes a TPOT of 0 for requests of one token.
    "vllm": Answers(server_error=500, shed=503, tpot_one_token=0.0),
    # SGLang 0.5.23: an abort with status_code 503 for a full queue (scheduler.py _abort_on_queued_limit);
    # per-request TPOT only for more than one token (tokenizer_manager.py).
    "sglang": Answers(server_error=500, shed=503),
    # TGI router/src/server.rs: InferError::GenerationError -> 424 FAILED_DEPENDENCY, Overloaded -> 429.
    "tgi": Answers(server_error=424, shed=429),
    # Triton server src/http_server.cc HttpCodeFromError: INTERNAL -> 500, UNAVAILABLE (REJECTED) -> 503.
    "triton": Answers(server_error=500, shed=503),
})

SIM_PRESETS: tuple[str, ...] = tuple(ANSWERS)
DEFAULT_PRESET = "vllm"
