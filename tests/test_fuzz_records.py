"""Fuzzing the records reader: whatever bytes a records file holds, reading it ends in records or a
SourceError naming the file and line, never another exception; and every record it returns is in range."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_slo.errors import SourceError
from forge_slo.sources import records as rec
from forge_slo.sources.records import RequestRecord, iter_records, read_records

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

VALID = RequestRecord(start_time=1_700_000_000.25, model="m", ok=True, status=200, ttft_s=0.2, tpot_s=0.01,
                      e2e_s=1.2, itl_s=(0.01, 0.0, 0.02), prompt_tokens=12, output_tokens=4, stage="rate=1",
                      arm="canary", trace_id="t1", extra={"k": [1, "v"]})
VALID_LINE = VALID.to_json()
VALID_FIELDS: dict[str, Any] = json.loads(VALID_LINE)

# JSON values of every kind, including what Python's json writes but JSON forbids (NaN, Infinity), numbers at
# and beyond the edges of their ranges, and text with lone surrogates.
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from([0, 1, -1, 5e-324, 1e308, 86_400.0, 86_400.5, 946_684_800, 4_102_444_801, 1e15,
                     "\ud800", "usage", "stream", "http", "baseline"]),
)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _outcome(path: Path) -> list[RequestRecord] | None:
    """The records, or None after a SourceError that names the file; any other exception fails the test."""
    try:
        return read_records(path)
    except SourceError as exc:
        assert str(exc).startswith(str(path)), exc
        return None


def _assert_in_range(records: list[RequestRecord]) -> None:
    for r in records:
        assert rec.EARLIEST_START <= r.start_time <= rec.LATEST_START
        for value in (r.ttft_s, r.tpot_s, r.e2e_s, *r.itl_s):
            assert value is None or (math.isfinite(value) and 0 <= value <= rec.MAX_DURATION_S)
        for count in (r.prompt_tokens, r.output_tokens):
            assert count is None or (type(count) is int and 0 <= count <= rec.MAX_TOKENS)
        assert r.status is None or (type(r.status) is int and 100 <= r.status <= 999)
        assert isinstance(r.ok, bool) and isinstance(r.warmup, bool) and isinstance(r.model, str)
        assert r.error_kind is None or r.error_kind in rec.ERROR_KINDS
        r.to_json().encode("utf-8")  # what was read can be written back


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "records.jsonl"


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_end_in_records_or_a_source_error(fuzz_file: Path, data: bytes) -> None:
    fuzz_file.write_bytes(data)
    records = _outcome(fuzz_file)
    if records is not None:
        _assert_in_range(records)


@FUZZ
@given(st.dictionaries(st.sampled_from([*VALID_FIELDS, "v", "unknown"]), JSON_VALUES, min_size=1, max_size=3),
       st.sets(st.sampled_from(list(VALID_FIELDS)), max_size=2))
def test_valid_records_with_fields_replaced_or_removed(fuzz_file: Path, changes: dict[str, Any],
                                                       removed: set[str]) -> None:
    fields = {k: v for k, v in {**VALID_FIELDS, **changes}.items() if k not in removed}
    line = json.dumps(fields, allow_nan=True)  # NaN and Infinity are written as Python does
    fuzz_file.write_text(VALID_LINE + "\n" + line + "\n", encoding="utf-8", errors="surrogatepass")
    records = _outcome(fuzz_file)
    if records is not None:
        assert len(records) == 2 and records[0] == VALID
        _assert_in_range(records)


@FUZZ
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=len(VALID_LINE)), st.binary(max_size=6),
                          st.integers(min_value=0, max_value=4)), min_size=1, max_size=4))
def test_valid_lines_with_bytes_spliced_in_or_cut_out(fuzz_file: Path,
                                                     edits: list[tuple[int, bytes, int]]) -> None:
    data = bytearray(VALID_LINE.encode())
    for at, insert, cut in edits:
        data[at:at + cut] = insert
    fuzz_file.write_bytes(VALID_LINE.encode() + b"\n" + bytes(data) + b"\n")
    records = _outcome(fuzz_file)
    if records is not None:
        _assert_in_range(records)


@FUZZ
@given(st.lists(st.text(max_size=200), max_size=5))
def test_text_lines_as_the_load_generator_hands_them(lines: list[str]) -> None:
    try:
        _assert_in_range(list(iter_records(lines, "worker")))
    except SourceError as exc:
        assert str(exc).startswith("worker:"), exc


def test_the_fuzzer_reaches_both_outcomes(fuzz_file: Path) -> None:
    """The properties above are not vacuous: the valid line reads back, a NaN in it does not."""
    fuzz_file.write_text(VALID_LINE + "\n", encoding="utf-8")
    assert read_records(fuzz_file) == [VALID]
    fuzz_file.write_text(VALID_LINE.replace('"ttft_s":0.2', '"ttft_s":NaN') + "\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"records\.jsonl:1: NaN is not a number JSON allows"):
        read_records(fuzz_file)
