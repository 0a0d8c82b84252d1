"""The simulator's configuration: frozen dataclasses, read from YAML (with line numbers) or fault JSON.

Two edges parse into these types: :func:`load_sim_config` (a YAML file, errors become
:class:`~forge_slo.errors.SpecError` with file, line and field path) and :func:`parse_fault` (a fault from
the admin API, errors become HTTP 400 naming the field). Both use the same field reader, so a fault reads
the same in a config file and in a request body.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

import yaml

from forge_slo.errors import SpecError

ItlDistribution = Literal["fixed", "normal", "lognormal"]
TracingExporter = Literal["off", "console", "otlp"]
ErrorMode = Literal["http_500", "abort_stream"]

DEFAULT_MODEL_NAME = "sim-llama"
_FAULT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ConfigFieldError(ValueError):
    """One wrong field: its dotted path (``models[0].itl_s``) and why."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass(frozen=True)
class OutputTokens:
    """Output length when a request gives no ``max_tokens``: fixed (min == max) or uniform in [min, max]."""

    distribution: Literal["fixed", "uniform"] = "uniform"
    min: int = 64
    max: int = 256


@dataclass(frozen=True)
class ModelConfig:
    """Timing model of one served model. See the README, "Timing model", for the formulas."""

    name: str = DEFAULT_MODEL_NAME
    max_num_seqs: int = 256
    max_model_len: int = 32768
    kv_cache_tokens: int = 262144
    prefill_base_s: float = 0.02
    prefill_per_token_s: float = 0.0001
    itl_s: float = 0.02
    itl_distribution: ItlDistribution = "normal"
    itl_stddev_s: float = 0.002
    batch_slowdown: float = 0.5
    output_tokens: OutputTokens = field(default_factory=OutputTokens)
    token_text: str = " tok"
    tokens_per_chunk: int = 1


@dataclass(frozen=True)
class TracingConfig:
    exporter: TracingExporter = "off"
    endpoint: str | None = None
    service_name: str = "forge-slo-sim"


@dataclass(frozen=True)
class LatencyFault:
    """Slower prefill (TTFT) and/or decode (ITL): ``t * multiplier + add_s``."""

    kind: ClassVar[str] = "latency"
    id: str | None = None
    model: str | None = None
    duration_s: float | None = None
    ttft_multiplier: float = 1.0
    ttft_add_s: float = 0.0
    itl_multiplier: float = 1.0
    itl_add_s: float = 0.0


@dataclass(frozen=True)
class ErrorsFault:
    """A share ``rate`` of new requests fails: HTTP 500 at once, or a stream cut after some tokens."""

    kind: ClassVar[str] = "errors"
    id: str | None = None
    model: str | None = None
    duration_s: float | None = None
    rate: float = 1.0
    mode: ErrorMode = "http_500"
    abort_after_tokens: int | None = None


@dataclass(frozen=True)
class StallFault:
    """Emission pauses ``stall_s`` before token ``at_token`` (0 = before the first), with a probability."""

    kind: ClassVar[str] = "stall"
    id: str | None = None
    model: str | None = None
    duration_s: float | None = None
    stall_s: float = 1.0
    at_token: int = 1
    probability: float = 1.0


@dataclass(frozen=True)
class OutageFault:
    """Every request answers HTTP 500 at once, running streams are cut, /health is 503 (all models)."""

    kind: ClassVar[str] = "outage"
    id: str | None = None
    model: str | None = None
    duration_s: float | None = None


Fault: TypeAlias = LatencyFault | ErrorsFault | StallFault | OutageFault
FAULT_KINDS: dict[str, type[Fault]] = {
    c.kind: c for c in (LatencyFault, ErrorsFault, StallFault, OutageFault)
}


@dataclass(frozen=True)
class SimConfig:
    seed: int = 0
    admin_token: str | None = None
    models: tuple[ModelConfig, ...] = (ModelConfig(),)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    faults: tuple[Fault, ...] = ()

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


def default_config() -> SimConfig:
    """One model, ``sim-llama``, with the defaults above; no faults, no tracing."""
    return SimConfig()


# ---------------------------------------------------------------------------------------------------------
# Field reader shared by YAML and JSON.


class _Fields:
    """Reads typed fields out of one mapping and rejects the keys it was never asked for."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigFieldError(path, f"must be a mapping, got {_type_name(data)}")
        for key in data:
            if not isinstance(key, str):
                raise ConfigFieldError(path, f"keys must be strings, got {key!r}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.seen: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
    ) -> float:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigFieldError(self.sub(key), f"must be a number, got {_type_name(value)} {value!r}")
        _check_range(self.sub(key), float(value), minimum, maximum, above)
        return float(value)

    def optional_number(
        self, key: str, *, above: float | None = None, minimum: float | None = None
    ) -> float | None:
        if self.raw(key) is None:
            return None
        return self.number(key, 0.0, above=above, minimum=minimum)

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigFieldError(self.sub(key), f"must be an integer, got {_type_name(value)} {value!r}")
        _check_range(self.sub(key), value, minimum, None, None)
        return value

    def optional_integer(self, key: str, *, minimum: int | None = None) -> int | None:
        if self.raw(key) is None:
            return None
        return self.integer(key, 0, minimum=minimum)

    def string(self, key: str, default: str, *, non_empty: bool = True) -> str:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigFieldError(self.sub(key), f"must be a string, got {_type_name(value)} {value!r}")
        if non_empty and not value:
            raise ConfigFieldError(self.sub(key), "must not be empty")
        return value

    def optional_string(self, key: str) -> str | None:
        if self.raw(key) is None:
            return None
        return self.string(key, "")

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(key)
        if value is None:
            return default
        if value is False and "off" in choices:  # YAML 1.1 reads a bare `off` as false
            return "off"
        if not isinstance(value, str) or value not in choices:
            raise ConfigFieldError(self.sub(key), f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            key = unknown[0]
            near = difflib.get_close_matches(key, sorted(self.seen), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            allowed = ", ".join(sorted(self.seen))
            raise ConfigFieldError(self.sub(key), f"unknown field{hint}; allowed: {allowed}")


def _check_range(
    path: str, value: float, minimum: float | None, maximum: float | None, above: float | None
) -> None:
    if minimum is not None and value < minimum:
        raise ConfigFieldError(path, f"must be >= {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ConfigFieldError(path, f"must be <= {maximum:g}, got {value:g}")
    if above is not None and value <= above:
        raise ConfigFieldError(path, f"must be > {above:g}, got {value:g}")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
    }.get(type(value), type(value).__name__)


def _list(data: object, path: str) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigFieldError(path, f"must be a list, got {_type_name(data)}")
    return data


# ---------------------------------------------------------------------------------------------------------
# Faults


def parse_fault(data: object, path: str = "", *, model_names: tuple[str, ...] | None = None) -> Fault:
    """A fault from a JSON/YAML mapping; raises :class:`ConfigFieldError` naming the wrong field."""
    f = _Fields(data, path)
    kind = f.choice("kind", "", tuple(FAULT_KINDS)) if f.has("kind") else None
    if kind is None:
        raise ConfigFieldError(f.sub("kind"), f"is required: one of {', '.join(FAULT_KINDS)}")
    fault_id = f.optional_string("id")
    if fault_id is not None and not _FAULT_ID.match(fault_id):
        raise ConfigFieldError(f.sub("id"), "must be 1-64 letters, digits, '.', '_' or '-'")
    model = f.optional_string("model")
    if model is not None and model_names is not None and model not in model_names:
        raise ConfigFieldError(f.sub("model"), f"unknown model {model!r}; served: {', '.join(model_names)}")
    duration = f.optional_number("duration_s", above=0.0)
    common: dict[str, Any] = {"id": fault_id, "model": model, "duration_s": duration}
    fault: Fault
    if kind == "latency":
        fault = LatencyFault(
            **common,
            ttft_multiplier=f.number("ttft_multiplier", 1.0, minimum=0.0),
            ttft_add_s=f.number("ttft_add_s", 0.0, minimum=0.0),
            itl_multiplier=f.number("itl_multiplier", 1.0, minimum=0.0),
            itl_add_s=f.number("itl_add_s", 0.0, minimum=0.0),
        )
    elif kind == "errors":
        mode = f.choice("mode", "http_500", ("http_500", "abort_stream"))
        abort_after = f.optional_integer("abort_after_tokens", minimum=0)
        if abort_after is not None and mode != "abort_stream":
            raise ConfigFieldError(f.sub("abort_after_tokens"), "only applies to mode abort_stream")
        fault = ErrorsFault(
            **common,
            rate=f.number("rate", 1.0, minimum=0.0, maximum=1.0),
            mode="abort_stream" if mode == "abort_stream" else "http_500",
            abort_after_tokens=abort_after,
        )
    elif kind == "stall":
        if not f.has("stall_s"):
            raise ConfigFieldError(f.sub("stall_s"), "is required for a stall fault")
        fault = StallFault(
            **common,
            stall_s=f.number("stall_s", 1.0, above=0.0),
            at_token=f.integer("at_token", 1, minimum=0),
            probability=f.number("probability", 1.0, minimum=0.0, maximum=1.0),
        )
    else:
        fault = OutageFault(**common)
    f.finish()
    return fault


def fault_to_json(fault: Fault) -> dict[str, Any]:
    """A fault as the admin API shows it (the same keys it accepts)."""
    out: dict[str, Any] = {"kind": fault.kind}
    for name in fault.__dataclass_fields__:
        out[name] = getattr(fault, name)
    return out


# ---------------------------------------------------------------------------------------------------------
# YAML


def parse_sim_config(data: object) -> SimConfig:
    """A :class:`SimConfig` from plain data; raises :class:`ConfigFieldError`."""
    if data is None:
        return default_config()
    top = _Fields(data, "")
    seed = top.integer("seed", 0)
    admin_token = top.optional_string("admin_token")
    models: list[ModelConfig] = []
    names: set[str] = set()
    raw_models = _list(top.raw("models"), "models")
    for i, raw in enumerate(raw_models):
        m = _parse_model(raw, f"models[{i}]")
        if m.name in names:
            raise ConfigFieldError(f"models[{i}].name", f"duplicate model name {m.name!r}")
        names.add(m.name)
        models.append(m)
    if top.raw("models") is not None and not models:
        raise ConfigFieldError("models", "must list at least one model (or leave it out for the default)")
    if not models:
        models = [ModelConfig()]
    model_names = tuple(m.name for m in models)
    tracing = _parse_tracing(top.raw("tracing"), "tracing")
    faults: list[Fault] = []
    ids: set[str] = set()
    for i, raw in enumerate(_list(top.raw("faults"), "faults")):
        fault = parse_fault(raw, f"faults[{i}]", model_names=model_names)
        if fault.id is not None:
            if fault.id in ids:
                raise ConfigFieldError(f"faults[{i}].id", f"duplicate fault id {fault.id!r}")
            ids.add(fault.id)
        faults.append(fault)
    top.finish()
    return SimConfig(
        seed=seed, admin_token=admin_token, models=tuple(models), tracing=tracing, faults=tuple(faults)
    )


def _parse_model(data: object, path: str) -> ModelConfig:
    f = _Fields(data, path)
    if not f.has("name"):
        raise ConfigFieldError(f.sub("name"), "is required")
    d = ModelConfig()
    m = ModelConfig(
        name=f.string("name", d.name),
        max_num_seqs=f.integer("max_num_seqs", d.max_num_seqs, minimum=1),
        max_model_len=f.integer("max_model_len", d.max_model_len, minimum=2),
        kv_cache_tokens=f.integer("kv_cache_tokens", d.kv_cache_tokens, minimum=1),
        prefill_base_s=f.number("prefill_base_s", d.prefill_base_s, minimum=0.0),
        prefill_per_token_s=f.number("prefill_per_token_s", d.prefill_per_token_s, minimum=0.0),
        itl_s=f.number("itl_s", d.itl_s, minimum=0.0),
        itl_distribution=_itl_distribution(
            f.choice("itl_distribution", d.itl_distribution, ("fixed", "normal", "lognormal"))
        ),
        itl_stddev_s=f.number("itl_stddev_s", d.itl_stddev_s, minimum=0.0),
        batch_slowdown=f.number("batch_slowdown", d.batch_slowdown, minimum=0.0),
        output_tokens=_parse_output_tokens(f.raw("output_tokens"), f.sub("output_tokens")),
        token_text=f.string("token_text", d.token_text),
        tokens_per_chunk=f.integer("tokens_per_chunk", d.tokens_per_chunk, minimum=1),
    )
    if m.itl_distribution == "lognormal" and m.itl_s == 0 and m.itl_stddev_s > 0:
        raise ConfigFieldError(f.sub("itl_s"), "must be > 0 for a lognormal distribution with a stddev")
    f.finish()
    return m


def _itl_distribution(value: str) -> ItlDistribution:
    if value == "fixed":
        return "fixed"
    if value == "lognormal":
        return "lognormal"
    return "normal"


def _parse_output_tokens(data: object, path: str) -> OutputTokens:
    if data is None:
        return OutputTokens()
    f = _Fields(data, path)
    dist = f.choice("distribution", "uniform", ("fixed", "uniform"))
    if dist == "fixed":
        if not f.has("value"):
            raise ConfigFieldError(f.sub("value"), "is required for a fixed distribution")
        value = f.integer("value", 1, minimum=1)
        f.finish()
        return OutputTokens("fixed", value, value)
    lo = f.integer("min", OutputTokens.min, minimum=1)
    hi = f.integer("max", max(lo, OutputTokens.max), minimum=1)
    if hi < lo:
        raise ConfigFieldError(f.sub("max"), f"must be >= min ({lo}), got {hi}")
    f.finish()
    return OutputTokens("uniform", lo, hi)


def _parse_tracing(data: object, path: str) -> TracingConfig:
    if data is None:
        return TracingConfig()
    f = _Fields(data, path)
    exporter = f.choice("exporter", "off", ("off", "console", "otlp"))
    endpoint = f.optional_string("endpoint")
    service = f.string("service_name", TracingConfig.service_name)
    f.finish()
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigFieldError(f.sub("endpoint"), f"must be an http(s) URL, got {endpoint!r}")
    exp: TracingExporter = "console" if exporter == "console" else "otlp" if exporter == "otlp" else "off"
    return TracingConfig(exporter=exp, endpoint=endpoint, service_name=service)


def _line_map(node: yaml.Node | None) -> dict[str, int]:
    """Field path -> 1-based line, walking the composed YAML tree beside the loaded data."""
    lines: dict[str, int] = {}

    def walk(n: yaml.Node, path: str) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                if isinstance(key_node, yaml.ScalarNode):
                    sub = f"{path}.{key_node.value}" if path else str(key_node.value)
                    lines[sub] = key_node.start_mark.line + 1
                    walk(value_node, sub)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, f"{path}[{i}]")

    if node is not None:
        walk(node, "")
    return lines


def _line_for(lines: Mapping[str, int], path: str) -> int | None:
    """The line of a field, or of its nearest parent that exists in the file."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""


def load_sim_config(path: str) -> SimConfig:
    """Read a simulator config file; raises :class:`SpecError` with file, line and field path."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise SpecError(f"cannot read the simulator config: {e.strerror or e}", file=path) from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(f"invalid YAML: {problem}", file=path, line=line) from e
    try:
        return parse_sim_config(data)
    except ConfigFieldError as e:
        raise SpecError(e.reason, file=path, line=_line_for(_line_map(node), e.field), field=e.field) from e
