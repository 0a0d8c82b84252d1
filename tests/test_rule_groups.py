"""Rule groups that fit the large engines: at most 20 rules by default (Mimir's limit), a configurable maximum,
optional interval/limit/query_offset, Thanos' partial_response_strategy and Mimir's namespaces per service."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from forge_slo.compile.producer import RuleGroups
from forge_slo.compile.rules import rules_document
from forge_slo.spec import load_specs
from tests.conftest import EXAMPLES, run_cli
from tests.test_spec import GOOD, write

ONE_SLO = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: chat
preset: vllm
slos:
  - name: ttft
    objective: 99
    sli: {latency: {metric: ttft, threshold: 0.5}}
"""


def _rules(doc: dict) -> list[dict]:
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_groups_hold_at_most_twenty_rules_in_the_original_order() -> None:
    for spec in load_specs([EXAMPLES]):
        split, whole = rules_document(spec), rules_document(spec, RuleGroups(max_rules=0))
        assert max(len(g["rules"]) for g in whole["groups"]) > 20  # each SLO has more than Mimir takes
        assert all(len(g["rules"]) <= 20 for g in split["groups"])
        assert _rules(split) == _rules(whole)
        names = [g["name"] for g in split["groups"]]
        assert len(set(names)) == len(names)
        assert len(whole["groups"]) == len(spec.slos) + (spec.gpu is not None)


def test_group_settings_reach_every_group_and_promtool_accepts_them(tmp_path: Path, promtool: str) -> None:
    spec = write(tmp_path, ONE_SLO)
    out = tmp_path / "out"
    result = run_cli("compile", str(spec), "--out", str(out), "--max-rules-per-group", "7", "--group-interval", "30s",
                     "--group-limit", "500")
    assert result.returncode == 0, result.stderr
    path = out / "prometheus" / "chat.rules.yaml"
    groups = yaml.safe_load(path.read_text())["groups"]
    assert len(groups) > 3 and all(len(g["rules"]) <= 7 and g["interval"] == "30s" and g["limit"] == 500
                                   for g in groups)
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # Alerts read recordings from other groups now; the generated tests still see every alert fire.
    tests = subprocess.run([promtool, "test", "rules", "chat.test.yaml"], cwd=out / "promtool-tests",
                           capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout[-2000:]
    offset = run_cli("compile", str(spec), "--out", str(tmp_path / "o2"), "--group-query-offset", "1m")
    assert offset.returncode == 0
    assert {g["query_offset"] for g in yaml.safe_load((tmp_path / "o2/prometheus/chat.rules.yaml").read_text())[
        "groups"]} == {"1m"}
    bad = run_cli("compile", str(spec), "--out", str(tmp_path / "o3"), "--max-rules-per-group", "-1")
    assert bad.returncode == 2 and "not a whole number" in bad.stderr and not (tmp_path / "o3").exists()


def test_thanos_and_mimir_layouts(tmp_path: Path) -> None:
    spec = write(tmp_path, GOOD)
    plain = yaml.safe_load(rules_path(tmp_path, spec, "prometheus").read_text())
    thanos = yaml.safe_load(rules_path(tmp_path, spec, "thanos").read_text())
    mimir = yaml.safe_load(rules_path(tmp_path, spec, "mimir").read_text())
    assert [{k: v for k, v in g.items() if k != "partial_response_strategy"} for g in thanos["groups"]] == \
        plain["groups"]
    assert {g["partial_response_strategy"] for g in thanos["groups"]} == {"abort"}
    assert mimir == {"namespace": "chat", "groups": plain["groups"]}


def rules_path(tmp_path: Path, spec: Path, fmt: str) -> Path:
    out = tmp_path / fmt
    result = run_cli("compile", str(spec), "--out", str(out), "--format", fmt)
    assert result.returncode == 0, result.stderr
    if fmt != "prometheus":
        assert f"promtool tests are not written for --format {fmt}" in result.stderr
    return out / "prometheus" / "chat.rules.yaml"
