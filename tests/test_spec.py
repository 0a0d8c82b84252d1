"""Spec loading: the examples load, and every kind of bad input gets one clear message, exit 2, no output."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from forge_slo.errors import SpecErrors
from forge_slo.spec import LatencySLI, load_specs
from forge_slo.spec.model import GaugeSLI, default_windows
from tests.conftest import EXAMPLES, run_cli

GOOD = textwrap.dedent("""\
    apiVersion: forge-slo/v1
    kind: ServiceSLO
    service: chat
    preset: vllm
    selector: {namespace: prod}
    group_by: [model_name]
    period: 30d
    labels: {team: inference}
    alerting:
      page: {labels: {severity: critical}}
      ticket: {labels: {severity: warning}}
    slos:
      - name: ttft
        objective: 99
        sli: {latency: {metric: ttft, threshold: 0.5}}
      - name: tpot
        objective: 99
        sli: {latency: {metric: tpot, threshold: 0.1}}
      - name: availability
        objective: 99.9
        sli: {availability: {}}
      - name: gateway-errors
        objective: 99.5
        sli:
          ratio:
            errors: sum(rate(http_requests_total{job="gw",code=~"5.."}[{{window}}]))
            total: sum(rate(http_requests_total{job="gw"}[{{window}}]))
    """)


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_issue_example_loads_as_written(tmp_path: Path) -> None:
    [spec] = load_specs([write(tmp_path, GOOD)])
    assert spec.service == "chat"
    assert [s.name for s in spec.slos] == ["ttft", "tpot", "availability", "gateway-errors"]
    assert spec.group_by == ("model_name",)
    ttft = spec.slos[0].sli
    assert isinstance(ttft, LatencySLI) and ttft.histogram.metric == "vllm:time_to_first_token_seconds"
    assert [w.factor for w in spec.page.windows] == [14.4, 6.0]
    assert [w.factor for w in spec.ticket.windows] == [3.0, 1.0]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate(path: Path) -> None:
    result = run_cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok  ")


def test_28_day_factors_follow_the_period() -> None:
    page, ticket = default_windows(28 * 86400)
    assert [w.factor for w in page + ticket] == [13.44, 5.6, 2.8, 0.9333]


def test_threshold_off_the_buckets_names_nearest_bounds(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("threshold: 0.5", "threshold: 2"))
    result = run_cli("compile", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "nearest valid bounds are 1.0 and 2.5" in result.stderr
    assert f"{path}:15: slos[0].sli.latency.threshold:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_threshold_matches_bounds_with_float_noise(tmp_path: Path) -> None:
    [spec] = load_specs([write(tmp_path, GOOD.replace("threshold: 0.5", "threshold: 0.50000000001"))])
    sli = spec.slos[0].sli
    assert isinstance(sli, LatencySLI) and sli.threshold_seconds == 0.5


BAD_CASES = [
    ("unknown field", GOOD.replace("period: 30d", "periodd: 30d"), 7, "periodd", "did you mean 'period'"),
    ("wrong type", GOOD.replace("group_by: [model_name]", "group_by: model_name"), 6, "group_by",
     "must be a list"),
    ("objective too high", GOOD.replace("objective: 99.9", "objective: 100"), 20, "slos[2].objective",
     "between 0 and 100"),
    ("objective zero", GOOD.replace("objective: 99.9", "objective: 0"), 20, "slos[2].objective",
     "between 0 and 100"),
    ("unknown preset", GOOD.replace("preset: vllm", "preset: vvlm"), 4, "preset", "unknown preset 'vvlm'"),
    ("unknown metric alias", GOOD.replace("metric: tpot", "metric: tbt"), 18, "slos[1].sli.latency.metric",
     "unknown metric 'tbt' for preset 'vllm'; known: e2e, itl, queue, tpot, ttft"),
    ("duplicate SLO", GOOD.replace("name: tpot", "name: ttft"), 16, "slos[1].name", "duplicate SLO name 'ttft'"),
    ("missing window placeholder", GOOD.replace('code=~"5.."}[{{window}}]', 'code=~"5.."}[5m]'), 26,
     "slos[3].sli.ratio.errors", "{{window}} placeholder"),
    ("PromQL that does not parse", GOOD.replace("total: sum(rate(", "total: sum(rate(("), 27,
     "slos[3].sli.ratio.total", "not valid PromQL"),
    ("broken YAML", GOOD.replace("labels: {team: inference}", "labels: {team: inference"), 9, "",
     "invalid YAML"),
    ("duplicate key", GOOD.replace("period: 30d", "period: 30d\nperiod: 28d"), 8, "period", "duplicate key"),
    ("bad duration", GOOD.replace("period: 30d", "period: 30 days"), 7, "period", "is not a duration"),
    ("bad label name", GOOD.replace("{team: inference}", "{team-name: inference}"), 8, "labels.team-name",
     "not a valid Prometheus label name"),
    ("reserved label", GOOD.replace("{team: inference}", "{forge_slo_name: x}"), 8, "labels.forge_slo_name",
     "set by forge-slo itself"),
    ("unknown apiVersion", GOOD.replace("forge-slo/v1", "forge-slo/v2"), 1, "apiVersion",
     "unsupported apiVersion"),
    ("availability on a custom preset", GOOD.replace("preset: vllm", "preset: custom"), 15,
     "slos[0].sli.latency.metric", "unknown metric 'ttft' for preset 'custom'"),
    ("short window not shorter", GOOD.replace("page: {labels: {severity: critical}}",
                                              "page: {windows: [{long: 1h, short: 1h, factor: 14.4}]}"), 10,
     "alerting.page.windows[0].short", "must be shorter"),
    ("impossible factor", GOOD.replace("objective: 99.9", "objective: 80").replace(
        "page: {labels: {severity: critical}}",
        "page: {labels: {severity: critical}, windows: [{long: 1h, short: 5m, factor: 14.4}]}"), 20,
     "slos[2].objective", "can never happen"),
    ("bad service name", GOOD.replace("service: chat", "service: 'chat/../../etc'"), 3, "service",
     "not a valid name"),
]


@pytest.mark.parametrize(("case", "text", "line", "field", "reason"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_reported_clearly(tmp_path: Path, case: str, text: str, line: int, field: str,
                                       reason: str) -> None:
    path = write(tmp_path, text)
    out = tmp_path / "out"
    result = run_cli("compile", str(path), "--out", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    where = f"{path}:{line}: {field}: " if field else f"{path}:{line}: "
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {where}"), result.stderr
    assert reason in lines[0]
    assert not out.exists(), "nothing may be written when a spec is invalid"


def test_invalid_spec_leaves_previous_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    good = write(tmp_path, GOOD)
    assert run_cli("compile", str(good), "--out", str(out)).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write(tmp_path, GOOD.replace("objective: 99.9", "objective: 101"))
    assert run_cli("compile", str(good), "--out", str(out)).returncode == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_every_bad_document_is_reported(tmp_path: Path) -> None:
    write(tmp_path, GOOD.replace("preset: vllm", "preset: nope"), "a.yaml")
    write(tmp_path, GOOD.replace("service: chat", "service: other").replace("objective: 99\n", "objective: -1\n", 1),
          "b.yaml")
    with pytest.raises(SpecErrors) as info:
        load_specs([tmp_path])
    assert [e.file for e in info.value.errors] == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]


def test_duplicate_service_across_files(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")
    result = run_cli("validate", str(tmp_path))
    assert result.returncode == 2
    assert "service 'chat' is also defined in" in result.stderr


def test_multi_document_file_and_directory(tmp_path: Path) -> None:
    write(tmp_path, GOOD + "---\n" + GOOD.replace("service: chat", "service: chat2"), "both.yml")
    write(tmp_path, "not a spec", "notes.txt")
    assert [s.service for s in load_specs([tmp_path])] == ["chat", "chat2"]


def test_missing_path(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "no such file or directory" in result.stderr


def test_custom_preset_declares_its_histograms(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        apiVersion: forge-slo/v1
        kind: ServiceSLO
        service: embed
        preset: custom
        metrics:
          latency: {metric: embed_request_duration_ms, buckets: [5, 10, 50, 100], unit_seconds: 0.001}
        slos:
          - name: fast
            objective: 99
            sli: {latency: {metric: latency, threshold: 0.05}}
        """)
    [spec] = load_specs([write(tmp_path, text)])
    sli = spec.slos[0].sli
    assert isinstance(sli, LatencySLI) and sli.bucket_bound == 50
    bad = write(tmp_path, text.replace("threshold: 0.05", "threshold: 0.02"))
    result = run_cli("validate", str(bad))
    assert result.returncode == 2 and "nearest valid bounds are 0.01 and 0.05" in result.stderr


GPU = textwrap.dedent("""\
    apiVersion: forge-slo/v1
    kind: ServiceSLO
    service: fleet
    preset: custom
    gpu: {selector: {cluster: research}, alerts: {unhealthy_for: 2m}}
    slos:
      - name: utilization
        objective: 95
        sli: {gauge: {metric: DCGM_FI_DEV_GPU_UTIL, good_when: ">=", threshold: 75}}
    """)


def test_gauge_sli_reads_the_gpu_pool(tmp_path: Path) -> None:
    [spec] = load_specs([write(tmp_path, GPU)])
    assert spec.gpu is not None and spec.gpu.unhealthy_for_seconds == 120
    sli = spec.slos[0].sli
    assert isinstance(sli, GaugeSLI) and dict(sli.selector) == {"cluster": "research"}


@pytest.mark.parametrize(("old", "new", "message"), [
    ('good_when: ">="', 'good_when: "=>"', "slos[0].sli.gauge.good_when: must be one of"),
    ("alerts: {unhealthy_for: 2m}", "price_per_gpu_hour: 2", "preset 'custom' does not have"),
    ("alerts: {unhealthy_for: 2m}", "price_per_gpu_hour: -1", "gpu.price_per_gpu_hour: must be a positive price"),
    ("alerts: {unhealthy_for: 2m}", "critical_xids: [79, x]", "gpu.critical_xids[1]: must be a number"),
])
def test_bad_gpu_sections(tmp_path: Path, old: str, new: str, message: str) -> None:
    result = run_cli("validate", str(write(tmp_path, GPU.replace(old, new))))
    assert result.returncode == 2 and message in result.stderr, result.stderr


# Hostile input: bounded reading, any bytes end in one clear message -----------------------------------------

def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes whose aliases expand to 9**levels values (a "billion laughs")."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# Each document stays under the alias budget; together they do not (anchors are per document).
SMALL_BOMBS = (b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
               b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n---\n")
HOSTILE_CASES = [
    ("alias bomb", alias_bomb().encode(), 5, "l4[0]: aliases expand to more than 10000 values"),
    ("a thousand small alias bombs", SMALL_BOMBS * 999, 7, "b[7]: aliases expand to more than 10000 values"),
    ("recursive alias", b"apiVersion: forge-slo/v1\nslos: &s [*s]\n", 2, "slos[0]: an alias refers to the value"),
    ("deep nesting", b"apiVersion: forge-slo/v1\nslos: " + b"[" * 600 + b"]" * 600 + b"\n", 2,
     "nest deeper than 64 levels"),
    ("NUL byte", GOOD.replace("kind: ServiceSLO", "kind: Service\0SLO").encode(), 2, "a NUL byte (U+0000)"),
    ("escaped control character", GOOD.replace("service: chat", 'service: "chat\\x07"').encode(), 3,
     "service: holds the control character U+0007"),
    ("401-digit number", GOOD.replace("objective: 99.9", "objective: " + "9" * 401).encode(), 20,
     "slos[2].objective: the integer is too large"),
    ("non-UTF-8 byte", GOOD.replace("service: chat", "service: caf\udce9").encode("utf-8", "surrogateescape"), 3,
     "not UTF-8 text: byte 0xe9"),
    ("impossible date", GOOD.replace("service: chat", "service: 2024-13-45").encode(), 3,
     "service: '2024-13-45' is not a valid timestamp"),
    ("400-digit duration", GOOD.replace("period: 30d", "period: " + "9" * 400 + "d").encode(), 7,
     "period: is not a duration: longer than 32 characters"),
    ("absurd duration", GOOD.replace("period: 30d", "period: 99999999999d").encode(), 7,
     "period: '99999999999d' is longer than 3650d"),
    ("absurd XID code", GPU.replace("alerts: {unhealthy_for: 2m}", "critical_xids: [1.0e+300]").encode(), 5,
     "gpu.critical_xids[0]: XID codes are positive integers, at most 1023"),
]


@pytest.mark.parametrize(("case", "data", "line", "reason"), HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES])
def test_hostile_input_is_refused_with_file_and_line(tmp_path: Path, case: str, data: bytes, line: int,
                                                     reason: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(data)
    out = tmp_path / "out"
    result = run_cli("compile", str(path), "--out", str(out), timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {path}:{line}: " in result.stderr and reason in result.stderr, result.stderr
    assert not out.exists(), "nothing may be written when a spec is invalid"


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, alias_bomb(levels=12))  # 9**12 values if expanded
    start = time.monotonic()
    with pytest.raises(SpecErrors, match="aliases expand to more than"):
        load_specs([path])
    assert time.monotonic() - start < 2  # the requirement: well under a second; room for a loaded machine


def test_merge_keys_let_a_mapping_override_what_it_merges(tmp_path: Path) -> None:
    text = GOOD.replace("labels: {team: inference}",
                        "labels:\n  <<: &common {team: inference, tier: gold}\n  tier: silver")
    [spec] = load_specs([write(tmp_path, text)])
    assert dict(spec.labels) == {"team": "inference", "tier": "silver"}


def test_libyaml_and_pure_python_readers_agree_on_hostile_input(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from forge_slo.errors import SpecError
    from forge_slo.spec.yamlnode import load_documents

    def outcome(data: bytes) -> object:
        try:
            return [doc.plain() for doc in load_documents(data, "spec.yaml")]
        except SpecError as exc:
            return exc.render()

    cases = [data for _, data, _, _ in HOSTILE_CASES] + [alias_bomb(levels=12).encode(), b"---\n" * 1001]
    fast = [outcome(data) for data in cases]
    monkeypatch.setattr(yaml, "__with_libyaml__", False)  # the reader's fallback when PyYAML lacks libyaml
    assert [outcome(data) for data in cases] == fast
    assert fast[-1] == "spec.yaml:1001: holds more than 1000 YAML documents"
