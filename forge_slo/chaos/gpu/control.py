"""The seam for GPU degradations: power caps and locked clocks, through NVML or a fake.

:class:`NvmlGpuControl` changes real GPUs (root, and a driver that allows it); :class:`FakeGpuControl` keeps
an H100-like GPU's settings in a JSON file so experiments can be rehearsed without a GPU. Both save the value
they replace in the state file, so the rollback restores exactly what was there.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from forge_slo.errors import RunnerError, UsageError

BACKENDS = ("nvml", "fake")
STATE_ENV = "FORGE_SLO_GPU_CONTROL_STATE"
FAKE_POWER_RANGE_W = (100.0, 700.0)
FAKE_CLOCK_RANGE_MHZ = (210, 1980)


class GpuControl(Protocol):
    """Set and restore one GPU's power limit and clocks."""

    def power_limit_w(self, gpu: int) -> float: ...

    def power_limit_range_w(self, gpu: int) -> tuple[float, float]: ...

    def default_power_limit_w(self, gpu: int) -> float: ...

    def set_power_limit_w(self, gpu: int, watts: float) -> None: ...

    def lock_clocks(self, gpu: int, min_mhz: int, max_mhz: int) -> None: ...

    def reset_clocks(self, gpu: int) -> None: ...


def state_path(state_file: str = "") -> Path:
    return Path(state_file or os.environ.get(STATE_ENV) or Path(tempfile.gettempdir()) / "forge-slo-gpu-control.json")


def load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RunnerError(f"{path}: unreadable GPU control state ({exc})") from None


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, sort_keys=True, indent=1))
    tmp.replace(path)


class FakeGpuControl:
    """An H100-like GPU per index: power limit 100-700 W (default 700), clocks 210-1980 MHz."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _gpu(self, gpu: int) -> dict[str, Any]:
        state = load_state(self.path)
        entry = state.get("fake", {}).get(str(gpu))
        return dict(entry) if isinstance(entry, dict) else {"power_limit_w": FAKE_POWER_RANGE_W[1], "clocks": None}

    def _put(self, gpu: int, entry: dict[str, Any]) -> None:
        state = load_state(self.path)
        state.setdefault("fake", {})[str(gpu)] = entry
        save_state(self.path, state)

    def power_limit_w(self, gpu: int) -> float:
        return float(self._gpu(gpu)["power_limit_w"])

    def power_limit_range_w(self, gpu: int) -> tuple[float, float]:
        return FAKE_POWER_RANGE_W

    def default_power_limit_w(self, gpu: int) -> float:
        return FAKE_POWER_RANGE_W[1]

    def set_power_limit_w(self, gpu: int, watts: float) -> None:
        entry = self._gpu(gpu)
        entry["power_limit_w"] = watts
        self._put(gpu, entry)

    def lock_clocks(self, gpu: int, min_mhz: int, max_mhz: int) -> None:
        low, high = FAKE_CLOCK_RANGE_MHZ
        if not low <= min_mhz <= max_mhz <= high:
            raise RunnerError(f"clocks {min_mhz}-{max_mhz} MHz are outside the fake GPU's {low}-{high} MHz")
        entry = self._gpu(gpu)
        entry["clocks"] = [min_mhz, max_mhz]
        self._put(gpu, entry)

    def reset_clocks(self, gpu: int) -> None:
        entry = self._gpu(gpu)
        entry["clocks"] = None
        self._put(gpu, entry)


class NvmlGpuControl:
    """Real GPUs through NVML (``nvml``: the pynvml module; tests pass a stub)."""

    def __init__(self, nvml: Any | None = None) -> None:
        if nvml is None:
            try:
                nvml_module = importlib.import_module("pynvml")
            except ImportError:
                raise RunnerError("NVML is not available: pip install nvidia-ml-py (or use backend fake to rehearse "
                                  "without a GPU)") from None
            nvml = nvml_module
        self.nvml = nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # pynvml raises NVMLError subclasses built at run time
            raise RunnerError(f"NVML could not start ({exc}): no NVIDIA driver or GPU here. Refusing a GPU "
                              "degradation without a GPU; set backend to 'fake' (FORGE_SLO_GPU_CONTROL=fake) to "
                              "rehearse the experiment") from None

    def _handle(self, gpu: int) -> Any:
        count = self._call(self.nvml.nvmlDeviceGetCount)
        if not 0 <= gpu < count:
            raise UsageError(f"gpu: {gpu}; this machine has {count} GPUs (0-{count - 1})")
        return self._call(self.nvml.nvmlDeviceGetHandleByIndex, gpu)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # NVMLError: insufficient permissions, not supported, ...
            raise RunnerError(f"NVML {getattr(fn, '__name__', 'call')}: {exc}") from None

    def power_limit_w(self, gpu: int) -> float:
        return float(self._call(self.nvml.nvmlDeviceGetPowerManagementLimit, self._handle(gpu))) / 1000.0

    def power_limit_range_w(self, gpu: int) -> tuple[float, float]:
        low, high = self._call(self.nvml.nvmlDeviceGetPowerManagementLimitConstraints, self._handle(gpu))
        return float(low) / 1000.0, float(high) / 1000.0

    def default_power_limit_w(self, gpu: int) -> float:
        return float(self._call(self.nvml.nvmlDeviceGetPowerManagementDefaultLimit, self._handle(gpu))) / 1000.0

    def set_power_limit_w(self, gpu: int, watts: float) -> None:
        self._call(self.nvml.nvmlDeviceSetPowerManagementLimit, self._handle(gpu), round(watts * 1000))

    def lock_clocks(self, gpu: int, min_mhz: int, max_mhz: int) -> None:
        self._call(self.nvml.nvmlDeviceSetGpuLockedClocks, self._handle(gpu), min_mhz, max_mhz)

    def reset_clocks(self, gpu: int) -> None:
        self._call(self.nvml.nvmlDeviceResetGpuLockedClocks, self._handle(gpu))


def open_control(backend: str, state_file: str = "", nvml: Any | None = None) -> tuple[GpuControl, Path]:
    backend = backend or os.environ.get("FORGE_SLO_GPU_CONTROL", "nvml")
    if backend not in BACKENDS:
        raise UsageError(f"backend: {backend!r}; use nvml (real GPUs) or fake (rehearsal without a GPU)")
    path = state_path(state_file)
    if backend == "fake":
        return FakeGpuControl(path), path
    return NvmlGpuControl(nvml), path
