"""Rollout templates per service: an Argo Rollouts AnalysisTemplate and Flagger MetricTemplates.

- ``rollouts/<service>.analysistemplate.yaml``: an AnalysisTemplate whose one metric asks forge-slo's canary
  gate (``forge-slo gate serve``) through Argo's web provider every minute for 30 minutes. A measurement
  succeeds on ``result.verdict == "pass"``, fails on ``result.verdict == "fail"`` and is inconclusive
  otherwise; ``inconclusiveLimit`` is count - 1, so the analysis succeeds only if the gate passed the canary
  at least once and never failed it (the gate passes only once its window is complete, or when every check
  is shown within its limit).
- ``rollouts/<service>.metrictemplate.yaml``: one Flagger MetricTemplate per latency and availability SLO,
  the canary's SLI error ratio over Flagger's interval, for a fixed ``thresholdRange`` check; the header
  shows the Canary snippet with the thresholds and the gate's webhooks.

Pure: specs in, artifacts out; YAML through ``yamlout.dump`` so the bytes are deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from forge_slo import gotemplate, promql
from forge_slo.compile import yamlout
from forge_slo.compile.artifact import header
from forge_slo.compile.producer import CompileOptions, Produced, Producer
from forge_slo.spec.model import SLO, AvailabilitySLI, LatencySLI, ServiceSpec
from forge_slo.spec.presets import CounterTerm

GATE_URL = "http://forge-slo-gate.forge-slo.svc:8080"
GATE_SECRET = "forge-slo-gate"
WINDOW = "30m"
INTERVAL = "1m"
COUNT = 30
# Argo Rollouts' pod-template-hash label after Prometheus' usual labelmap of pod labels.
HASH_LABEL = "rollouts_pod_template_hash"
# Flagger's canary pods are <target>-<hash>-<id>; the primary's are <target>-primary-<hash>-<id>.
FLAGGER_CANARY_POD = "{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"
FLAGGER_INTERVAL = "{{ interval }}"


def dns_name(*parts: str) -> str:
    """A Kubernetes object name (DNS-1123 label) from parts: lowercase, digits and '-', at most 63 characters."""
    text = "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts if p)
    text = re.sub(r"-+", "-", text).strip("-")[:63].rstrip("-")
    return text or "forge-slo"


def _header(spec: ServiceSpec, what: str) -> str:
    return f"{header(spec)}\n{what}"


def checks_of(spec: ServiceSpec) -> list[str]:
    """The canary checks the gate runs for this spec (see forge_slo.canary.judge)."""
    names: list[str] = []
    for slo in spec.slos:
        if isinstance(slo.sli, LatencySLI):
            names.extend(f"{slo.name}.{kind}" for kind in ("shift", "tail"))
        elif isinstance(slo.sli, AvailabilitySLI):
            names.append(f"{slo.name}.errors")
    return names


def analysis_template(spec: ServiceSpec) -> dict[str, object]:
    """The AnalysisTemplate calling the gate for ``spec`` (stable pods are the baseline, the latest the canary)."""
    query = "&".join([
        f"service={_url_value(spec.service)}",
        f"baseline={HASH_LABEL}%3D{{{{args.stable-hash}}}}",
        f"canary={HASH_LABEL}%3D{{{{args.canary-hash}}}}",
        "session={{args.canary-hash}}",
        f"window={WINDOW}",
        f"interval={INTERVAL}",
    ])
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {
            "name": dns_name("forge-slo", spec.service),
            "labels": {"app.kubernetes.io/managed-by": "forge-slo"},
            "annotations": {"forge-slo.io/service": spec.service, "forge-slo.io/checks": ",".join(checks_of(spec))},
        },
        "spec": {
            "args": [
                {"name": "stable-hash"},
                {"name": "canary-hash"},
                {"name": "gate-url", "value": GATE_URL},
                {"name": "gate-token", "valueFrom": {"secretKeyRef": {"name": GATE_SECRET, "key": "token"}}},
            ],
            "metrics": [{
                "name": dns_name(spec.service, "canary"),
                "interval": INTERVAL,
                "count": COUNT,
                "successCondition": 'result.verdict == "pass"',
                "failureCondition": 'result.verdict == "fail"',
                "failureLimit": 0,
                "inconclusiveLimit": COUNT - 1,
                "consecutiveErrorLimit": 4,
                "provider": {"web": {
                    "url": "{{args.gate-url}}/v1/argo?" + query,
                    "headers": [{"key": "Authorization", "value": "Bearer {{args.gate-token}}"}],
                    "timeoutSeconds": 20,
                    "jsonPath": "{$}",
                }},
            }],
        },
    }


def _url_value(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _flagger_matchers(spec: ServiceSpec) -> list[str]:
    extra = [promql.regex_matcher("pod", FLAGGER_CANARY_POD)]
    if "namespace" not in spec.selector:
        extra.insert(0, f"namespace={promql.quote('{{ namespace }}')}")
    return extra


def _rate_sum(spec: ServiceSpec, metric: str, extra: list[str]) -> str:
    # Flagger renders the query as a Go template: the spec's values must come out as written.
    selector = {key: gotemplate.literal(value) for key, value in spec.selector.items()}
    return f"sum({promql.rate(promql.selector(metric, selector, extra), FLAGGER_INTERVAL)})"


def _terms(spec: ServiceSpec, terms: Sequence[CounterTerm]) -> str:
    parts = [_rate_sum(spec, t.metric, [*t.matchers, *_flagger_matchers(spec)]) for t in terms]
    return " + ".join(f"({p} or vector(0))" for p in parts)


def canary_error_ratio(spec: ServiceSpec, slo: SLO) -> str | None:
    """PromQL for the share of the Flagger canary's requests that miss the SLO over ``{{ interval }}``."""
    extra = _flagger_matchers(spec)
    if isinstance(slo.sli, LatencySLI):
        metric = slo.sli.histogram.metric
        total = _rate_sum(spec, f"{metric}_count", extra)
        good = _rate_sum(spec, f"{metric}_bucket", [*extra, promql.le_matcher(slo.sli.bucket_bound)])
        return f"({total} - {good}) / {total}"
    if isinstance(slo.sli, AvailabilitySLI):
        return f"({_terms(spec, slo.sli.counters.errors)}) / ({_terms(spec, slo.sli.counters.total)})"
    return None


def metric_templates(spec: ServiceSpec) -> list[dict[str, object]]:
    docs: list[dict[str, object]] = []
    for slo in spec.slos:
        query = canary_error_ratio(spec, slo)
        if query is None:
            continue
        docs.append({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "MetricTemplate",
            "metadata": {
                "name": dns_name(spec.service, slo.name),
                "labels": {"app.kubernetes.io/managed-by": "forge-slo"},
                "annotations": {
                    "forge-slo.io/service": spec.service,
                    "forge-slo.io/slo": slo.name,
                    "forge-slo.io/threshold-max": promql.number(slo.error_budget_ratio),
                },
            },
            "spec": {
                "provider": {"type": "prometheus", "address": "http://prometheus.monitoring:9090"},
                "query": query,
            },
        })
    return docs


def _canary_snippet(spec: ServiceSpec) -> str:
    lines = [
        "Use in a Flagger Canary (thresholds: the SLO's error budget; the webhooks ask forge-slo's gate):",
        "  analysis:",
        f"    interval: {INTERVAL}",
        "    metrics:",
    ]
    for slo in spec.slos:
        if canary_error_ratio(spec, slo) is None:
            continue
        lines += [
            f"      - name: {dns_name(slo.name)}",
            f"        templateRef: {{name: {dns_name(spec.service, slo.name)}}}",
            f"        thresholdRange: {{max: {promql.number(slo.error_budget_ratio)}}}",
            f"        interval: {INTERVAL}",
        ]
    meta = (f"{{service: {spec.service}, baseline: \"app={{TARGET}}-primary\", canary: \"app={{TARGET}}\", "
            f"window: {WINDOW}, interval: {INTERVAL}, token: \"{{GATE TOKEN}}\"}}")
    lines += [
        "    webhooks:",
        "      - name: forge-slo-judge",
        "        type: rollout",
        f"        url: {GATE_URL}/v1/flagger/rollout",
        f"        metadata: {meta}",
        "      - name: forge-slo-promotion",
        "        type: confirm-promotion",
        f"        url: {GATE_URL}/v1/flagger/confirm-promotion",
        f"        metadata: {meta}",
        "  (Flagger's webhooks cannot send headers, so the gate also takes its token from metadata.token;",
        "   {TARGET} is the Canary's targetRef name, relabelled from the pods' app label.)",
    ]
    return "\n".join(lines)


def produce(specs: Sequence[ServiceSpec], options: CompileOptions) -> Produced:
    """``<service>.analysistemplate.yaml`` and ``<service>.metrictemplate.yaml`` per spec."""
    files: dict[str, str] = {}
    for spec in specs:
        if not checks_of(spec):
            continue  # nothing a canary can be judged on (no latency or availability SLO)
        argo = _header(spec, "Argo Rollouts AnalysisTemplate: asks forge-slo's canary gate every minute for 30 "
                             "minutes.\nPass the pod-template hashes from the Rollout:\n"
                             "  args: [{name: stable-hash, valueFrom: {podTemplateHashValue: Stable}},\n"
                             "         {name: canary-hash, valueFrom: {podTemplateHashValue: Latest}}]\n"
                             f"Prometheus must keep the pod label as {HASH_LABEL} (labelmap of pod labels).")
        files[f"{spec.service}.analysistemplate.yaml"] = yamlout.dump(analysis_template(spec), argo)
        docs = metric_templates(spec)
        skipped = [s.name for s in spec.slos if canary_error_ratio(spec, s) is None]
        note = _canary_snippet(spec)
        if skipped:
            note += f"\nNot templated (ratio SLIs are user PromQL without the canary's pods): {', '.join(skipped)}"
        text = yamlout.dump(docs[0], _header(spec, note))
        for doc in docs[1:]:
            text += "---\n" + yamlout.dump(doc)
        files[f"{spec.service}.metrictemplate.yaml"] = text
    return Produced(files)


PRODUCER = Producer(name="rollouts", folder="rollouts", description="Argo Rollouts AnalysisTemplates and Flagger "
                    "MetricTemplates that call the canary gate", produce=produce)
