"""From specs to artifacts: a small pipeline of pure steps. Writing files is the CLI's job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from forge_slo.compile import promtool_tests, rules, yamlout
from forge_slo.compile.artifact import Artifact, header
from forge_slo.spec.model import ServiceSpec

FORMATS = ("prometheus", "prometheus-operator")
OWNED_DIRS = ("prometheus", "promtool-tests", "grafana", "rollouts")


@dataclass
class CompileResult:
    artifacts: list[Artifact] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def rules_document(spec: ServiceSpec) -> dict[str, object]:
    return {"groups": rules.rule_groups(spec)}


def operator_document(spec: ServiceSpec) -> dict[str, object]:
    """The same rules as a prometheus-operator PrometheusRule custom resource."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": f"forge-slo-{spec.service.lower().replace('_', '-').replace('.', '-')}",
            "labels": {"app.kubernetes.io/managed-by": "forge-slo", **dict(spec.labels)},
        },
        "spec": rules_document(spec),
    }


def compile_specs(specs: Sequence[ServiceSpec], fmt: str = "prometheus", dashboards: bool = True) -> CompileResult:
    """Rules and promtool tests per service, and (unless ``dashboards`` is false) the Grafana dashboards."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    result = CompileResult()
    for spec in specs:
        rules_path = f"prometheus/{spec.service}.rules.yaml"
        if fmt == "prometheus":
            result.artifacts.append(Artifact(rules_path, yamlout.dump(rules_document(spec), header(spec))))
            doc, warnings = promtool_tests.test_file(spec, f"../{rules_path}")
            result.warnings.extend(warnings)
            result.artifacts.append(Artifact(f"promtool-tests/{spec.service}.test.yaml",
                                             yamlout.dump(doc, header(spec))))
        else:
            result.artifacts.append(Artifact(rules_path, yamlout.dump(operator_document(spec), header(spec))))
    from forge_slo.compile.rollouts import rollout_artifacts

    result.artifacts.extend(rollout_artifacts(specs))
    if dashboards:
        from forge_slo.compile.dashboards import dashboard_artifacts

        result.artifacts.extend(dashboard_artifacts(specs))
    if fmt == "prometheus-operator":
        result.warnings.append("promtool tests are not written for --format prometheus-operator: promtool reads "
                               "plain rule files; compile with --format prometheus to run them")
    return result
