"""Each preset counts every request once, as its server counts it: promtool evaluates the compiled
availability SLI over series shaped as the server emits them (echoes included) and the ratio is exactly
the documented one, under every policy for shed and cancelled requests."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from forge_slo import conventions as cv
from forge_slo.compile.promtool_tests import outcome_series
from forge_slo.compile.rules import rules_document
from forge_slo.spec import load_specs
from forge_slo.spec.model import AvailabilitySLI
from forge_slo.spec.presets import PRESETS, QUANTITIES, AvailabilityPolicy
from tests.conftest import run_cli, run_promtool_tests

# Requests per minute of each outcome: a known number of failed, shed, cancelled and invalid requests.
TRAFFIC = {"served": 900.0, "server_error": 30.0, "shed": 20.0, "cancelled": 40.0, "client_error": 10.0}
POLICIES = {"default": "{}", "shedding ignored": "{load_shedding: ignore}",
            "cancellations counted": "{cancellations: count}"}


def expected_ratio(preset: str, policy: str) -> float | None:
    """The documented error ratio: failed requests (server errors; shed and cancelled ones as the policy says
    and as the server can tell them apart) over those plus the served ones; invalid requests never count.
    None where the server cannot honour the policy."""
    outcomes = PRESETS[preset].outcomes
    assert outcomes is not None
    rule = AvailabilityPolicy(count_shed=policy != "shedding ignored",
                              count_cancelled=policy == "cancellations counted")
    if outcomes.unsupported(rule):
        return None
    bad = sum(n for outcome, n in TRAFFIC.items() if outcomes.counts_as(outcome, rule) == "error")
    good = sum(n for outcome, n in TRAFFIC.items() if outcomes.counts_as(outcome, rule) == "good")
    return bad / (good + bad)


def spec_text(preset: str, policy: str, group_by: bool) -> str:
    group = "group_by: [model_name]\n" if group_by and PRESETS[preset].model_label == "model_name" else ""
    return (f"apiVersion: forge-slo/v1\nkind: ServiceSLO\nservice: {preset}\npreset: {preset}\n{group}"
            f"selector: {{namespace: prod}}\nslos:\n  - name: availability\n    objective: 99\n"
            f"    sli: {{availability: {POLICIES[policy]}}}\n")


CASES = [(preset, policy, group) for preset in ("vllm", "sglang", "tgi", "triton") for policy in POLICIES
         for group in (False, True)]


@pytest.mark.parametrize("preset, policy, grouped", CASES)
def test_each_preset_counts_every_request_once(preset: str, policy: str, grouped: bool, tmp_path: Path,
                                               promtool: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(preset, policy, grouped))
    expected = expected_ratio(preset, policy)
    if expected is None:
        result = run_cli("validate", str(path))
        assert result.returncode == 2, result.stdout
        assert "cannot do this" in result.stderr and "Traceback" not in result.stderr
        return
    [spec] = load_specs([path])
    slo = spec.slos[0]
    assert isinstance(slo.sli, AvailabilitySLI)
    series = outcome_series(spec, slo.sli, TRAFFIC)
    # The server's own double counts are in the input: TGI's request counter, vLLM's 5xx for errors.
    metrics = {s.metric for s in series}
    if preset == "tgi":
        assert "tgi_request_count" in metrics
    if preset == "vllm":
        assert "http_requests_total" in metrics
    ratio = cv.error_ratio(spec.base_window_seconds)
    at = "30m"
    # One series per group (its labels show the grouping) whose ratio is the documented one, to
    # floating-point precision.
    tests = [{"interval": "1m", "input_series": [s.render(40) for s in series], "promql_expr_test": [
        {"expr": f"abs({ratio} / {expected!r} - 1) < bool 1e-9", "eval_time": at,
         "exp_samples": [{"labels": _labels(spec, ""), "value": 1}]},
    ]}]
    result = run_promtool_tests(promtool, rules_document(spec), tests, tmp_path)
    assert result.returncode == 0, f"expected {expected:.6f}\n{result.stdout[-3000:]}{result.stderr[-2000:]}"


def _labels(spec: object, name: str) -> str:
    from forge_slo.compile.promtool_tests import group_values
    from forge_slo.compile.rules import slo_labels

    slo = spec.slos[0]  # type: ignore[attr-defined]
    carried = {label for label in group_values(spec)
               if any(label not in term.lacks for term in slo.sli.counters.total)}
    labels = {**slo_labels(spec, slo), **{k: v for k, v in group_values(spec).items() if k in carried}}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def test_the_documented_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    """The table the README prints, from the same function the promtool test checks."""
    rows = []
    for preset in ("vllm", "sglang", "tgi", "triton"):
        cells = []
        for policy in POLICIES:
            ratio = expected_ratio(preset, policy)
            cells.append("refused" if ratio is None else f"{ratio:.4%}")
        rows.append((preset, *cells))
    # vLLM's shed 503s are among its 5xx: they always count, so "ignore" is refused.
    assert rows[0] == ("vllm", f"{50 / 950:.4%}", "refused", "refused")
    assert rows[2] == ("tgi", f"{50 / 950:.4%}", f"{30 / 930:.4%}", f"{90 / 990:.4%}")
    assert all(math.isfinite(float(c.rstrip("%"))) for r in rows for c in r[1:] if c != "refused")


def test_every_alias_means_one_quantity_across_presets() -> None:
    for preset in PRESETS.values():
        for alias, histogram in preset.histograms.items():
            if preset.name != "custom":
                assert alias in QUANTITIES, (preset.name, alias)
            if alias == "tpot":
                assert "request_time_per_output_token" in histogram.metric, (preset.name, histogram.metric)
            if alias == "itl":
                assert "inter_token_latency" in histogram.metric, (preset.name, histogram.metric)


@pytest.mark.parametrize("preset, alias, alternatives", [
    ("tgi", "ttft", "e2e, queue, time_per_token"), ("tgi", "tpot", "e2e, queue, time_per_token"),
    ("triton", "e2e", "ttft")])
def test_an_alias_the_server_lacks_is_refused_naming_what_it_has(tmp_path: Path, preset: str, alias: str,
                                                                 alternatives: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(f"apiVersion: forge-slo/v1\nkind: ServiceSLO\nservice: s\npreset: {preset}\nslos:\n"
                    f"  - {{name: x, objective: 99, sli: {{latency: {{metric: {alias}, threshold: 1}}}}}}\n")
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert f"spec.yaml:6: slos[0].sli.latency.metric: {PRESETS[preset].title} exports no histogram of " \
           f"{QUANTITIES[alias].title}" in result.stderr
    assert f"its latency histograms: {alternatives}" in result.stderr


def test_a_spec_may_give_the_buckets_its_server_was_started_with(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    base = "apiVersion: forge-slo/v1\nkind: ServiceSLO\nservice: s\npreset: vllm\n"
    slo = "slos:\n  - {name: ttft, objective: 99, sli: {latency: {metric: ttft, threshold: 0.3}}}\n"
    path.write_text(base + slo)
    refused = run_cli("validate", str(path))
    assert refused.returncode == 2 and "0.3s is not a bucket bound" in refused.stderr
    path.write_text(base + "buckets: {ttft: [0.1, 0.3, 1, 5]}\n" + slo)
    assert run_cli("validate", str(path)).returncode == 0
    out = tmp_path / "out"
    assert run_cli("compile", str(path), "--out", str(out)).returncode == 0
    rules = yaml.safe_load((out / "prometheus" / "s.rules.yaml").read_text())
    assert any('le=~"0.3"' in r.get("expr", "") or 'le="0.3"' in r.get("expr", "")
               for g in rules["groups"] for r in g["rules"])
    # vLLM keeps one list for ITL and TPOT: both overrides must agree; TGI fixes its buckets.
    path.write_text(base + "buckets: {itl: [0.05, 0.1], tpot: [0.05, 0.2]}\n" + slo)
    result = run_cli("validate", str(path))
    assert result.returncode == 2 and "shares its buckets with itl" in result.stderr
    path.write_text(base.replace("vllm", "tgi") + "buckets: {e2e: [1, 2]}\n"
                    + "slos:\n  - {name: e2e, objective: 99, sli: {latency: {metric: e2e, threshold: 1}}}\n")
    result = run_cli("validate", str(path))
    assert result.returncode == 2 and "does not let its operator change the bounds" in result.stderr


@pytest.mark.parametrize("objective", [50, 90, 97])
def test_every_objective_compiles_with_default_alerting_and_a_total_outage_pages(tmp_path: Path, promtool: str,
                                                                                 objective: float) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("apiVersion: forge-slo/v1\nkind: ServiceSLO\nservice: s\npreset: vllm\nslos:\n"
                    f"  - {{name: a, objective: {objective}, sli: {{availability: {{}}}}}}\n")
    out = tmp_path / "out"
    result = run_cli("compile", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    if objective < 93.1:  # 14.4x needs an error ratio above 100% once the budget is over 1/14.4
        assert "warning:" in result.stderr and "a total outage still pages" in result.stderr
    tests = subprocess_run([promtool, "test", "rules", "s.test.yaml"], out / "promtool-tests")
    assert tests.returncode == 0, tests.stdout[-3000:]
    doc = yaml.safe_load((out / "promtool-tests" / "s.test.yaml").read_text())
    assert any("just above" in t["name"] for t in doc["tests"])


def subprocess_run(argv: list[str], cwd: Path) -> object:
    import subprocess

    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, text, message", [
    ("empty.yaml", "", "holds no spec: the file is empty"),
    ("comments.yaml", "# nothing here yet\n---\n", "holds no spec: the file is empty"),
    ("sli-only.yaml", "apiVersion: openslo/v1\nkind: SLI\nmetadata: {name: x}\nspec:\n  ratioMetric:\n"
     "    good: {metricSource: {type: Prometheus, spec: {query: 'sum(rate(a[5m]))'}}}\n"
     "    total: {metricSource: {type: Prometheus, spec: {query: 'sum(rate(b[5m]))'}}}\n",
     "holds no service spec"),
])
def test_a_file_that_compiles_to_nothing_is_an_error(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    for command in (["validate", str(path)], ["compile", str(path), "--out", str(tmp_path / "out")]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{path}: {message}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
