"""Grafana dashboards: schema-valid, lint-clean, every query valid PromQL, deterministic, and showing what
the spec defines."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from forge_slo import conventions as cv
from forge_slo.compile.artifact import Artifact
from forge_slo.compile.dashboards import (
    OVERVIEW_UID,
    dashboard_uid,
    serialise,
)
from forge_slo.compile.producer import CompileOptions
from forge_slo.promql import parse_error
from forge_slo.spec import ServiceSpec, load_specs
from tests.dashboard_lint import lint_dashboard, lint_query, panel_queries


def _dashboard_artifacts(specs: list[ServiceSpec]) -> list[Artifact]:
    from forge_slo.compile import dashboards

    return dashboards.PRODUCER.artifacts(specs, CompileOptions())[0]


REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "tests/data/grafana/dashboard.jsonschema.json"  # vendored; see its README
SPEC_DIR = REPO_ROOT / "slo_specs"

INLINE_SPECS: dict[str, str] = {
    "vllm-grouped": """
apiVersion: forge-slo/v1
kind: ServiceSLO
service: chat
preset: vllm
selector: {namespace: prod}
group_by: [model_name]
labels: {team: inference}
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
""",
    "sglang": """
apiVersion: forge-slo/v1
kind: ServiceSLO
service: sgl.batch
preset: sglang
period: 28d
slos:
  - name: ttft
    objective: 95
    sli: {latency: {metric: ttft, threshold: 2}}
  - name: availability
    objective: 99.5
    sli: {availability: {}}
""",
    "custom": """
apiVersion: forge-slo/v1
kind: ServiceSLO
service: embedder
preset: custom
selector: {job: embed}
metrics:
  latency: {metric: embed_request_duration_milliseconds, buckets: [50, 100, 250, 1000], unit_seconds: 0.001}
alerting:
  page: {disabled: true}
slos:
  - name: latency
    objective: 99
    sli: {latency: {metric: latency, threshold: 0.25}}
  - name: success
    objective: 99.9
    sli:
      ratio:
        good: sum(rate(embed_requests_total{job="embed",code="200"}[{{window}}]))
        total: sum(rate(embed_requests_total{job="embed"}[{{window}}]))
""",
    "tgi": """
apiVersion: forge-slo/v1
kind: ServiceSLO
service: tgi-chat
preset: tgi
slos:
  - name: availability
    objective: 99
    sli: {availability: {}}
""",
    "triton": """
apiVersion: forge-slo/v1
kind: ServiceSLO
service: vision
preset: triton
group_by: [model]
slos:
  - name: ttft
    objective: 99
    sli: {latency: {metric: ttft, threshold: 0.5}}
""",
}

REPO_SPECS = sorted(p for p in SPEC_DIR.glob("*.y*ml")) if SPEC_DIR.is_dir() else []
# Each spec alone, then every spec together (one overview over all of them).
CASES = [f"inline:{name}" for name in INLINE_SPECS] + [f"repo:{p.name}" for p in REPO_SPECS] + ["all:"]


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    if not path.is_file():
        pytest.fail(f"Grafana's dashboard JSON schema is missing: looked for {path} (vendored "
                    "in tests/data/grafana); the dashboards cannot be validated without it")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(load_schema())


def specs_for(case: str, tmp_path: Path) -> list[ServiceSpec]:
    kind, name = case.split(":", 1)
    if kind == "all":
        repo = load_specs(REPO_SPECS) if REPO_SPECS else []
        taken = {s.service for s in repo}
        return [*repo, *(s for s in all_inline_specs(tmp_path) if s.service not in taken)]
    if kind == "repo":
        return load_specs([SPEC_DIR / name])
    path = tmp_path / f"{name}.yaml"
    path.write_text(INLINE_SPECS[name], encoding="utf-8")
    return load_specs([path])


def all_inline_specs(tmp_path: Path) -> list[ServiceSpec]:
    paths = []
    for name, text in INLINE_SPECS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return load_specs(paths)


def dashboards(specs: list[ServiceSpec]) -> dict[str, dict[str, Any]]:
    return {a.path: json.loads(a.content) for a in _dashboard_artifacts(specs)}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p["targets"]]


def by_title(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    matches = [p for p in dashboard["panels"] if p.get("title") == title]
    assert len(matches) == 1, f"expected one panel titled {title!r}, got {len(matches)}"
    return matches[0]


# Every dashboard, every spec -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_dashboards_validate_against_grafana_schema(case: str, tmp_path: Path,
                                                    validator: jsonschema.Draft7Validator) -> None:
    for path, dashboard in dashboards(specs_for(case, tmp_path)).items():
        errors = [f"{e.json_path}: {e.message[:300]}" for e in validator.iter_errors(dashboard)]
        assert not errors, f"{path} does not match Grafana's dashboard schema:\n" + "\n".join(errors)


@pytest.mark.parametrize("case", CASES)
def test_dashboards_pass_the_linter(case: str, tmp_path: Path) -> None:
    for path, dashboard in dashboards(specs_for(case, tmp_path)).items():
        problems = lint_dashboard(dashboard)
        assert not problems, f"{path}:\n" + "\n".join(map(str, problems))


@pytest.mark.parametrize("case", CASES)
def test_every_panel_query_parses_as_promql(case: str, tmp_path: Path) -> None:
    for path, dashboard in dashboards(specs_for(case, tmp_path)).items():
        queries = panel_queries(dashboard)
        assert queries, f"{path} has no queries"
        for title, expr in queries:
            assert "$" not in expr, f"{path} {title!r}: macro or variable left in {expr}"
            assert parse_error(expr) is None, f"{path} {title!r}: {expr}: {parse_error(expr)}"


@pytest.mark.parametrize("case", CASES)
def test_panels_have_unique_ids_and_non_overlapping_positions(case: str, tmp_path: Path) -> None:
    for path, dashboard in dashboards(specs_for(case, tmp_path)).items():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path
        cells: set[tuple[int, int]] = set()
        for p in dashboard["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, (path, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{path}: {p['title']!r} overlaps another panel"
                    cells.add((x, y))


def test_compile_writes_one_dashboard_per_service_and_an_overview(tmp_path: Path) -> None:
    specs = all_inline_specs(tmp_path)
    paths = [a.path for a in _dashboard_artifacts(specs)]
    assert sorted(paths) == sorted([f"grafana/{s.service}.json" for s in specs] + ["grafana/overview.json"])


def test_output_is_deterministic_sorted_json(tmp_path: Path) -> None:
    specs = all_inline_specs(tmp_path)
    first = _dashboard_artifacts(specs)
    second = _dashboard_artifacts(list(reversed(specs)))
    assert [(a.path, a.content) for a in first] == [(a.path, a.content) for a in second]
    for artifact in first:
        parsed = json.loads(artifact.content)
        # Re-serialising the parsed document gives the same bytes: keys sorted, layout fixed.
        assert serialise(parsed) == artifact.content
        assert list(parsed) == sorted(parsed)


def test_schema_version_is_recent(tmp_path: Path) -> None:
    for dashboard in dashboards(all_inline_specs(tmp_path)).values():
        assert dashboard["schemaVersion"] >= 39


def test_uids_are_stable_short_and_distinct(tmp_path: Path) -> None:
    specs = all_inline_specs(tmp_path)
    docs = dashboards(specs)
    uids = [d["uid"] for d in docs.values()]
    assert len(uids) == len(set(uids))
    assert all(1 <= len(uid) <= 40 for uid in uids)
    assert docs["grafana/chat.json"]["uid"] == dashboard_uid("chat") == "forge-slo-7ecde348ff9c"
    assert docs["grafana/overview.json"]["uid"] == OVERVIEW_UID


# What a service dashboard shows -----------------------------------------------------------------------------


@pytest.fixture
def chat(tmp_path: Path) -> dict[str, Any]:
    return dashboards(specs_for("inline:vllm-grouped", tmp_path))["grafana/chat.json"]


def test_service_dashboard_has_datasource_and_group_by_variables(chat: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in chat["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    model = variables["model_name"]
    assert model["type"] == "query" and model["includeAll"] and model["multi"]
    assert "label_values(" in model["query"] and 'forge_slo_service="chat"' in model["query"]


def test_every_query_applies_selector_and_group_variables(chat: dict[str, Any]) -> None:
    for p in panels(chat):
        for t in p["targets"]:
            expr = t["expr"]
            if "forge_slo_service=" in expr:
                continue  # recorded series: selected by service and SLO
            assert 'namespace="prod"' in expr, (p["title"], expr)
            if "http_requests_total" not in expr:  # vLLM's HTTP counter has no model_name
                assert 'model_name=~"$model_name"' in expr, (p["title"], expr)
    sli = by_title(chat, "ttft: SLI against objective")["targets"][0]["expr"]
    assert cv.error_ratio(300) in sli and 'model_name=~"$model_name|"' in sli


def test_each_slo_has_a_row_with_its_panels(chat: dict[str, Any]) -> None:
    rows = [p["title"] for p in chat["panels"] if p["type"] == "row"]
    assert [r.split(":")[0] for r in rows[:4]] == ["SLO ttft", "SLO tpot", "SLO availability",
                                                    "SLO gateway-errors"]
    assert rows[4:] == ["Traffic", "Errors", "Saturation"]
    for slo in ("ttft", "tpot", "availability", "gateway-errors"):
        for suffix in ("SLI against objective", "error budget remaining", "burn rate per alert window",
                       "error budget burn-down over 30d", "alerts firing"):
            by_title(chat, f"{slo}: {suffix}")


def test_burn_rate_panel_draws_page_and_ticket_factors(chat: dict[str, Any]) -> None:
    panel = by_title(chat, "availability: burn rate per alert window")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert {(s["value"], s["color"]) for s in steps if s["value"] is not None} == {
        (14.4, "red"), (6, "red"), (3, "orange"), (1, "orange")}
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
    windows = {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
    assert {t["legendFormat"].split()[0] for t in panel["targets"]} == windows
    for t in panel["targets"]:
        assert t["expr"].startswith("forge_slo:sli_error:ratio_rate") and t["expr"].endswith(" / 0.001")


def test_budget_burn_down_spans_the_period(chat: dict[str, Any]) -> None:
    panel = by_title(chat, "ttft: error budget burn-down over 30d")
    assert panel["timeFrom"] == "30d"
    assert panel["targets"][0]["expr"].startswith(cv.ERROR_BUDGET_REMAINING + "{")


def test_alerts_panel_reads_firing_alerts_of_the_slo(chat: dict[str, Any]) -> None:
    panel = by_title(chat, "tpot: alerts firing")
    for t in panel["targets"]:
        assert 'ALERTS{alertstate="firing",forge_slo_name="tpot",forge_slo_service="chat"' in t["expr"]


def test_latency_slo_shows_quantiles_and_share_under_threshold(chat: dict[str, Any]) -> None:
    quantiles = by_title(chat, "ttft: ttft percentiles")
    assert [t["legendFormat"].split()[0] for t in quantiles["targets"]] == ["p50", "p90", "p99"]
    for t in quantiles["targets"]:
        assert t["expr"].startswith("histogram_quantile(0.")
        assert "rate(vllm:time_to_first_token_seconds_bucket{" in t["expr"]
        assert "[$__rate_interval]" in t["expr"]
    assert quantiles["fieldConfig"]["defaults"]["unit"] == "s"
    share = by_title(chat, "ttft: share of events under 0.5s")["targets"][0]["expr"]
    assert 'le="0.5"' in share and "vllm:time_to_first_token_seconds_count" in share
    titles = [p["title"] for p in panels(chat)]
    assert not [t for t in titles if t.startswith("availability: ") and "percentiles" in t]


def test_vllm_traffic_errors_and_saturation_panels(chat: dict[str, Any]) -> None:
    text = "\n".join(exprs(chat))
    for metric in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
                   "http_requests_total", "vllm:num_requests_running", "vllm:num_requests_waiting",
                   "vllm:kv_cache_usage_perc"):
        assert metric in text, metric
    assert "sum by (finished_reason, model_name)" in text and "sum by (status)" in text


def test_every_panel_has_unit_title_and_description(chat: dict[str, Any]) -> None:
    for p in panels(chat):
        assert p["fieldConfig"]["defaults"]["unit"], p["title"]
        assert p["title"] and len(p["description"]) > 40, p["title"]


def test_presets_without_server_metrics_omit_those_panels(tmp_path: Path) -> None:
    custom = dashboards(specs_for("inline:custom", tmp_path))["grafana/embedder.json"]
    rows = [p["title"] for p in custom["panels"] if p["type"] == "row"]
    assert "Saturation" not in rows and "Tokens per second" not in [p["title"] for p in custom["panels"]]
    # The custom histogram is in milliseconds: quantiles are scaled to seconds.
    quantiles = by_title(custom, "latency: latency percentiles")["targets"]
    assert all(t["expr"].endswith(" * 0.001") for t in quantiles)
    # Page alerts are disabled: only the ticket factors are drawn.
    burn = by_title(custom, "latency: burn rate per alert window")
    steps = burn["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert {s["color"] for s in steps if s["value"] is not None} == {"orange"}

    sglang = dashboards(specs_for("inline:sglang", tmp_path))["grafana/sgl.batch.json"]
    text = "\n".join(exprs(sglang))
    for metric in ("sglang:prompt_tokens_total", "sglang:num_running_reqs", "sglang:num_queue_reqs",
                   "sglang:token_usage"):
        assert metric in text
    assert "ttft: error budget burn-down over 28d" in [p["title"] for p in sglang["panels"]]

    tgi = dashboards(specs_for("inline:tgi", tmp_path))["grafana/tgi-chat.json"]
    assert "tgi_queue_size" in "\n".join(exprs(tgi)) and "tgi_batch_current_size" in "\n".join(exprs(tgi))


# Overview ---------------------------------------------------------------------------------------------------


def test_overview_lists_every_slo_and_links_to_service_dashboards(tmp_path: Path) -> None:
    specs = all_inline_specs(tmp_path)
    overview = dashboards(specs)["grafana/overview.json"]
    (table,) = panels(overview)
    assert table["type"] == "table"
    organize = table["transformations"][1]["options"]
    order = organize["indexByName"]
    columns = [organize["renameByName"][f] for f in sorted(order, key=order.get)]
    assert columns == ["Service", "SLO", "Objective (%)", "SLI over period (%)", "Budget remaining (%)",
                       "Period burn rate (x)", "Alerts firing", "Dashboard"]
    for t in table["targets"]:
        assert t["instant"] and t["format"] == "table"
        for spec in specs:
            assert f'"/d/{dashboard_uid(spec.service)}"' in t["expr"]
    assert 'ALERTS{alertstate="firing"' in table["targets"][4]["expr"]
    # Service names are regex-escaped where they are matched.
    assert r'"sgl\\.batch"' in table["targets"][0]["expr"]
    links = {link["title"]: link["url"] for link in overview["links"]}
    assert links == {s.service: f"/d/{dashboard_uid(s.service)}" for s in specs}
    assert "${__data.fields.dashboard}" in table["fieldConfig"]["defaults"]["links"][0]["url"]
    coloured = {o["matcher"]["options"]["names"][0] for o in table["fieldConfig"]["overrides"]}
    assert coloured == {"Budget remaining (%)", "Period burn rate (x)", "Alerts firing"}


# The linter can fail ----------------------------------------------------------------------------------------


def test_linter_reports_a_broken_dashboard(chat: dict[str, Any]) -> None:
    broken = copy.deepcopy(chat)
    broken["templating"]["list"] = [v for v in broken["templating"]["list"] if v["type"] != "datasource"]
    first, second, third = panels(broken)[:3]
    first["targets"][0]["expr"] = "sum(vllm:prompt_tokens_total)"
    first["targets"][1]["expr"] = "rate(vllm:prompt_tokens_total[5m])"
    first["targets"][1]["datasource"] = {"type": "prometheus", "uid": "prometheus-prod"}
    second["fieldConfig"]["defaults"].pop("unit")
    second["description"] = ""
    second["datasource"] = {"type": "prometheus", "uid": "abc"}
    third["targets"] = []
    rules = {p.rule for p in lint_dashboard(broken)}
    assert rules >= {"template-datasource", "target-counter-agg", "target-rate-interval", "target-datasource",
                     "panel-units", "panel-title-description", "panel-datasource", "panel-no-targets"}


@pytest.mark.parametrize(("expr", "rule"), [
    ("rate(x_total[5m])", "target-rate-interval"),
    ("increase(x_total[$__interval])", "target-rate-interval"),
    ("sum(x_total)", "target-counter-agg"),
    ("sum_over_time(x_bucket[$__rate_interval])", "target-counter-agg"),
    ("x_sum / x_count", "target-counter-agg"),
    ("sum(rate(x_total[$__rate_interval]", "target-promql"),
])
def test_linter_rejects_bad_queries(expr: str, rule: str) -> None:
    assert rule in {p.rule for p in lint_query(expr, "q")}


@pytest.mark.parametrize("expr", [
    "sum by (le) (rate(x_bucket[$__rate_interval]))",
    "irate(x_total[$__rate_interval])",
    "histogram_quantile(0.9, sum by (le) (rate(x_bucket{a=~\"$a\"}[$__rate_interval])))",
    "vllm:num_requests_waiting",
])
def test_linter_accepts_good_queries(expr: str) -> None:
    assert lint_query(expr, "q", ["a"]) == []


def test_panel_queries_substitute_grafana_macros() -> None:
    doc = {
        "templating": {"list": [{"name": "datasource", "type": "datasource"},
                                {"name": "model", "type": "query"}]},
        "panels": [
            {"type": "row", "title": "r", "panels": []},
            {"type": "timeseries", "title": "p", "targets": [
                {"expr": 'sum(rate(a_total{m=~"$model",n=~"${model:regex}"}[$__rate_interval])) '
                         "/ sum(increase(b_total[$__range])) * count_over_time(up[$__interval])"}]},
        ],
    }
    assert panel_queries(doc) == [
        ("p", 'sum(rate(a_total{m=~".*",n=~".*"}[1m])) / sum(increase(b_total[1h]))'
              " * count_over_time(up[1m])")]


def test_missing_schema_fails_with_the_path_it_looked_at(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "dashboard.jsonschema.json"
    with pytest.raises(pytest.fail.Exception, match="looked for .*nowhere"):
        load_schema(missing)
