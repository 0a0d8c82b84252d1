"""``forge-slo export --format openslo``: OpenSLO v1 documents that import back into the same rules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from forge_slo.compile.rules import rules_document
from forge_slo.spec import load_specs
from tests.conftest import EXAMPLES, run_cli
from tests.test_importers import SLOTH
from tests.test_spec import write


def test_exported_openslo_imports_back_to_the_same_rules(tmp_path: Path) -> None:
    sloth = write(tmp_path, SLOTH.replace('service: "checkout"', 'service: "checkout-sloth"'), "sloth.yaml")
    out = tmp_path / "openslo"
    result = run_cli("export", "--format", "openslo", str(EXAMPLES), str(sloth), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "the gpu section is not exported" in result.stderr  # said, not silently dropped
    originals = {spec.service: spec for spec in load_specs([EXAMPLES, sloth])}
    files = sorted(out.glob("*.openslo.yaml"))
    assert [f.name for f in files] == sorted(f"{s}.openslo.yaml" for s in originals)
    for path in files:  # plain OpenSLO v1: a Service, then one SLO per SLO
        docs = list(yaml.safe_load_all(path.read_text()))
        assert {d["apiVersion"] for d in docs} == {"openslo/v1"} and docs[0]["kind"] == "Service"
        assert {d["kind"] for d in docs[1:]} == {"SLO"}
    imported = {spec.service: spec for spec in load_specs(files)}
    assert imported.keys() == originals.keys()
    for service, original in originals.items():
        assert rules_document(imported[service]) == rules_document(replace(original, gpu=None)), service
        assert [s.objective_percent for s in imported[service].slos] == [s.objective_percent for s in original.slos]


def test_export_writes_to_standard_output(tmp_path: Path) -> None:
    result = run_cli("export", str(write(tmp_path, SLOTH)))
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [("Service", "checkout"), ("SLO", "availability"),
                                                                  ("SLO", "latency")]
    ticketless = docs[1]["spec"]["alertPolicies"]
    assert [p["metadata"]["name"] for p in ticketless] == ["availability-page"]  # its ticket is disabled
