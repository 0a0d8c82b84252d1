"""Fuzzing every configuration reader: any bytes, any text, and structured mutations of the valid examples end in
a parsed value or the reader's documented error, never another exception.

The readers and their documented errors: spec files (``load_specs``: SpecErrors), simulator configs
(``load_sim_config``: SpecError; ``parse_sim_config`` and ``parse_fault`` for plain data: ConfigFieldError, a
SpecError), fake fleets (``parse_fleet``/``load_fleet``/``fault_from_json``: SpecError) and game-day files
(``collect``: SpecError for their YAML, UsageError for the rest).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_slo.chaos.gameday import collect
from forge_slo.errors import SpecError, SpecErrors, UsageError
from forge_slo.sim.config import MAX_DELAY_S, ConfigFieldError, load_sim_config, parse_fault, parse_sim_config
from forge_slo.spec import load_specs
from forge_slo.spec.yamlnode import load_documents
from forge_slo.telemetry.fleet import fault_from_json, load_fleet, parse_fleet
from tests.conftest import EXAMPLES, REPO

# Hypothesis's report of a failure touches mypy_extensions.TypedDict, whose deprecation warning (an error here)
# would replace the falsifying example with an INTERNALERROR.
pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=30)

SPEC_EXAMPLES = sorted(EXAMPLES.glob("*.yaml"))
FLEET_EXAMPLE = REPO / "experiments" / "fleets" / "h100-8gpu.yaml"
SIM_EXAMPLE = """\
seed: 42
admin_token: change-me
models:
  - name: llama-8b
    max_num_seqs: 64
    prefill_base_s: 0.03
    prefill_per_token_s: 0.00005
    itl_s: 0.015
    itl_distribution: lognormal
    itl_stddev_s: 0.004
    batch_slowdown: 1.0
    output_tokens: {distribution: uniform, min: 50, max: 400}
  - name: llama-70b
    max_model_len: 32768
    kv_cache_tokens: 262144
    output_tokens: {distribution: fixed, value: 128}
    token_text: " tok"
    tokens_per_chunk: 1
faults:
  - {kind: latency, model: llama-70b, ttft_multiplier: 3, duration_s: 120}
  - {kind: errors, rate: 0.2, mode: abort_stream, abort_after_tokens: 4, id: cut}
  - {kind: stall, stall_s: 1, at_token: 0, probability: 0.5}
tracing:
  exporter: otlp
  endpoint: http://127.0.0.1:4318/v1/traces
"""
GAMEDAY_EXAMPLE = "kind: GameDay\nname: nightly\nexperiments: [x.json]\nenv: {FORGE_SLO_A: one, FORGE_SLO_B: 2}\n"

# Text that YAML or a reader finds hard: aliases, merge keys, tags, control characters, huge and odd numbers,
# impossible dates, absurd durations, brackets that never close.
NASTY_TEXT = ["*a", "&a ", "<<: *a", "!!set", "!!binary", "!foo", "? ", "\x00", "\x07", "\t", "\r", "\ufeff",
              "\u2028", "[", "]", "{", "}", ": ", "- ", "---\n", "...\n", "#", "'", '"', "\\", "~", "=", "1e308",
              "1.0e+308", "-.inf", ".nan", "0x" + "f" * 90, "9" * 401, "1:2:3:4:5:6:7:8:9", "2024-13-45",
              "2001-12-14 25:61:00", "0s", "99999999999d", "9" * 400 + "s", "0b" + "1" * 70, "yes", "off"]
NASTY_SCALARS = [None, True, False, 0, -1, 1, 2**53 + 1, 10**400, -(10**400), 0.5, -0.0, 1e-320, 1e308, -1e308,
                 math.inf, -math.inf, math.nan, "", " ", "x", "\x00", "\x1b[31m", "0s", "1h", "99999999999d",
                 "9" * 400 + "s", "2024-13-45", "sum(rate(x[{{window}}]))", "GameDay", "latency", "xid", "sine"]

scalars = st.one_of(st.sampled_from(NASTY_SCALARS), st.integers(), st.floats(), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)


# Where each reader is called and what it may raise ------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    (path / "x.json").write_text('{"title": "t", "method": []}')
    return path


def _write(folder: Path, name: str, data: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


def read_spec(folder: Path, data: str | bytes) -> None:
    with contextlib.suppress(SpecErrors):
        load_specs([_write(folder, "spec.yaml", data)])


def read_sim(folder: Path, data: str | bytes) -> None:
    try:
        config = load_sim_config(str(_write(folder, "sim.yaml", data)))
    except SpecError:
        return
    for model in config.models:  # what parsed is within the documented bounds
        assert max(model.prefill_base_s, model.itl_s, model.itl_stddev_s) <= MAX_DELAY_S


def read_fleet(folder: Path, data: str | bytes) -> None:
    try:
        fleet = load_fleet(str(_write(folder, "fleet.yaml", data)))
    except SpecError:
        return
    for gpu in fleet.gpus:  # every signal can be read at any time the exporter will ask
        for signal in (gpu.utilization, gpu.power_w, gpu.temperature_c, gpu.memory_used_mib, gpu.nvlink_kib_per_s):
            for t in (0.0, 0.5, 86_400.0, 10.0**9):
                assert math.isfinite(signal.at(t))


def read_gameday(folder: Path, data: str | bytes) -> None:
    with contextlib.suppress(SpecError, UsageError):
        collect([_write(folder, "day.yaml", data)])


READERS: dict[str, Callable[[Path, str | bytes], None]] = {
    "spec": read_spec, "sim": read_sim, "fleet": read_fleet, "gameday": read_gameday,
}


def example_text(reader: str, index: int) -> str:
    if reader == "spec":
        return SPEC_EXAMPLES[index % len(SPEC_EXAMPLES)].read_text(encoding="utf-8")
    return {"sim": SIM_EXAMPLE, "fleet": FLEET_EXAMPLE.read_text(encoding="utf-8"), "gameday": GAMEDAY_EXAMPLE}[reader]


def test_the_fuzzed_examples_are_valid(scratch: Path) -> None:
    """The mutations below start from valid input, so what they find is what the mutation did."""
    for path in SPEC_EXAMPLES:
        assert load_specs([path])
    assert load_sim_config(str(_write(scratch, "sim.yaml", SIM_EXAMPLE))).faults
    assert load_fleet(str(FLEET_EXAMPLE)).gpus
    files, env = collect([_write(scratch, "day.yaml", GAMEDAY_EXAMPLE)])
    assert [f.name for f in files] == ["x.json"] and env == {"FORGE_SLO_A": "one", "FORGE_SLO_B": "2"}


# Arbitrary input ------------------------------------------------------------------------------------------------

@FUZZ
@given(data=st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_any_bytes_or_text_is_nodes_or_a_spec_error(data: bytes | str) -> None:
    try:
        docs = load_documents(data, "fuzz.yaml")
    except SpecError as exc:
        assert exc.file == "fuzz.yaml"
        return
    for doc in docs:
        doc.plain()


@FEW
@given(reader=st.sampled_from(sorted(READERS)), data=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_every_reader_takes_any_bytes(scratch: Path, reader: str, data: bytes | str) -> None:
    READERS[reader](scratch, data)


# Text mutations of valid files ----------------------------------------------------------------------------------

@FUZZ
@given(reader=st.sampled_from(sorted(READERS)), which=st.integers(0, 16), edits=st.lists(st.tuples(
    st.floats(0, 1), st.integers(0, 12), st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=6))),
    min_size=1, max_size=3))
def test_text_mutations_of_valid_files(scratch: Path, reader: str, which: int,
                                       edits: list[tuple[float, int, str]]) -> None:
    text = example_text(reader, which)
    for where, cut, insert in edits:
        at = int(where * len(text))
        text = text[:at] + insert + text[at + cut:]
    READERS[reader](scratch, text)


# Structured mutations: one field of a valid file becomes something else -----------------------------------------

def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out += _paths(value, (*prefix, i))
    return out


def _mutate(tree: Any, path: tuple[Any, ...], operation: str, value: Any, key: str) -> Any:
    if not path:
        return value
    tree = copy.deepcopy(tree)
    parent = tree
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if operation == "delete":
        del parent[last]
    elif operation == "add" and isinstance(parent, dict):
        parent[key] = value
    elif operation == "alias":  # the same object twice: safe_dump writes an anchor and an alias
        parent[last] = [parent[last]] * 3
    else:
        parent[last] = value
    return tree


@FUZZ
@given(reader=st.sampled_from(sorted(READERS)), which=st.integers(0, 16), data=st.data(),
       operation=st.sampled_from(["replace", "delete", "add", "alias"]), value=values, key=st.text(max_size=8))
def test_structured_mutations_of_valid_files(scratch: Path, reader: str, which: int, data: st.DataObject,
                                             operation: str, value: Any, key: str) -> None:
    tree = yaml.safe_load(example_text(reader, which))
    path = data.draw(st.sampled_from(_paths(tree)))
    mutated = _mutate(tree, path, operation, value, key)
    READERS[reader](scratch, yaml.safe_dump(mutated, allow_unicode=True))
    if reader == "sim":
        with contextlib.suppress(ConfigFieldError):
            parse_sim_config(mutated)


# The admin APIs' fault bodies -----------------------------------------------------------------------------------

@FUZZ
@given(kind=st.sampled_from(["latency", "errors", "stall", "outage", "xid", "ecc", "thermal", "lost", "quake"]),
       fields=st.dictionaries(st.sampled_from(["id", "model", "duration_s", "ttft_multiplier", "ttft_add_s",
                                               "itl_add_s", "rate", "mode", "abort_after_tokens", "stall_s",
                                               "at_token", "probability", "gpu", "code", "count", "type",
                                               "duration", "temperature_c", "at"]), values, max_size=4),
       raw=st.booleans())
def test_fault_bodies_are_faults_or_field_errors(kind: str, fields: dict[str, Any], raw: bool) -> None:
    body: Any = {"kind": kind, **fields}
    if raw:  # what a JSON body can hold once parsed
        body = json.loads(json.dumps(body, default=str))
    try:
        fault = parse_fault(body, model_names=("m",))
        assert all(getattr(fault, name, 0) <= MAX_DELAY_S for name in ("ttft_add_s", "itl_add_s", "stall_s"))
    except ConfigFieldError:
        pass
    with contextlib.suppress(SpecError):
        fault_from_json(body, gpu_count=2)


@FEW
@given(text=st.text(max_size=200))
def test_fleet_text_is_a_fleet_or_a_spec_error(text: str) -> None:
    with contextlib.suppress(SpecError):
        parse_fleet(text, "fuzz.yaml")
