"""Go templates in compiled files: forge-slo's check agrees with Prometheus' own parser, and literal text
renders as itself. promtool is the judge in every test here."""

from __future__ import annotations

import json
import random
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from forge_slo import promql
from forge_slo.gotemplate import literal, template_error
from tests.conftest import run_cli, run_promtool_tests
from tests.prom_fixture import prometheus_available, start_prometheus
from tests.test_spec import GOOD, write

# Pieces of annotation templates, valid and broken, that random cases are made of.
ATOMS = ['{{', '}}', ' ', '{{ ', ' }}', '{{- ', ' -}}', 'if ', 'else ', 'end ', 'range ', 'with ', '$value ',
         '$labels.job ', '$x ', '$x := ', '$i, $e := ', '. ', '.Labels ', '.Labels.job', 'humanize ',
         'printf "%.2f" ', 'bogus ', '"str" ', '`raw` ', '(', ')', ' | ', '1.5 ', '-3 ', '0x1F ', '1e3 ', 'eq ',
         'gt $value 1.0 ', 'break ', 'continue ', 'nil ', 'true ', ', ', 'template "t" ', 'define "t" ',
         'block "b" . ', '/* c */', 'text ', '\n', "'a' ", '"a\\nb" ', '"\\q" ', 'len ', 'index $labels "job" ',
         'and ', 'not ', '= ', ':', '$ ', 'toUpper ', 'query "up" ', 'first ', '{{/* c */}}', 'now ',
         'with $labels ']


def _random_template(rng: random.Random) -> str:
    def piece() -> str:
        return "".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 8)))

    body = piece()
    return rng.choice([
        piece(), f"{{{{ {body} }}}}", f"a {{{{ {body} }}}} b {{{{ {piece()} }}}}",
        f"{{{{ {rng.choice(['if', 'range', 'with'])} {body} }}}}x{{{{ end }}}}",
        f"{{{{ if {body} }}}}a{{{{ else }}}}b{{{{ end }}}}",
        f"{{{{ range $k, $v := $labels }}}}{{{{ {body} }}}}{{{{ end }}}}",
    ])


def _promtool_rejects(promtool: str, templates: list[str], folder: Path) -> list[str | None]:
    """promtool's complaint about each template used as an alert annotation (None when it loads)."""
    files = []
    for i, text in enumerate(templates):
        path = folder / f"case{i}.rules.yaml"
        path.write_text("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: vector(1)\n    annotations:\n"
                        f"      s: {json.dumps(text)}\n", encoding="utf-8")
        files.append(path)
    out = subprocess.run([promtool, "check", "rules", *map(str, files)], capture_output=True, text=True, timeout=120)
    complaints: dict[str, str] = {}
    for match in re.finditer(r"^(\S+case\d+\.rules\.yaml): (.*)$", out.stdout + out.stderr, re.MULTILINE):
        complaints[match.group(1)] = match.group(2)
    return [complaints.get(str(path)) for path in files]


def test_the_check_agrees_with_promtool_on_random_templates(promtool: str, tmp_path: Path) -> None:
    rng = random.Random(20261129)
    templates = [_random_template(rng) for _ in range(600)]
    verdicts = _promtool_rejects(promtool, templates, tmp_path)
    assert 100 < sum(v is not None for v in verdicts) < 550  # the cases mix valid and broken templates
    disagreements = [(t, v, template_error(t)) for t, v in zip(templates, verdicts, strict=True)
                     if (v is None) != (template_error(t) is None)]
    assert disagreements == [], disagreements[:5]


KNOWN = {
    "{{ if }}": "missing value for if",
    "{{ $value | humanize }}": None,
    "{{ if gt $value 2.0 }}high{{ else }}low{{ end }}": None,
    "{{ range $k, $v := $labels }}{{ $k }}={{ $v }} {{ end }}": None,
    "{{ bogus $value }}": 'function "bogus" not defined',
    "{{ $undeclared }}": "undefined variable",
    "{{ end }}": "unexpected {{end}}",
    "{{ if true }}unclosed": "unexpected EOF",
    "{{ now }}": 'function "now" not defined',  # later Prometheus releases only: refused on purpose
    "{{ .Labels.job": "unclosed action",
    "plain text, } and }} are fine": None,
}


@pytest.mark.parametrize("text", list(KNOWN))
def test_known_templates(promtool: str, tmp_path: Path, text: str) -> None:
    expected = KNOWN[text]
    ours = template_error(text)
    (theirs,) = _promtool_rejects(promtool, [text], tmp_path)
    assert (ours is None) == (theirs is None) == (expected is None), (ours, theirs)
    if expected is not None:
        assert ours is not None and expected in ours


def test_literal_text_renders_as_itself(promtool: str, tmp_path: Path) -> None:
    texts = ["{{ $value }}", "{{ if }}", "a {{ b }} c }} {{", "{{`{{`}}", '"{{"', "{{- x -}}", "`{{`"]
    rules = {"groups": [{"name": "g", "rules": [
        {"alert": f"A{i}", "expr": "vector(1)", "annotations": {"text": literal(text)}}
        for i, text in enumerate(texts)]}]}
    tests = [{"interval": "1m", "input_series": [], "alert_rule_test": [
        {"eval_time": "1m", "alertname": f"A{i}", "exp_alerts": [{"exp_annotations": {"text": text}}]}
        for i, text in enumerate(texts)]}]
    result = run_promtool_tests(promtool, rules, tests, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_annotation_template_is_refused_at_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("page: {labels: {severity: critical}}",
                        'page: {labels: {severity: critical}, annotations: {runbook: "{{ if }}see the wiki"}}')
    assert text != GOOD
    spec = write(tmp_path, text)
    result = run_cli("compile", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "alerting.page.annotations.runbook: not a template Prometheus can load (missing value for if)" \
        in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not prometheus_available(), reason="Prometheus is not installed")
def test_flagger_queries_render_the_specs_values_as_written(tmp_path: Path) -> None:
    """Flagger renders a MetricTemplate's query as a Go template: a selector value holding template braces
    must reach PromQL unchanged. Prometheus' template engine (the same Go text/template) renders it here."""
    hostile = 'x{{ interval }}"y{{`'
    spec = write(tmp_path, GOOD.replace("selector: {namespace: prod}",
                                        f"selector: {{namespace: prod, tier: {json.dumps(hostile)}}}"))
    out = tmp_path / "out"
    assert run_cli("compile", str(spec), "--out", str(out)).returncode == 0
    docs = list(yaml.safe_load_all((out / "rollouts" / "chat.metrictemplate.yaml").read_text()))
    # Flagger's own variables are functions in its template engine; put in what Flagger would.
    queries = [d["spec"]["query"].replace("{{ interval }}", "1m").replace("{{ target }}", "app") for d in docs]
    rules = tmp_path / "render.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "render", "rules": [
        {"alert": f"Q{i}", "expr": "vector(1)", "annotations": {"query": q}} for i, q in enumerate(queries)]}]}))
    prom = start_prometheus(tmp_path, [], rule_files=[rules])
    try:
        alerts = prom.wait_for("ALERTS", predicate=lambda r: len(r) == len(queries))
        assert alerts
        rendered = {a["labels"]["alertname"]: a["annotations"]["query"] for a in prom.api("alerts")["alerts"]}
    finally:
        prom.stop()
    assert len(rendered) == len(queries) >= 3
    for query in rendered.values():
        assert promql.parse_error(query) is None, query
        assert f"tier={promql.quote(hostile)}" in query, query
