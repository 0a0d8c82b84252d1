"""GPU faults: degradations through NVML (power cap, locked clocks) and injected errors in the fake fleet.

- :func:`set_gpu_power_limit` / :func:`lock_gpu_clocks` change a GPU through NVML; rollbacks
  :func:`reset_gpu_power_limit` / :func:`reset_gpu_clocks` restore the saved value. Without a GPU they are
  refused, unless ``backend`` is ``fake`` (or ``FORGE_SLO_GPU_CONTROL=fake``), which rehearses them on a file.
- :func:`inject_gpu_fault` posts an XID, ECC error, thermal event or lost GPU to the fake fleet's
  ``/admin/faults``; rollback :func:`recover_gpu` ends a lost GPU and thermal throttling. XID and ECC counts
  stay, as on real hardware, until the exporter restarts (a real XID 79 needs a GPU reset too).
"""

from pathlib import Path
from typing import Any

from forge_slo.chaos._common import base_url, request_json
from forge_slo.chaos.gpu.control import load_state, open_control, save_state
from forge_slo.errors import UsageError

__all__ = [
    "inject_gpu_fault",
    "lock_gpu_clocks",
    "recover_gpu",
    "reset_gpu_clocks",
    "reset_gpu_power_limit",
    "set_gpu_power_limit",
]

FAULT_KINDS = ("xid", "ecc", "thermal", "lost", "row_remap", "nvlink_error", "pcie_replay")


def _admin(exporter_url: str) -> str:
    return base_url(exporter_url, "exporter_url").removesuffix("/metrics") + "/admin/faults"


def inject_gpu_fault(exporter_url: str, gpu: int, kind: str, code: int = 0, count: int = 0, type: str = "",
                     duration: str = "", temperature_c: float = 0, admin_token: str = "") -> dict[str, Any]:
    """Inject a fault into one GPU of the fake fleet: kind xid (with code, e.g. 79), ecc (type single or
    double), thermal (optional duration such as 30s and temperature_c), lost, row_remap, nvlink_error or
    pcie_replay. Returns the fault as the exporter applied it."""
    if kind not in FAULT_KINDS:
        raise UsageError(f"kind: {kind!r}; use one of {', '.join(FAULT_KINDS)} (recover_gpu ends faults)")
    body: dict[str, Any] = {"gpu": int(gpu), "kind": kind}
    optional: dict[str, Any] = {"code": code, "count": count, "type": type, "duration": duration,
                                "temperature_c": temperature_c}
    body.update({k: v for k, v in optional.items() if v})
    _, data = request_json("POST", _admin(exporter_url), body=body, token=admin_token)
    return data.get("injected", data) if isinstance(data, dict) else {"injected": data}


def recover_gpu(exporter_url: str, gpu: int, admin_token: str = "") -> dict[str, Any]:
    """End a lost GPU and thermal throttling (the rollback of :func:`inject_gpu_fault`)."""
    _, data = request_json("POST", _admin(exporter_url), body={"gpu": int(gpu), "kind": "recover"}, token=admin_token)
    return data.get("injected", data) if isinstance(data, dict) else {"injected": data}


def _save(path: Path, key: str, gpu: int, value: Any) -> None:
    state = load_state(path)
    saved = state.setdefault("saved", {})
    saved.setdefault(key, {}).setdefault(str(gpu), value)  # keep the first value: that is what was there
    save_state(path, state)


def _pop(path: Path, key: str, gpu: int) -> Any:
    state = load_state(path)
    value = state.get("saved", {}).get(key, {}).pop(str(gpu), None)
    save_state(path, state)
    return value


def set_gpu_power_limit(gpu: int, watts: float, backend: str = "", state_file: str = "") -> dict[str, Any]:
    """Cap a GPU's power (watts, within the GPU's allowed range); the old limit is saved for the rollback."""
    control, path = open_control(backend, state_file)
    low, high = control.power_limit_range_w(int(gpu))
    if not low <= float(watts) <= high:
        raise UsageError(f"watts: {watts!r}; GPU {gpu} accepts {low:g} to {high:g} W")
    old = control.power_limit_w(int(gpu))
    _save(path, "power_limit_w", int(gpu), old)
    control.set_power_limit_w(int(gpu), float(watts))
    return {"gpu": int(gpu), "power_limit_w": float(watts), "previous_w": old}


def reset_gpu_power_limit(gpu: int, backend: str = "", state_file: str = "") -> dict[str, Any]:
    """Restore the power limit saved by :func:`set_gpu_power_limit` (else the GPU's default)."""
    control, path = open_control(backend, state_file)
    saved = _pop(path, "power_limit_w", int(gpu))
    watts = float(saved) if saved is not None else control.default_power_limit_w(int(gpu))
    control.set_power_limit_w(int(gpu), watts)
    return {"gpu": int(gpu), "power_limit_w": watts, "restored": saved is not None}


def lock_gpu_clocks(gpu: int, min_mhz: int, max_mhz: int, backend: str = "", state_file: str = "") -> dict[str, Any]:
    """Lock a GPU's SM clocks into ``min_mhz``..``max_mhz`` (a slow GPU on demand)."""
    if not 0 < int(min_mhz) <= int(max_mhz):
        raise UsageError(f"min_mhz {min_mhz!r} and max_mhz {max_mhz!r}: need 0 < min_mhz <= max_mhz")
    control, path = open_control(backend, state_file)
    _save(path, "locked_clocks", int(gpu), True)
    control.lock_clocks(int(gpu), int(min_mhz), int(max_mhz))
    return {"gpu": int(gpu), "locked_mhz": [int(min_mhz), int(max_mhz)]}


def reset_gpu_clocks(gpu: int, backend: str = "", state_file: str = "") -> dict[str, Any]:
    """Unlock the clocks (the rollback of :func:`lock_gpu_clocks`)."""
    control, path = open_control(backend, state_file)
    _pop(path, "locked_clocks", int(gpu))
    control.reset_clocks(int(gpu))
    return {"gpu": int(gpu), "locked_mhz": None}
