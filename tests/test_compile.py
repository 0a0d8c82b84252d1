"""Compiled rules: promtool accepts them, their generated unit tests pass, output is deterministic and safe."""

from __future__ import annotations

import subprocess
import tempfile
import textwrap
from pathlib import Path

import promql_parser
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_slo.compile.pipeline import compile_specs
from forge_slo.errors import SpecErrors
from forge_slo.spec import load_specs
from tests.conftest import EXAMPLES, GOLDEN, REPO, run_cli
from tests.test_spec import GOOD, write


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    result = run_cli("compile", str(EXAMPLES), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def _services() -> list[str]:
    return sorted(s.service for s in load_specs([EXAMPLES]))


@pytest.mark.parametrize("service", _services())
def test_promtool_accepts_rules(compiled: Path, promtool: str, service: str) -> None:
    path = compiled / "prometheus" / f"{service}.rules.yaml"
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("service", _services())
def test_generated_promtool_tests_pass(compiled: Path, promtool: str, service: str) -> None:
    tests = compiled / "promtool-tests"
    result = subprocess.run([promtool, "test", "rules", f"{service}.test.yaml"], cwd=tests, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    doc = yaml.safe_load((tests / f"{service}.test.yaml").read_text())
    names = [t["name"] for t in doc["tests"]]
    # Each SLO is proven to fire above each factor, stay quiet below it, and to raise the absent alert.
    assert any("just above" in n for n in names) and any("just below" in n for n in names)
    assert any("no metrics" in n for n in names)


def test_generated_tests_can_fail(compiled: Path, promtool: str, tmp_path: Path) -> None:
    """A rule file with a wrong threshold fails its generated tests: they are not vacuous."""
    rules = (compiled / "prometheus" / "chat.rules.yaml").read_text()
    broken = rules.replace("> 14.4", "> 20", 1)
    assert broken != rules
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "chat.rules.yaml").write_text(broken)
    (tmp_path / "promtool-tests").mkdir()
    (tmp_path / "promtool-tests" / "chat.test.yaml").write_text(
        (compiled / "promtool-tests" / "chat.test.yaml").read_text())
    result = subprocess.run([promtool, "test", "rules", "chat.test.yaml"], cwd=tmp_path / "promtool-tests",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "just above the 14.4x threshold" in result.stdout + result.stderr


def test_committed_example_output_is_fresh() -> None:
    result = run_cli("compile", "slo_specs", "--out", str(GOLDEN.relative_to(REPO)),
                     "--grafana-out", "dashboards/grafana", "--check")
    assert result.returncode == 0, (f"{result.stderr}\nregenerate with: forge-slo compile slo_specs/ "
                                    "--out slo_specs/_gen --grafana-out dashboards/grafana")


def test_check_reports_stale_output(tmp_path: Path) -> None:
    spec = write(tmp_path, GOOD)
    out = tmp_path / "out"
    assert run_cli("compile", str(spec), "--out", str(out)).returncode == 0
    assert run_cli("compile", str(spec), "--out", str(out), "--check").returncode == 0
    write(tmp_path, GOOD.replace("objective: 99.9", "objective: 99.95"))
    result = run_cli("compile", str(spec), "--out", str(out), "--check")
    assert result.returncode == 1
    assert f"{out}/prometheus/chat.rules.yaml: out of date" in result.stderr


def test_compiling_twice_gives_identical_bytes() -> None:
    specs = load_specs([EXAMPLES])
    first = compile_specs(specs).artifacts
    second = compile_specs(load_specs([EXAMPLES])).artifacts
    assert first == second


def test_recompile_removes_files_of_removed_services(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(tmp_path, GOOD.replace("service: chat", "service: old"), "old.yaml")
    assert run_cli("compile", str(tmp_path / "old.yaml"), "--out", str(out)).returncode == 0
    (tmp_path / "old.yaml").unlink()
    write(tmp_path, GOOD, "chat.yaml")
    assert run_cli("compile", str(tmp_path / "chat.yaml"), "--out", str(out)).returncode == 0
    assert sorted(p.name for p in (out / "prometheus").iterdir()) == [".forge-slo-manifest", "chat.rules.yaml"]


HOSTILE = '"}) or vector(1) # \\ \n {{ $value }} \'x\''


def test_spec_values_cannot_break_out(tmp_path: Path, promtool: str) -> None:
    """Label values from a spec stay inside their PromQL string and YAML scalar, whatever they hold."""
    text = GOOD.replace("selector: {namespace: prod}", f"selector: {{namespace: {yaml.safe_dump(HOSTILE).strip()}}}")
    text = text.replace("labels: {team: inference}", f"labels: {{team: {yaml.safe_dump(HOSTILE).strip()}}}")
    text = text.replace("description:", "description:")
    spec = write(tmp_path, text)
    [loaded] = load_specs([spec])
    assert loaded.selector["namespace"] == HOSTILE
    out = tmp_path / "out"
    result = run_cli("compile", str(spec), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rules_path = out / "prometheus" / "chat.rules.yaml"
    check = subprocess.run([promtool, "check", "rules", str(rules_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    doc = yaml.safe_load(rules_path.read_text())
    first = doc["groups"][0]["rules"][0]
    assert first["labels"]["team"] == HOSTILE
    parsed = promql_parser.parse(first["expr"])
    selectors: list[promql_parser.VectorSelector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        for attr in ("expr", "lhs", "rhs", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None:
                visit(child)
        for arg in getattr(node, "args", None) or []:
            visit(arg)

    visit(parsed)
    values = {m.value for s in selectors for m in s.matchers.matchers if m.name == "namespace"}
    assert values == {HOSTILE}
    tests = subprocess.run([promtool, "test", "rules", "chat.test.yaml"], cwd=out / "promtool-tests",
                           capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout[-2000:]


def test_prometheus_operator_format(tmp_path: Path) -> None:
    spec = write(tmp_path, GOOD)
    plain, operator = tmp_path / "plain", tmp_path / "op"
    assert run_cli("compile", str(spec), "--out", str(plain)).returncode == 0
    result = run_cli("compile", str(spec), "--out", str(operator), "--format", "prometheus-operator")
    assert result.returncode == 0
    assert "promtool tests are not written" in result.stderr
    resource = yaml.safe_load((operator / "prometheus" / "chat.rules.yaml").read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1" and resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"] == "forge-slo-chat"
    assert resource["spec"] == yaml.safe_load((plain / "prometheus" / "chat.rules.yaml").read_text())


def test_le_matches_both_float_spellings(tmp_path: Path) -> None:
    spec = write(tmp_path, GOOD.replace("threshold: 0.5", "threshold: 1"))
    [loaded] = load_specs([spec])
    rules = compile_specs([loaded]).artifacts[0].content
    assert 'le=~"1|1\\\\.0"' in rules


SLOTH = textwrap.dedent("""\
    version: "prometheus/v1"
    service: "myservice"
    labels: {owner: "myteam"}
    slos:
      - name: "requests-availability"
        objective: 99.9
        sli:
          events:
            error_query: sum(rate(http_request_duration_seconds_count{job="myservice",code=~"(5..|429)"}[{{.window}}]))
            total_query: sum(rate(http_request_duration_seconds_count{job="myservice"}[{{.window}}]))
        alerting:
          name: MyServiceHighErrorRate
          page_alert: {labels: {severity: pageteam}}
          ticket_alert: {disable: true}
    """)


def test_sloth_import(tmp_path: Path, promtool: str) -> None:
    [spec] = load_specs([write(tmp_path, SLOTH)])
    assert spec.source_format == "sloth/prometheus-v1"
    page, ticket = spec.page_and_ticket(spec.slos[0])
    assert page.enabled and not ticket.enabled
    assert spec.slos[0].alert_name == "MyServiceHighErrorRate"
    out = tmp_path / "out"
    assert run_cli("compile", str(tmp_path / "spec.yaml"), "--out", str(out)).returncode == 0
    rules = (out / "prometheus" / "myservice.rules.yaml").read_text()
    assert 'code=~"(5..|429)"}[1h]' in rules and "severity: pageteam" in rules
    assert "forge_slo_severity: ticket\n" not in rules.split("SLIAbsent")[0]
    result = subprocess.run([promtool, "test", "rules", "myservice.test.yaml"], cwd=out / "promtool-tests",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]


def test_sloth_plugin_sli_is_refused(tmp_path: Path) -> None:
    start, end = SLOTH.index("      events:"), SLOTH.index("    alerting:")
    text = SLOTH[:start] + "      plugin:\n          id: my_plugin\n" + SLOTH[end:]
    result = run_cli("validate", str(write(tmp_path, text)))
    assert result.returncode == 2
    assert "slos[0].sli.plugin: Sloth plugins cannot be imported: plugin 'my_plugin'" in result.stderr


OPENSLO = textwrap.dedent("""\
    apiVersion: openslo/v1
    kind: SLI
    metadata: {name: search-good}
    spec:
      ratioMetric:
        counter: true
        good: {metricSource: {type: Prometheus, spec: {query: 'search_requests_total{code!~"5.."}'}}}
        total: {metricSource: {type: Prometheus, spec: {query: search_requests_total}}}
    ---
    apiVersion: openslo/v1
    kind: SLO
    metadata: {name: search-availability}
    spec:
      service: search
      indicatorRef: search-good
      timeWindow: [{duration: 28d, isRolling: true}]
      budgetingMethod: Occurrences
      objectives: [{displayName: good, target: 0.995}]
    ---
    apiVersion: openslo/v1
    kind: SLO
    metadata: {name: search-errors}
    spec:
      service: search
      indicator:
        metadata: {name: inline}
        spec:
          ratioMetric:
            counter: true
            bad: {metricSource: {type: Prometheus, spec: {query: 'search_requests_total{code=~"5.."}'}}}
            total: {metricSource: {type: Prometheus, spec: {query: search_requests_total}}}
      timeWindow: [{duration: 28d, isRolling: true}]
      budgetingMethod: Occurrences
      objectives: [{targetPercent: 99}]
    """)


def test_openslo_import(tmp_path: Path, promtool: str) -> None:
    [spec] = load_specs([write(tmp_path, OPENSLO)])
    assert spec.service == "search" and spec.period_seconds == 28 * 86400
    assert [(s.name, s.objective_percent) for s in spec.slos] == [("search-availability", 99.5),
                                                                    ("search-errors", 99.0)]
    out = tmp_path / "out"
    assert run_cli("compile", str(tmp_path / "spec.yaml"), "--out", str(out)).returncode == 0
    rules = (out / "prometheus" / "search.rules.yaml").read_text()
    assert 'sum(rate(search_requests_total{code!~"5.."}[1h]))' in rules
    result = subprocess.run([promtool, "test", "rules", "search.test.yaml"], cwd=out / "promtool-tests",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]


def test_openslo_counter_query_without_an_exact_rate_is_refused(tmp_path: Path) -> None:
    text = OPENSLO.replace("query: search_requests_total}", "query: 'max(search_requests_total)'}", 1)
    with pytest.raises(SpecErrors) as info:
        load_specs([write(tmp_path, text)])
    assert "a counter query must be a series selector or a sum of one" in str(info.value)


# Outputs proven by their consumers -------------------------------------------------------------------------

_PRESET_ALIASES = {"vllm": ("ttft", "e2e", "queue"), "sglang": ("ttft", "e2e"), "tgi": ("e2e", "queue"),
                   "triton": ("ttft",)}


@st.composite
def _specs(draw: st.DrawFn) -> str:
    from forge_slo.spec.presets import PRESETS

    preset = draw(st.sampled_from(sorted(_PRESET_ALIASES)))
    slos = []
    for i in range(draw(st.integers(1, 3))):
        digits = draw(st.integers(0, 6))
        objective = round(draw(st.floats(95.0, 100 - 10 ** -digits, allow_nan=False)), digits)
        if draw(st.booleans()):
            alias = draw(st.sampled_from(_PRESET_ALIASES[preset]))
            histogram = PRESETS[preset].histograms[alias]
            bound = draw(st.sampled_from(histogram.buckets)) * histogram.unit_seconds
            sli = f"{{latency: {{metric: {alias}, threshold: {bound!r}}}}}"
        else:
            sli = "{availability: {}}"
        slos.append(f"  - {{name: s{i}, objective: {objective!r}, sli: {sli}}}")
    period = draw(st.sampled_from(["7d", "28d", "30d"]))
    group_by = draw(st.sampled_from(["", "group_by: [model_name]\n"])) if preset != "tgi" else ""
    return (f"apiVersion: forge-slo/v1\nkind: ServiceSLO\nservice: gen\npreset: {preset}\nperiod: {period}\n"
            f"{group_by}slos:\n" + "\n".join(slos) + "\n")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_specs())
def test_any_valid_spec_compiles_to_rules_promtool_loads_and_tests_that_pass(text: str, tmp_path: Path,
                                                                            promtool: str) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    spec = write(folder, text)
    result = run_cli("compile", str(spec), "--out", str(folder / "out"))
    assert result.returncode == 0, f"{text}\n{result.stderr}"
    check = subprocess.run([promtool, "check", "rules", str(folder / "out/prometheus/gen.rules.yaml")],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, f"{text}\n{check.stdout}{check.stderr}"
    tests = subprocess.run([promtool, "test", "rules", "gen.test.yaml"], cwd=folder / "out/promtool-tests",
                           capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, f"{text}\n{tests.stdout[-2000:]}"


@pytest.mark.parametrize("objective, accepted", [("99.999999", True), ("99.9999999", False),
                                                 ("99.99999999999999", False)])
def test_objectives_beyond_what_the_rules_compute_exactly_are_refused(tmp_path: Path, objective: str,
                                                                      accepted: bool) -> None:
    spec = write(tmp_path, GOOD.replace("objective: 99.9\n", f"objective: {objective}\n"))
    result = run_cli("validate", str(spec))
    if accepted:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 2
        assert "slos[2].objective:" in result.stderr and "smallest forge-slo computes exactly" in result.stderr
