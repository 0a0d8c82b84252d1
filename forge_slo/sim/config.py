"""The simulator's configuration: frozen dataclasses, read from YAML (with line numbers) or fault JSON.

Two edges parse into these types, through the one Node reader of :mod:`forge_slo.spec.yamlnode`:
:func:`load_sim_config` (a YAML file; errors are :class:`~forge_slo.errors.SpecError` with file, line and
field path) and :func:`parse_fault` (a fault from the admin API; errors are :class:`ConfigFieldError`, an
HTTP 400 naming the field). A fault reads, and fails, the same in a config file and in a request body.

Every number has a range, so no value can make a request never finish: delays (``*_s``) are at most
:data:`MAX_DELAY_S` (an hour), ``duration_s`` at most :data:`MAX_DURATION_S` (a day), multipliers
(``*_multiplier``, ``batch_slowdown``) at most :data:`MAX_MULTIPLIER`, token counts at most
:data:`MAX_TOKENS`, ``max_num_seqs`` at most :data:`MAX_NUM_SEQS`, ``kv_cache_tokens`` at most
:data:`MAX_KV_CACHE_TOKENS`, ``tokens_per_chunk`` at most :data:`MAX_TOKENS_PER_CHUNK`, ``max_queued_requests`` at
most :data:`MAX_NUM_SEQS`, and ``seed`` is an integer of magnitude at most 2**53.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

from forge_slo.errors import SpecError
from forge_slo.sim.answers import DEFAULT_PRESET, SIM_PRESETS
from forge_slo.spec.yamlnode import MAX_INTEGER, Node, from_data, load_file

ItlDistribution = Literal["fixed", "normal", "lognormal"]
TracingExporter = Literal["off", "console", "otlp"]
ErrorMode = Literal["http_500", "abort_stream"]

DEFAULT_MODEL_NAME = "sim-llama"
_FAULT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_DELAY_S = 3600.0
MAX_DURATION_S = 86400.0
MAX_MULTIPLIER = 1000.0
MAX_TOKENS = 1_000_000
MAX_NUM_SEQS = 65_536
MAX_KV_CACHE_TOKENS = 1_000_000_000
MAX_TOKENS_PER_CHUNK = 4096


class ConfigFieldError(SpecError):
    """One wrong field of plain data (a fault body, a config mapping): its dotted path and why, no file."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason, field=field)

    def render(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


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
    max_queued_requests: int | None = None  # None: the queue is unbounded; else a request beyond it is shed


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
    """``preset``: the server whose metrics and answers the simulator takes (vllm, sglang, tgi, triton)."""

    seed: int = 0
    preset: str = DEFAULT_PRESET
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
# Edges: a file, or plain data (the admin API's JSON, a mapping in a test)


def load_sim_config(path: str) -> SimConfig:
    """Read a simulator config file; raises :class:`SpecError` with file, line and field path."""
    docs = load_file(path, what="the simulator config")
    if len(docs) > 1:
        docs[1].fail("a simulator config holds one YAML document, found another one here")
    return _sim_config(docs[0] if docs else None)


def parse_sim_config(data: object) -> SimConfig:
    """A :class:`SimConfig` from plain data; raises :class:`ConfigFieldError`."""
    try:
        return _sim_config(from_data(data, "<config>"))
    except SpecError as e:
        raise ConfigFieldError(e.field, e.reason) from None


def parse_fault(data: object, path: str = "", *, model_names: tuple[str, ...] | None = None) -> Fault:
    """A fault from a JSON mapping; raises :class:`ConfigFieldError` naming the wrong field."""
    try:
        return _fault(from_data(data, "<request body>", path), model_names)
    except SpecError as e:
        raise ConfigFieldError(e.field, e.reason) from None


def fault_to_json(fault: Fault) -> dict[str, Any]:
    """A fault as the admin API shows it (the same keys it accepts)."""
    out: dict[str, Any] = {"kind": fault.kind}
    for name in fault.__dataclass_fields__:
        out[name] = getattr(fault, name)
    return out


# ---------------------------------------------------------------------------------------------------------
# Field readers: a missing field and an explicit null both mean "the default".


def _get(items: dict[str, Node], key: str) -> Node | None:
    node = items.get(key)
    return None if node is None or node.value is None else node


def _number(items: dict[str, Node], key: str, default: float, *, maximum: float,
            above: float | None = None) -> float:
    node = _get(items, key)
    if node is None:
        return default
    return node.number(minimum=None if above is not None else 0.0, maximum=maximum, above=above)


def _integer(items: dict[str, Node], key: str, default: int, *, minimum: int, maximum: int) -> int:
    node = _get(items, key)
    return default if node is None else node.integer(minimum=minimum, maximum=maximum)


def _optional_integer(items: dict[str, Node], key: str, *, minimum: int, maximum: int) -> int | None:
    node = _get(items, key)
    return None if node is None else node.integer(minimum=minimum, maximum=maximum)


def _string(items: dict[str, Node], key: str, default: str) -> str:
    node = _get(items, key)
    return default if node is None else node.string()


def _choice(items: dict[str, Node], key: str, default: str, choices: tuple[str, ...]) -> str:
    node = _get(items, key)
    if node is None:
        return default
    if node.value is False and "off" in choices:  # YAML 1.1 reads a bare `off` as false
        return "off"
    return node.choice(choices)


def _list(items: dict[str, Node], key: str) -> list[Node]:
    node = _get(items, key)
    return [] if node is None else node.sequence()


# ---------------------------------------------------------------------------------------------------------
# Faults

_COMMON_FAULT_FIELDS = {"kind", "id", "model", "duration_s"}
_FAULT_FIELDS: dict[str, set[str]] = {
    "latency": {"ttft_multiplier", "ttft_add_s", "itl_multiplier", "itl_add_s"},
    "errors": {"rate", "mode", "abort_after_tokens"},
    "stall": {"stall_s", "at_token", "probability"},
    "outage": set(),
}


def _fault(node: Node, model_names: tuple[str, ...] | None) -> Fault:
    raw = node.mapping()
    kind_node = _get(raw, "kind")
    if kind_node is None:
        Node(None, node.file, node.line, node.child_path("kind")).fail(
            f"is required: one of {', '.join(FAULT_KINDS)}")
    kind = kind_node.choice(tuple(FAULT_KINDS))
    f = node.mapping(_COMMON_FAULT_FIELDS | _FAULT_FIELDS[kind])
    id_node = _get(f, "id")
    fault_id = id_node.string() if id_node is not None else None
    if id_node is not None and not _FAULT_ID.match(id_node.value):
        id_node.fail("must be 1-64 letters, digits, '.', '_' or '-'")
    model_node = _get(f, "model")
    model = model_node.string() if model_node is not None else None
    if model_node is not None and model_names is not None and model not in model_names:
        model_node.fail(f"unknown model {model!r}; served: {', '.join(model_names)}")
    duration_node = _get(f, "duration_s")
    duration = duration_node.number(above=0.0, maximum=MAX_DURATION_S) if duration_node is not None else None
    common: dict[str, Any] = {"id": fault_id, "model": model, "duration_s": duration}
    if kind == "latency":
        return LatencyFault(
            **common,
            ttft_multiplier=_number(f, "ttft_multiplier", 1.0, maximum=MAX_MULTIPLIER),
            ttft_add_s=_number(f, "ttft_add_s", 0.0, maximum=MAX_DELAY_S),
            itl_multiplier=_number(f, "itl_multiplier", 1.0, maximum=MAX_MULTIPLIER),
            itl_add_s=_number(f, "itl_add_s", 0.0, maximum=MAX_DELAY_S),
        )
    if kind == "errors":
        mode = _choice(f, "mode", "http_500", ("http_500", "abort_stream"))
        abort_node = _get(f, "abort_after_tokens")
        abort_after = abort_node.integer(minimum=0, maximum=MAX_TOKENS) if abort_node is not None else None
        if abort_node is not None and mode != "abort_stream":
            abort_node.fail("only applies to mode abort_stream")
        return ErrorsFault(
            **common,
            rate=_number(f, "rate", 1.0, maximum=1.0),
            mode="abort_stream" if mode == "abort_stream" else "http_500",
            abort_after_tokens=abort_after,
        )
    if kind == "stall":
        if _get(f, "stall_s") is None:
            Node(None, node.file, node.line, node.child_path("stall_s")).fail("is required for a stall fault")
        return StallFault(
            **common,
            stall_s=_number(f, "stall_s", 1.0, above=0.0, maximum=MAX_DELAY_S),
            at_token=_integer(f, "at_token", 1, minimum=0, maximum=MAX_TOKENS),
            probability=_number(f, "probability", 1.0, maximum=1.0),
        )
    return OutageFault(**common)


# ---------------------------------------------------------------------------------------------------------
# The config file

_TOP_FIELDS = {"seed", "preset", "admin_token", "models", "tracing", "faults"}
_MODEL_FIELDS = {"name", "max_num_seqs", "max_model_len", "kv_cache_tokens", "prefill_base_s",
                 "prefill_per_token_s", "itl_s", "itl_distribution", "itl_stddev_s", "batch_slowdown",
                 "output_tokens", "token_text", "tokens_per_chunk", "max_queued_requests"}


def _sim_config(root: Node | None) -> SimConfig:
    if root is None or root.value is None:
        return default_config()
    top = root.mapping(_TOP_FIELDS)
    seed = _integer(top, "seed", 0, minimum=-MAX_INTEGER, maximum=MAX_INTEGER)
    preset = _choice(top, "preset", DEFAULT_PRESET, SIM_PRESETS)
    token_node = _get(top, "admin_token")
    admin_token = token_node.string() if token_node is not None else None
    models: list[ModelConfig] = []
    for item in _list(top, "models"):
        m = _model(item)
        if m.name in (seen.name for seen in models):
            item.mapping()["name"].fail(f"duplicate model name {m.name!r}")
        models.append(m)
    if _get(top, "models") is not None and not models:
        top["models"].fail("must list at least one model (or leave it out for the default)")
    if not models:
        models = [ModelConfig()]
    model_names = tuple(m.name for m in models)
    tracing_node = _get(top, "tracing")
    tracing = _tracing(tracing_node) if tracing_node is not None else TracingConfig()
    faults: list[Fault] = []
    for item in _list(top, "faults"):
        fault = _fault(item, model_names)
        if fault.id is not None and fault.id in (f.id for f in faults):
            item.mapping()["id"].fail(f"duplicate fault id {fault.id!r}")
        faults.append(fault)
    return SimConfig(seed=seed, preset=preset, admin_token=admin_token, models=tuple(models), tracing=tracing,
                     faults=tuple(faults))


def _model(node: Node) -> ModelConfig:
    f = node.mapping(_MODEL_FIELDS, required=("name",))
    d = ModelConfig()
    m = ModelConfig(
        name=f["name"].string(),
        max_num_seqs=_integer(f, "max_num_seqs", d.max_num_seqs, minimum=1, maximum=MAX_NUM_SEQS),
        max_model_len=_integer(f, "max_model_len", d.max_model_len, minimum=2, maximum=MAX_TOKENS),
        kv_cache_tokens=_integer(f, "kv_cache_tokens", d.kv_cache_tokens, minimum=1, maximum=MAX_KV_CACHE_TOKENS),
        prefill_base_s=_number(f, "prefill_base_s", d.prefill_base_s, maximum=MAX_DELAY_S),
        prefill_per_token_s=_number(f, "prefill_per_token_s", d.prefill_per_token_s, maximum=MAX_DELAY_S),
        itl_s=_number(f, "itl_s", d.itl_s, maximum=MAX_DELAY_S),
        itl_distribution=_itl_distribution(
            _choice(f, "itl_distribution", d.itl_distribution, ("fixed", "normal", "lognormal"))
        ),
        itl_stddev_s=_number(f, "itl_stddev_s", d.itl_stddev_s, maximum=MAX_DELAY_S),
        batch_slowdown=_number(f, "batch_slowdown", d.batch_slowdown, maximum=MAX_MULTIPLIER),
        output_tokens=_output_tokens(f["output_tokens"]) if _get(f, "output_tokens") is not None else OutputTokens(),
        token_text=_string(f, "token_text", d.token_text),
        tokens_per_chunk=_integer(f, "tokens_per_chunk", d.tokens_per_chunk, minimum=1, maximum=MAX_TOKENS_PER_CHUNK),
        max_queued_requests=_optional_integer(f, "max_queued_requests", minimum=0, maximum=MAX_NUM_SEQS),
    )
    if m.itl_distribution == "lognormal" and m.itl_s == 0 and m.itl_stddev_s > 0:
        (_get(f, "itl_s") or node).fail("must be > 0 for a lognormal distribution with a stddev")
    return m


def _itl_distribution(value: str) -> ItlDistribution:
    if value == "fixed":
        return "fixed"
    if value == "lognormal":
        return "lognormal"
    return "normal"


def _output_tokens(node: Node) -> OutputTokens:
    raw = node.mapping()
    dist = _choice(raw, "distribution", "uniform", ("fixed", "uniform"))
    if dist == "fixed":
        f = node.mapping({"distribution", "value"})
        if _get(f, "value") is None:
            Node(None, node.file, node.line, node.child_path("value")).fail("is required for a fixed distribution")
        value = _integer(f, "value", 1, minimum=1, maximum=MAX_TOKENS)
        return OutputTokens("fixed", value, value)
    f = node.mapping({"distribution", "min", "max"})
    lo = _integer(f, "min", OutputTokens.min, minimum=1, maximum=MAX_TOKENS)
    hi = _integer(f, "max", max(lo, OutputTokens.max), minimum=1, maximum=MAX_TOKENS)
    if hi < lo:
        f["max"].fail(f"must be >= min ({lo}), got {hi}")
    return OutputTokens("uniform", lo, hi)


def _tracing(node: Node) -> TracingConfig:
    f = node.mapping({"exporter", "endpoint", "service_name"})
    exporter = _choice(f, "exporter", "off", ("off", "console", "otlp"))
    endpoint_node = _get(f, "endpoint")
    endpoint = endpoint_node.string() if endpoint_node is not None else None
    if endpoint_node is not None and not endpoint_node.value.startswith(("http://", "https://")):
        endpoint_node.fail(f"must be an http(s) URL, got {endpoint!r}")
    service = _string(f, "service_name", TracingConfig.service_name)
    exp: TracingExporter = "console" if exporter == "console" else "otlp" if exporter == "otlp" else "off"
    return TracingConfig(exporter=exp, endpoint=endpoint, service_name=service)
