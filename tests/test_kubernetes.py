"""Every Kubernetes resource forge-slo compiles is one the API server accepts: PrometheusRules validate against the
prometheus-operator's CRD schema (vendored in tests/data/prometheus-operator), and every resource's metadata
follows Kubernetes' rules for names, label keys and values, and annotation keys; what sanitising changed is kept.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.conftest import EXAMPLES, REPO, run_cli
from tests.test_spec import write


def _re2_to_python(node: Any) -> Any:
    """The schema with its RE2 patterns in Python's spelling: Go lets a flag group such as ``(?i)`` stand after
    ``^``; Python wants it first."""
    if isinstance(node, dict):
        out = {k: _re2_to_python(v) for k, v in node.items()}
        if isinstance(out.get("pattern"), str):
            out["pattern"] = re.sub(r"^\^\(\?([a-z]+)\)", r"(?\1)^", out["pattern"])
        return out
    if isinstance(node, list):
        return [_re2_to_python(v) for v in node]
    return node


SCHEMA = _re2_to_python(json.loads(
    (REPO / "tests" / "data" / "prometheus-operator" / "prometheusrule.openapi.json").read_text()))
# OpenAPI v3 schemas (as Kubernetes writes them) read as JSON Schema draft 4, without the metaschema check.
VALIDATOR = jsonschema.Draft4Validator(SCHEMA)
# Kubernetes' own grammar (k8s.io/apimachinery validation): DNS-1123 subdomain names, qualified label and
# annotation keys, label values.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# A spec whose service and labels are not Kubernetes-shaped: Sloth's getting-started puts "myorg/myservice" in a
# label; a team name with spaces, a long value and a label starting with "_" are as ordinary in Prometheus.
AWKWARD = textwrap.dedent("""\
    version: "prometheus/v1"
    service: "My_Service.v2"
    labels:
      repo: "acme/payments-api"
      owner: "Payments Team"
      _tier: "1"
      long: "%s"
    slos:
      - name: "availability"
        objective: 99.9
        sli:
          events:
            error_query: sum(rate(http_requests_total{code=~"5.."}[{{.window}}]))
            total_query: sum(rate(http_requests_total[{{.window}}]))
        alerting:
          name: PaymentsErrors
    """) % ("x" * 80)


def metadata_problems(meta: dict[str, Any]) -> list[str]:
    """What the API server would refuse in an object's metadata."""
    problems = []
    name = meta.get("name", "")
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"name {name!r} is not a DNS-1123 subdomain")
    for kind, entries in (("label", meta.get("labels") or {}), ("annotation", meta.get("annotations") or {})):
        for key, value in entries.items():
            prefix, _, key_name = key.rpartition("/")
            if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
                problems.append(f"{kind} key {key!r}: prefix is not a DNS subdomain")
            if len(key_name) > 63 or not _QUALIFIED_NAME.match(key_name):
                problems.append(f"{kind} key {key!r} is not a qualified name")
            if not isinstance(value, str):
                problems.append(f"{kind} {key!r}: value is not a string")
            elif kind == "label" and (len(value) > 63 or not _LABEL_VALUE.match(value)):
                problems.append(f"label {key}={value!r} is not a valid label value")
    return problems


def _compile(tmp_path: Path, *paths: str) -> list[dict[str, Any]]:
    out = tmp_path / "out"
    result = run_cli("compile", *paths, "--out", str(out), "--format", "prometheus-operator")
    assert result.returncode == 0, result.stderr
    return [yaml.safe_load(p.read_text()) for p in sorted((out / "prometheus").glob("*.yaml"))] + \
        [doc for p in sorted((out / "rollouts").glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text()) if doc]


def test_prometheus_rules_validate_against_the_crd_schema_and_metadata_rules(tmp_path: Path) -> None:
    resources = _compile(tmp_path, str(EXAMPLES), str(write(tmp_path, AWKWARD, "awkward.yaml")))
    rules = [r for r in resources if r["kind"] == "PrometheusRule"]
    assert len(rules) == 5 and any(r["kind"] != "PrometheusRule" for r in resources)
    for resource in resources:
        assert metadata_problems(resource["metadata"]) == [], resource["metadata"]
    broken = json.loads(json.dumps(rules[0]))
    del broken["spec"]["groups"][0]["rules"][0]["expr"]
    assert not VALIDATOR.is_valid(broken)  # the schema does check what forge-slo writes
    for rule in rules:
        VALIDATOR.validate(rule)
        assert all(len(group["rules"]) <= 20 for group in rule["spec"]["groups"])


def test_sanitised_metadata_keeps_the_original(tmp_path: Path) -> None:
    [rule] = [r for r in _compile(tmp_path, str(write(tmp_path, AWKWARD, "awkward.yaml")))
              if r["kind"] == "PrometheusRule"]
    meta = rule["metadata"]
    assert meta["name"].startswith("forge-slo-my-service-v2-")  # a hash of the original name follows
    assert meta["labels"]["repo"].startswith("acme-payments-api-") and meta["labels"]["tier"] == "1"
    assert len(meta["labels"]["long"]) <= 63
    assert meta["annotations"]["forge-slo.dev/service"] == "My_Service.v2"
    original = json.loads(meta["annotations"]["forge-slo.dev/original-labels"])
    assert original == {"_tier": "1", "app.kubernetes.io/managed-by": "forge-slo", "long": "x" * 80,
                        "owner": "Payments Team", "repo": "acme/payments-api"}
    # The rules themselves keep the labels exactly: only Kubernetes' metadata is sanitised.
    labels = rule["spec"]["groups"][0]["rules"][0]["labels"]
    assert labels["repo"] == "acme/payments-api" and labels["_tier"] == "1"


def test_two_services_never_share_a_resource_name(tmp_path: Path) -> None:
    first = write(tmp_path, AWKWARD.replace("My_Service.v2", "my-service-v2"), "a.yaml")
    second = write(tmp_path, AWKWARD.replace("My_Service.v2", "my_service_v2"), "b.yaml")
    names = {r["metadata"]["name"] for r in _compile(tmp_path, str(first), str(second))
             if r["kind"] == "PrometheusRule"}
    assert names == {"forge-slo-my-service-v2"} | {n for n in names if n.startswith("forge-slo-my-service-v2-")}
    assert len(names) == 2
