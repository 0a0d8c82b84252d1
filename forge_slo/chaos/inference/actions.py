"""Inference faults through the simulator's admin API (``/admin/faults``): latency, errors, stall, outage.

Each injection has a rollback: :func:`remove_sim_fault` with the same ``fault_id`` (or
:func:`remove_all_sim_faults`). Give the fault a ``duration_s`` too, so it ends on its own even if nothing
rolls it back.
"""

from typing import Any

from forge_slo.chaos._common import base_url, request_json
from forge_slo.errors import UsageError

__all__ = ["inject_sim_fault", "remove_all_sim_faults", "remove_sim_fault"]

KINDS = ("latency", "errors", "stall", "outage")


def _admin(sim_url: str) -> str:
    url = base_url(sim_url, "sim_url").removesuffix("/v1")
    return f"{url}/admin/faults"


def inject_sim_fault(sim_url: str, kind: str, fault_id: str = "", model: str = "", duration_s: float = 0,
                     ttft_multiplier: float = 0, ttft_add_s: float = 0, itl_multiplier: float = 0,
                     itl_add_s: float = 0, rate: float = 0, mode: str = "", abort_after_tokens: int = 0,
                     stall_s: float = 0, at_token: int = -1, probability: float = 0,
                     admin_token: str = "") -> dict[str, Any]:
    """Start a simulator fault (kind latency, errors, stall or outage; fields as the simulator's admin API,
    zero or empty means the simulator's default) and return it with its id and remaining seconds."""
    if kind not in KINDS:
        raise UsageError(f"kind: {kind!r}; use one of {', '.join(KINDS)}")
    body: dict[str, Any] = {"kind": kind}
    optional: dict[str, Any] = {
        "id": fault_id, "model": model, "duration_s": duration_s, "ttft_multiplier": ttft_multiplier,
        "ttft_add_s": ttft_add_s, "itl_multiplier": itl_multiplier, "itl_add_s": itl_add_s, "rate": rate,
        "mode": mode, "abort_after_tokens": abort_after_tokens, "stall_s": stall_s, "probability": probability,
    }
    body.update({k: v for k, v in optional.items() if v})
    if at_token >= 0:
        body["at_token"] = at_token
    _, data = request_json("POST", _admin(sim_url), body=body, token=admin_token)
    if not isinstance(data, dict):
        raise UsageError(f"the simulator answered {data!r}, not a fault")
    return data


def remove_sim_fault(sim_url: str, fault_id: str, admin_token: str = "") -> dict[str, Any]:
    """End one fault (the rollback of :func:`inject_sim_fault`); a fault already gone is not an error."""
    if not fault_id:
        raise UsageError("fault_id: name the fault to remove (give the injection the same fault_id)")
    status, _ = request_json("DELETE", f"{_admin(sim_url)}/{fault_id}", token=admin_token, ok=(200, 204, 404))
    return {"fault_id": fault_id, "removed": status != 404}


def remove_all_sim_faults(sim_url: str, admin_token: str = "") -> dict[str, Any]:
    """End every active fault."""
    _, data = request_json("DELETE", _admin(sim_url), token=admin_token)
    return {"removed": data}
