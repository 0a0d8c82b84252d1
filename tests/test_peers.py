"""The peers' own example shapes (tests/data/peers, written afresh): which compile, promtool-clean and with their
objectives, and which are refused at which field. Prints the counts; ``pytest tests/test_peers.py -s``.

Done when: every Sloth example compiles except those with plugins (refused at the plugin field), and at least
90% of the Prometheus-backed OpenSLO SLO documents and of Pyrra's examples compile.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from forge_slo.compile.producer import CompileOptions
from forge_slo.compile.promtool_tests import PRODUCER as TESTS
from forge_slo.compile.rules import PRODUCER as RULES
from forge_slo.compile.rules import rules_document
from forge_slo.errors import SpecErrors
from forge_slo.spec import ServiceSpec, load_specs
from tests.conftest import REPO, run_cli

PEERS = REPO / "tests" / "data" / "peers"
# Fixtures whose generated promtool tests also run (each SLO's alerts fire above each factor and not below):
# one per importer and shape of alerting (per-SLO Sloth severities, none at all, OpenSLO burn-rate conditions,
# Pyrra grouping). All of them take some 90 s; these few, under 5.
PROVEN = {("sloth", "kubernetes-apiserver.yaml"), ("sloth", "no-alerts.yaml"), ("openslo", "gosdk-export-v1.yaml"),
          ("pyrra", "prometheus-http.yaml")}
EXPECTED: dict[str, dict[str, dict[str, Any]]] = yaml.safe_load((PEERS / "expected.yaml").read_text())


@dataclass
class Outcome:
    fmt: str
    fixture: str
    documents: int
    counted: bool
    compiled: bool
    folder: Path | None = None


def _fixtures() -> list[tuple[str, str, dict[str, Any]]]:
    return [(fmt, name, entry) for fmt, entries in EXPECTED.items() for name, entry in entries.items()]


def _run(fmt: str, name: str, entry: dict[str, Any], out: Path) -> Outcome:
    paths = [PEERS / fmt / name] + [PEERS / fmt / other for other in entry.get("with", [])]
    outcome = Outcome(fmt, name, entry["documents"], entry.get("counted", True), compiled=False)
    if "refused" in entry:
        with pytest.raises(SpecErrors) as info:
            load_specs(paths, native_histograms=entry.get("native_histograms", False))
        fields = [(e.file, e.field) for e in info.value.errors]
        assert (str(paths[0]), entry["refused"]) in fields, f"{fmt}/{name}: refused at {fields}"
        assert all(e.line is not None for e in info.value.errors), str(info.value)
        return outcome
    specs = load_specs(paths, native_histograms=entry.get("native_histograms", False))
    if fmt == "sloth":
        _sloth_alerting_intact(paths[0], specs)
    objectives = sorted(slo.objective_percent for spec in specs for slo in spec.slos)
    assert objectives == sorted(float(o) for o in entry["objectives"]), f"{fmt}/{name}: objectives {objectives}"
    folder = out / fmt / name.replace(".", "_")
    options = CompileOptions(folders={"prometheus": "prometheus", "promtool-tests": "promtool-tests"})
    for producer in (RULES, TESTS):
        for rel, text in producer.produce(specs, options).files.items():
            (folder / producer.folder).mkdir(parents=True, exist_ok=True)
            (folder / producer.folder / rel).write_text(text)
    outcome.compiled = True
    outcome.folder = folder
    return outcome


_SEVERITIES = {"page": ("page_alert", "pageAlert"), "ticket": ("ticket_alert", "ticketAlert")}


def _sloth_alerting_intact(path: Path, specs: list[ServiceSpec]) -> None:
    """Every alert a Sloth SLO asks for is compiled under its name with its labels and annotations as written;
    a disabled one is not."""
    by_service = {spec.service: spec for spec in specs}
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind", "PrometheusServiceLevel") != "PrometheusServiceLevel":
            continue
        body = doc.get("spec", doc)
        spec = by_service[body["service"]]
        alerts = [r for g in rules_document(spec)["groups"] for r in g["rules"] if "alert" in r]
        for slo in body["slos"]:
            alerting = slo.get("alerting", {})
            for severity, keys in _SEVERITIES.items():
                own = next((alerting[k] for k in keys if k in alerting), {})
                fired = [a for a in alerts if a["labels"]["forge_slo_name"] == slo["name"]
                         and a["labels"]["forge_slo_severity"] == severity and not a["alert"].endswith("SLIAbsent")]
                if own.get("disable"):
                    assert fired == [], f"{path.name}: {slo['name']} {severity} is disabled"
                    continue
                assert fired, f"{path.name}: {slo['name']} has no {severity} alert"
                labels = {**alerting.get("labels", {}), **own.get("labels", {})}
                annotations = {**alerting.get("annotations", {}), **own.get("annotations", {})}
                for alert in fired:
                    assert alert["alert"] == alerting.get("name", alert["alert"])
                    assert {k: alert["labels"].get(k) for k in labels} == {k: str(v) for k, v in labels.items()}
                    assert {k: alert["annotations"].get(k) for k in annotations} == annotations


def test_peer_examples_compile_or_are_refused_at_their_field(tmp_path: Path, promtool: str) -> None:
    outcomes = [_run(fmt, name, entry, tmp_path) for fmt, name, entry in _fixtures()]
    compiled = [o for o in outcomes if o.compiled and o.folder is not None]
    rule_files = sorted(str(p) for o in compiled for p in (o.folder / "prometheus").glob("*.yaml"))  # type: ignore[operator]
    check = subprocess.run([promtool, "check", "rules", *rule_files], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    for outcome in compiled:
        if (outcome.fmt, outcome.fixture) not in PROVEN:
            continue
        assert outcome.folder is not None
        tests = sorted(p.name for p in (outcome.folder / "promtool-tests").glob("*.test.yaml"))
        run = subprocess.run([promtool, "test", "rules", *tests], cwd=outcome.folder / "promtool-tests",
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{outcome.fmt}/{outcome.fixture}: {run.stdout[-2000:]}"
    report = []
    shares = {}
    for fmt in EXPECTED:
        counted = [o for o in outcomes if o.fmt == fmt and o.counted]
        total = sum(o.documents for o in counted)
        ok = sum(o.documents for o in counted if o.compiled)
        shares[fmt] = ok / total
        refused = [o.fixture for o in counted if not o.compiled]
        report.append(f"{fmt}: {ok} of {total} documents compile ({ok / total:.0%}); refused: "
                      f"{', '.join(refused) or 'none'}")
    print("\n" + "\n".join(report))
    plugins = {name for name, entry in EXPECTED["sloth"].items() if "refused" in entry}
    assert all("plugin" in EXPECTED["sloth"][name]["refused"].lower() for name in plugins)
    assert all(o.compiled for o in outcomes if o.fmt == "sloth" and o.fixture not in plugins)
    assert shares["openslo"] >= 0.9 and shares["pyrra"] >= 0.9, report


def test_a_plugin_is_refused_at_its_line_and_nothing_is_written(tmp_path: Path) -> None:
    fixture = PEERS / "sloth" / "plugin-getting-started.yaml"
    result = run_cli("compile", str(fixture), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    # The plugin block's first line (its id).
    line = next(i for i, text in enumerate(fixture.read_text().splitlines(), 1) if "acme_http_availability" in text)
    assert f"{fixture}:{line}: slos[0].sli.plugin: Sloth plugins cannot be imported: plugin " \
           "'acme_http_availability' is Go code" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
