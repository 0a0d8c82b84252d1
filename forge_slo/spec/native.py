"""forge-slo's own spec format (``apiVersion: forge-slo/v1``): documents to typed :class:`ServiceSpec` objects.

The helpers here (names, labels, durations, alerting) are shared by the importers of other formats.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import replace

from forge_slo import gotemplate, promql
from forge_slo.durations import format_duration, parse_duration
from forge_slo.spec.model import (
    CRITICAL_XIDS,
    PAGE,
    SLI,
    SLO,
    TICKET,
    AlertPolicy,
    AvailabilitySLI,
    BudgetPolicy,
    BurnWindow,
    GaugeSLI,
    GpuPool,
    LatencySLI,
    RatioSLI,
    ServiceSpec,
    default_windows,
    frozen_map,
)
from forge_slo.spec.presets import PRESETS, QUANTITIES, Availability, AvailabilityPolicy, Histogram, Preset
from forge_slo.spec.yamlnode import Node

API_VERSION = "forge-slo/v1"
KIND = "ServiceSLO"
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
RESERVED_LABEL_PREFIX = "forge_slo_"
DEFAULT_FOR = {PAGE: 120.0, TICKET: 600.0}
# Budgets below this lose digits in the rules' arithmetic and text (and no fleet measures them honestly).
MIN_BUDGET_PERCENT = 1e-6
# Sane bounds for the numbers of a spec: beyond them a value is a typo, and some would overflow downstream.
MAX_DURATION_S = 10 * 365 * 86400.0  # 10y: periods, windows, `for`, `absent_for`
MAX_XID = 1023  # NVIDIA XID codes are small positive integers
MAX_MIN_EVENTS = 1e9
MAX_PRICE_PER_GPU_HOUR = 1e6
MAX_UNIT_SECONDS = 86400.0



_SERVICE_FIELDS = {"apiVersion", "kind", "service", "description", "preset", "metrics", "buckets", "selector",
                   "group_by", "period", "labels", "alerting", "slos", "gpu",
                   "budget_policy"}


def parse_service(doc: Node) -> ServiceSpec:
    items = doc.mapping(_SERVICE_FIELDS, required=("apiVersion", "kind", "service", "slos"))
    kind = items["kind"].string()
    if kind != KIND:
        items["kind"].fail(f"unsupported kind {kind!r}; expected {KIND!r}")
    service = parse_name(items["service"])
    preset = parse_preset(items.get("preset"), items.get("metrics"))
    if "buckets" in items:
        preset = parse_bucket_overrides(items["buckets"], preset)
    period = parse_duration_node(items["period"]) if "period" in items else 30 * 86400.0
    selector = parse_labels(items["selector"], allow_reserved=True) if "selector" in items else {}
    group_by = parse_group_by(items["group_by"]) if "group_by" in items else ()
    labels = parse_labels(items["labels"]) if "labels" in items else {}
    description = items["description"].string(non_empty=False) if "description" in items else ""
    page, ticket, min_events, absent_for = parse_alerting(items.get("alerting"), period)
    gpu = parse_gpu(items["gpu"], preset) if "gpu" in items else None
    explicit = {severity for severity in (PAGE, TICKET) if _has_windows(items.get("alerting"), severity)}
    warnings: list[str] = []
    slos = parse_slos(items["slos"], preset, page, ticket, gpu, explicit=explicit, warnings=warnings)
    warnings.extend(_ungroupable(slos, group_by, preset))
    policy = parse_budget_policy(items["budget_policy"], slos) if "budget_policy" in items else None
    return ServiceSpec(
        service=service, preset=preset, period_seconds=period, slos=slos, page=page, ticket=ticket,
        selector=frozen_map(selector), group_by=group_by, labels=frozen_map(labels), min_events=min_events,
        absent_for_seconds=absent_for, description=description, source=doc.file, gpu=gpu, budget_policy=policy,
        warnings=tuple(f"{doc.file}: {service}: {w}" for w in warnings),
    )


def _ungroupable(slos: tuple[SLO, ...], group_by: tuple[str, ...], preset: Preset) -> list[str]:
    """Availability SLOs whose counters carry none of some group_by labels are computed across them."""
    out = []
    for slo in slos:
        if isinstance(slo.sli, AvailabilitySLI):
            terms = slo.sli.counters.total
            missing = [label for label in group_by if all(label in term.lacks for term in terms)]
            if missing:
                out.append(f"SLO {slo.name}: {preset.title}'s counters for availability carry no "
                           f"{', '.join(missing)} label, so this SLO is computed for the whole server, not per "
                           f"{', '.join(missing)}")
    return out


def parse_budget_policy(node: Node, slos: tuple[SLO, ...]) -> BudgetPolicy:
    """``budget_policy: {freeze_releases: {below_percent: 25, slos: [...]}}``: the canary gate refuses promotion
    while a covered SLO has less than that share of its error budget left."""
    items = node.mapping({"freeze_releases"}, required=("freeze_releases",))
    freeze = items["freeze_releases"].mapping({"below_percent", "slos"}, required=("below_percent",))
    share = freeze["below_percent"].number(minimum=0, maximum=100)
    names: list[str] = []
    if "slos" in freeze:
        known = [slo.name for slo in slos]
        for item in freeze["slos"].sequence():
            name = item.string()
            if name not in known:
                item.fail(f"no SLO {name!r} in this spec; its SLOs: {', '.join(known)}")
            if name in names:
                item.fail(f"{name!r} is listed twice")
            names.append(name)
        if not names:
            freeze["slos"].fail("list at least one SLO, or leave 'slos' out to cover every SLO")
    return BudgetPolicy(freeze_below_ratio=round(share / 100, 12), slos=tuple(names))


def _has_windows(alerting: Node | None, severity: str) -> bool:
    if alerting is None or not isinstance(alerting.value, dict) or severity not in alerting.value:
        return False
    policy = alerting.value[severity]
    return isinstance(policy.value, dict) and "windows" in policy.value


def parse_bucket_overrides(node: Node, preset: Preset) -> Preset:
    """``buckets: {<alias>: [bounds...]}``: the bounds the server was started with, where it lets them change.
    An override covers the alias's whole bucket family, as the server's own flag does."""
    families: dict[str, tuple[tuple[float, ...], str]] = {}
    for alias, entry in node.items():
        histogram = preset.histograms.get(alias)
        if histogram is None:
            Node(None, node.file, entry.line, node.child_path(alias)).fail(
                f"preset {preset.name!r} has no latency histogram {alias!r}; known: {', '.join(preset.aliases())}")
        if not histogram.overridable:
            entry.fail(f"{preset.title} does not let its operator change the bounds of {histogram.metric} "
                       f"({preset.bucket_note or 'they are fixed'})")
        bounds = tuple(b.number(minimum=0.0) for b in entry.sequence())
        if not bounds or list(bounds) != sorted(set(bounds)):
            entry.fail("list the server's bucket bounds, distinct and ascending (without +Inf)")
        scaled = tuple(b / histogram.unit_seconds for b in bounds)
        earlier = families.get(histogram.family)
        if earlier is not None and earlier[0] != scaled:
            entry.fail(f"{alias} shares its buckets with {earlier[1]} in {preset.title} (family "
                       f"{histogram.family!r}): give both the same bounds, as the server has one list for both")
        families[histogram.family] = (scaled, alias)
        preset = preset.with_buckets(histogram.family, scaled)
    return preset


def parse_gpu(node: Node, preset: Preset) -> GpuPool:
    items = node.mapping({"selector", "price_per_gpu_hour", "alerts", "critical_xids"})
    price = None
    if "price_per_gpu_hour" in items:
        price = items["price_per_gpu_hour"].number(maximum=MAX_PRICE_PER_GPU_HOUR)
        if price <= 0:
            items["price_per_gpu_hour"].fail("must be a positive price (e.g. dollars per GPU-hour)")
        if preset.server.generation_tokens is None:
            items["price_per_gpu_hour"].fail(
                f"cost per good token needs the server's generated-token counter, which preset {preset.name!r} "
                "does not have")
    alerts = items["alerts"].mapping({"unhealthy_for", "thermal_for"}) if "alerts" in items else {}
    xids = CRITICAL_XIDS
    if "critical_xids" in items:
        codes = []
        for code in items["critical_xids"].sequence():
            value = code.number()
            if not value.is_integer() or not 0 < value <= MAX_XID:
                code.fail(f"XID codes are positive integers, at most {MAX_XID}")
            codes.append(int(value))
        if not codes:
            items["critical_xids"].fail("list at least one XID code")
        xids = tuple(sorted(set(codes)))
    return GpuPool(
        selector=frozen_map(parse_labels(items["selector"], allow_reserved=True) if "selector" in items else {}),
        price_per_gpu_hour=price,
        unhealthy_for_seconds=parse_for(alerts["unhealthy_for"]) if "unhealthy_for" in alerts else 60.0,
        thermal_for_seconds=parse_for(alerts["thermal_for"]) if "thermal_for" in alerts else 300.0,
        critical_xids=xids,
    )


def parse_name(node: Node) -> str:
    name = node.string()
    if not NAME_RE.match(name):
        node.fail(f"{name!r} is not a valid name: use letters, digits, '-', '_' and '.', "
                  "starting and ending with a letter or digit, at most 63 characters")
    return name


def parse_duration_node(node: Node) -> float:
    try:
        return parse_duration(node.string(), maximum=MAX_DURATION_S)
    except ValueError as exc:
        node.fail(str(exc))


def parse_preset(node: Node | None, metrics: Node | None) -> Preset:
    name = node.string() if node is not None else "custom"
    if name not in PRESETS:
        assert node is not None
        node.fail(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]
    if metrics is None:
        return preset
    if name != "custom":
        metrics.fail(f"only the custom preset declares its own metrics; preset {name!r} already knows them")
    histograms: dict[str, Histogram] = {}
    for alias, entry in metrics.items():
        fields = entry.mapping({"metric", "buckets", "unit_seconds"}, required=("metric", "buckets"))
        metric = fields["metric"].string()
        if not promql.is_metric_name(metric):
            fields["metric"].fail(f"{metric!r} is not a valid Prometheus metric name")
        buckets = tuple(b.number() for b in fields["buckets"].sequence())
        if not buckets:
            fields["buckets"].fail("must list the histogram's bucket bounds")
        if list(buckets) != sorted(set(buckets)):
            fields["buckets"].fail("bucket bounds must be distinct and ascending")
        unit = fields["unit_seconds"].number(maximum=MAX_UNIT_SECONDS) if "unit_seconds" in fields else 1.0
        if unit <= 0:
            fields["unit_seconds"].fail("must be positive (0.001 for a histogram in milliseconds)")
        histograms[alias] = Histogram(metric, buckets, unit)
    return Preset(name="custom", title="custom metrics", model_label=None, histograms=histograms)


def parse_labels(node: Node, *, allow_reserved: bool = False) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in node.items():
        where = Node(None, node.file, value.line, node.child_path(key))
        if not promql.is_label_name(key):
            where.fail(f"{key!r} is not a valid Prometheus label name")
        if not allow_reserved and key.startswith(RESERVED_LABEL_PREFIX):
            where.fail(f"labels starting with {RESERVED_LABEL_PREFIX!r} are set by forge-slo itself")
        if isinstance(value.value, bool) or not isinstance(value.value, str | int | float):
            value.fail(f"label values must be strings, got {value.value!r}")
        out[key] = str(value.value)
    return out


def parse_group_by(node: Node) -> tuple[str, ...]:
    out: list[str] = []
    for item in node.sequence():
        label = item.string()
        if not promql.is_label_name(label):
            item.fail(f"{label!r} is not a valid Prometheus label name")
        if label in out:
            item.fail(f"{label!r} is listed twice")
        out.append(label)
    return tuple(out)


_POLICY_FIELDS = {"labels", "annotations", "for", "windows", "disabled"}


def parse_alerting(node: Node | None, period: float) -> tuple[AlertPolicy, AlertPolicy, float, float]:
    page_windows, ticket_windows = default_windows(period)
    items = node.mapping({PAGE, TICKET, "min_events", "absent_for"}) if node is not None else {}
    page = parse_policy(items.get(PAGE), PAGE, page_windows, period)
    ticket = parse_policy(items.get(TICKET), TICKET, ticket_windows, period)
    min_events = 10.0
    if "min_events" in items:
        min_events = items["min_events"].number(minimum=0, maximum=MAX_MIN_EVENTS)
    absent_for = parse_duration_node(items["absent_for"]) if "absent_for" in items else 600.0
    return page, ticket, min_events, absent_for


def parse_policy(node: Node | None, severity: str, defaults: tuple[BurnWindow, ...], period: float) -> AlertPolicy:
    if node is None:
        return AlertPolicy(severity, defaults, DEFAULT_FOR[severity])
    items = node.mapping(_POLICY_FIELDS)
    windows = defaults
    if "windows" in items:
        windows = tuple(parse_window(w, period) for w in items["windows"].sequence())
        if not windows:
            items["windows"].fail("must list at least one window (or set disabled: true)")
    return AlertPolicy(
        severity=severity,
        windows=windows,
        for_seconds=parse_for(items["for"]) if "for" in items else DEFAULT_FOR[severity],
        labels=frozen_map(parse_labels(items["labels"]) if "labels" in items else {}),
        annotations=frozen_map(parse_annotations(items["annotations"]) if "annotations" in items else {}),
        enabled=not items["disabled"].boolean() if "disabled" in items else True,
    )


def parse_annotations(node: Node) -> dict[str, str]:
    """Alert annotations: label-name keys, values Prometheus can load as Go templates."""
    out: dict[str, str] = {}
    for key, value in node.items():
        if not promql.is_label_name(key):
            Node(None, node.file, value.line, node.child_path(key)).fail(
                f"{key!r} is not a valid annotation name (letters, digits and '_', not starting with a digit)")
        text = value.string(non_empty=False)
        problem = gotemplate.template_error(text)
        if problem:
            value.fail(f"not a template Prometheus can load ({problem}); for a literal '{{{{' write "
                       "{{`{{`}}")
        out[key] = text
    return out


def parse_for(node: Node) -> float:
    if node.value in (0, "0", "0s"):
        return 0.0
    return parse_duration_node(node)


def parse_window(node: Node, period: float) -> BurnWindow:
    items = node.mapping({"long", "short", "factor", "budget_percent"}, required=("long", "short"))
    long_s = parse_duration_node(items["long"])
    short_s = parse_duration_node(items["short"])
    if short_s >= long_s:
        items["short"].fail(f"the short window ({format_duration(short_s)}) must be shorter than the long one "
                            f"({format_duration(long_s)})")
    if long_s > period:
        items["long"].fail(f"the long window ({format_duration(long_s)}) is longer than the SLO period "
                           f"({format_duration(period)})")
    if ("factor" in items) == ("budget_percent" in items):
        node.fail("give exactly one of 'factor' (a burn rate) or 'budget_percent' (share of the period's "
                  "budget spent within the long window)")
    if "factor" in items:
        factor = items["factor"].number()
        if factor <= 0:
            items["factor"].fail("must be positive")
    else:
        share = items["budget_percent"].number()
        if not 0 < share <= 100:
            items["budget_percent"].fail("must be above 0 and at most 100")
        factor = round(share / 100 * period / long_s, 4)
    return BurnWindow(long_s, short_s, factor)


def parse_slos(node: Node, preset: Preset, page: AlertPolicy, ticket: AlertPolicy, gpu: GpuPool | None = None, *,
               explicit: set[str] | None = None, warnings: list[str] | None = None) -> tuple[SLO, ...]:
    """The SLOs. ``explicit``: severities whose windows the spec wrote itself (an impossible factor there is
    an error); default windows that cannot fire for an SLO's objective are lowered, with a warning."""
    entries = node.sequence()
    if not entries:
        node.fail("must list at least one SLO")
    slos: list[SLO] = []
    names: set[str] = set()
    for entry in entries:
        items = entry.mapping({"name", "objective", "sli", "description", "labels", "alert_name"},
                              required=("name", "objective", "sli"))
        name, objective = parse_slo_identity(items, names)
        alerting = fit_windows(name, objective, (page, ticket), explicit or set(), items["objective"], warnings)
        slos.append(SLO(
            name=name,
            objective_percent=objective,
            sli=parse_sli(items["sli"], preset, gpu),
            description=items["description"].string(non_empty=False) if "description" in items else "",
            labels=frozen_map(parse_labels(items["labels"]) if "labels" in items else {}),
            alert_name=parse_alert_name(items["alert_name"]) if "alert_name" in items else "",
            alerting=alerting,
        ))
    return tuple(slos)


# A factor is lowered to this share of the highest burn rate there is (an error ratio of 100%), so a total
# outage still fires it while rounding in the rules cannot make it unreachable.
REACHABLE_SHARE = 0.99


def fit_windows(name: str, objective: float, policies: tuple[AlertPolicy, AlertPolicy], explicit: set[str],
                where: Node, warnings: list[str] | None) -> tuple[AlertPolicy, AlertPolicy] | None:
    """The SLO's own policies when a factor can never fire for its objective (None: the service's fit).

    A burn rate is at most 1 / budget (every event bad). A factor the spec wrote itself is refused; a
    default one is lowered to fire at an error ratio of 99%, and the change is reported."""
    budget = 1 - objective / 100
    highest = 1 / budget
    fitted: list[AlertPolicy] = []
    changed = []
    for policy in policies:
        windows = []
        for window in policy.windows:
            if policy.enabled and window.factor >= highest * REACHABLE_SHARE:
                if policy.severity in explicit:
                    where.fail(f"with objective {objective:g}% the {policy.severity} burn rate {window.factor:g}x "
                               f"needs an error ratio of {window.factor * budget:.0%}, which can never happen; "
                               "lower the factor or raise the objective")
                lowered = round(highest * REACHABLE_SHARE, 4)
                changed.append(f"{policy.severity} {format_duration(window.long_seconds)}/"
                               f"{format_duration(window.short_seconds)} {window.factor:g}x -> {lowered:g}x")
                window = BurnWindow(window.long_seconds, window.short_seconds, lowered)
            windows.append(window)
        fitted.append(replace(policy, windows=tuple(windows)))
    if not changed:
        return None
    if warnings is not None:
        warnings.append(f"SLO {name}: with objective {objective:g}% a burn rate can reach at most {highest:.4g}x, "
                        f"so the default factors that could never fire are lowered: {'; '.join(changed)} "
                        "(a total outage still pages)")
    return fitted[0], fitted[1]


def parse_slo_identity(items: dict[str, Node], seen: set[str]) -> tuple[str, float]:
    """An SLO's name (unique among ``seen``, which it joins) and objective, for every spec format."""
    name = parse_name(items["name"])
    if name in seen:
        items["name"].fail(f"duplicate SLO name {name!r}")
    seen.add(name)
    objective = items["objective"].number()
    if not 0 < objective < 100:
        items["objective"].fail(f"objective is a percentage of good requests and must be between 0 and 100 "
                                f"(exclusive), got {objective:g}")
    if round(100 - objective, 10) < MIN_BUDGET_PERCENT:
        items["objective"].fail(f"{objective!r} leaves an error budget of {100 - objective:.3g}%, below the "
                                f"smallest forge-slo computes exactly ({MIN_BUDGET_PERCENT:g}%): use at most "
                                f"{100 - MIN_BUDGET_PERCENT:.6f}")
    return name, objective


def parse_alert_name(node: Node) -> str:
    name = node.string()
    if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", name):
        node.fail(f"{name!r} is not a valid alert name (letters, digits and '_', not starting with a digit)")
    return name


def parse_sli(node: Node, preset: Preset, gpu: GpuPool | None = None) -> SLI:
    items = node.mapping({"latency", "availability", "ratio", "gauge"})
    if len(items) != 1:
        node.fail("give exactly one of 'latency', 'availability', 'ratio' or 'gauge'")
    kind, body = next(iter(items.items()))
    if kind == "latency":
        return parse_latency(body, preset)
    if kind == "availability":
        return parse_availability(body, preset)
    if kind == "gauge":
        return parse_gauge(body, gpu)
    return parse_ratio(body)


_COUNT_OR_IGNORE = ("count", "ignore")


def parse_availability(node: Node, preset: Preset) -> AvailabilitySLI:
    """``availability: {load_shedding: count|ignore, cancellations: count|ignore}``: whether requests shed
    under load and requests cancelled by their client count as failures (default: shedding counts,
    cancellations are ignored); ignored ones are left out of both sides of the ratio."""
    items = node.mapping({"load_shedding", "cancellations"}) if node.value is not None else {}
    outcomes = preset.outcomes
    if outcomes is None:
        node.fail(f"preset {preset.name!r} has no availability counters; use a 'ratio' SLI with your own queries")
    policy = AvailabilityPolicy(
        count_shed=items["load_shedding"].choice(_COUNT_OR_IGNORE) == "count" if "load_shedding" in items else True,
        count_cancelled=items["cancellations"].choice(_COUNT_OR_IGNORE) == "count" if "cancellations" in items
        else False,
    )
    problem = outcomes.unsupported(policy)
    if problem:
        field = "cancellations" if policy.count_cancelled and outcomes.cancelled is None else "load_shedding"
        items[field].fail(f"{preset.title} cannot do this: {problem} ({outcomes.notes})")
    errors, total = outcomes.terms(policy)
    return AvailabilitySLI(Availability(errors, total, outcomes, policy))


GOOD_WHEN = (">=", ">", "<=", "<")
AGGREGATES = ("avg", "min", "max", "sum")


def parse_gauge(node: Node, gpu: GpuPool | None) -> GaugeSLI:
    items = node.mapping({"metric", "threshold", "good_when", "aggregate", "selector", "by"},
                         required=("metric", "threshold", "good_when"))
    metric = items["metric"].string()
    if not promql.is_metric_name(metric):
        items["metric"].fail(f"{metric!r} is not a valid Prometheus metric name")
    good_when = items["good_when"].string()
    if good_when not in GOOD_WHEN:
        items["good_when"].fail(f"must be one of {', '.join(repr(g) for g in GOOD_WHEN)} (good when the value is "
                                "on that side of the threshold)")
    aggregate = items["aggregate"].string() if "aggregate" in items else "avg"
    if aggregate not in AGGREGATES:
        items["aggregate"].fail(f"must be one of {', '.join(AGGREGATES)}")
    if "selector" in items:
        selector = parse_labels(items["selector"], allow_reserved=True)
    else:
        # GPU gauges default to the pool's selector.
        selector = dict(gpu.selector) if gpu is not None and metric.startswith("DCGM_") else {}
    return GaugeSLI(metric=metric, threshold=items["threshold"].number(), good_when=good_when, aggregate=aggregate,
                    selector=frozen_map(selector), by=parse_group_by(items["by"]) if "by" in items else ())


def parse_latency(node: Node, preset: Preset) -> LatencySLI:
    items = node.mapping({"metric", "threshold"}, required=("metric", "threshold"))
    alias = items["metric"].string()
    histogram = preset.histogram(alias)
    if histogram is None:
        known = ", ".join(preset.aliases()) or "none (declare them under 'metrics')"
        quantity = QUANTITIES.get(alias)
        if quantity is not None and preset.name != "custom":
            items["metric"].fail(f"{preset.title} exports no histogram of {quantity.title} ({quantity.meaning}); "
                                 f"its latency histograms: {known}")
        items["metric"].fail(f"unknown metric {alias!r} for preset {preset.name!r}; known: {known}")
    threshold = items["threshold"].number()
    if threshold <= 0:
        items["threshold"].fail("must be a positive number of seconds")
    bound = threshold / histogram.unit_seconds
    if not any(math.isclose(bound, b, rel_tol=1e-9) for b in histogram.buckets):
        items["threshold"].fail(
            f"{threshold:g}s is not a bucket bound of {histogram.metric}, so the share of requests under it "
            f"cannot be counted exactly; {nearest_bounds(histogram, threshold)}")
    exact = next(b for b in histogram.buckets if math.isclose(bound, b, rel_tol=1e-9))
    return LatencySLI(alias, histogram, exact * histogram.unit_seconds)


def nearest_bounds(histogram: Histogram, threshold_s: float) -> str:
    bounds_s = [b * histogram.unit_seconds for b in histogram.buckets]
    i = bisect.bisect_left(bounds_s, threshold_s)
    below = bounds_s[i - 1] if i > 0 else None
    above = bounds_s[i] if i < len(bounds_s) else None
    if below is not None and above is not None:
        return f"the nearest valid bounds are {below!r} and {above!r}"
    only = below if below is not None else above
    return f"the nearest valid bound is {only!r}"


def parse_ratio(node: Node) -> RatioSLI:
    items = node.mapping({"errors", "good", "total"}, required=("total",))
    if ("errors" in items) == ("good" in items):
        node.fail("give exactly one of 'errors' or 'good', and 'total'")
    queries: dict[str, str] = {}
    for key, value in items.items():
        query = value.string()
        if promql.WINDOW_PLACEHOLDER not in query:
            value.fail(f"the query must contain the {promql.WINDOW_PLACEHOLDER} placeholder where the rate window "
                       "goes, e.g. sum(rate(http_requests_total[{{window}}]))")
        problem = promql.parse_error(promql.fill_window(query, "5m"))
        if problem:
            value.fail(f"not valid PromQL: {problem}")
        queries[key] = query.strip()
    return RatioSLI(total=queries["total"], errors=queries.get("errors"), good=queries.get("good"))
