"""Turns the project's dashboard description into Grafana's dashboard JSON with grafana-foundation-sdk.

The only module that imports the SDK, so a change of SDK (or of its version) touches this file alone.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

# The SDK's classic dashboard builder warns on import that a v2 schema exists; this project emits the classic
# JSON model (what Grafana's import and file provisioning read), so the warning is expected here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as builders
    from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common, dashboard
    from grafana_foundation_sdk.models import prometheus as prometheus_models

from forge_slo.compile.dashboard_model import (
    DATASOURCE_TYPE,
    DATASOURCE_VAR,
    GRID_WIDTH,
    Dashboard,
    Link,
    Panel,
    Row,
    SeriesStyle,
    Step,
    Target,
    Variable,
)

DATASOURCE = common.DataSourceRef(type_val=DATASOURCE_TYPE, uid=f"${{{DATASOURCE_VAR}}}")


def to_json(model: Dashboard) -> dict[str, Any]:
    """Grafana's JSON model of ``model`` as plain dicts and lists."""
    builder = (
        builders.Dashboard(model.title)
        .uid(model.uid)
        .description(model.description)
        .tags(list(model.tags))
        .time(model.time_from, "now")
        .refresh(model.refresh)
        .timezone("browser")
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .variables([_variable(v) for v in model.variables])
        .links([_link(link) for link in model.links])
    )
    built = builder.build()
    # Placed explicitly: the SDK's automatic layout would move panels it finds at x=0, y=0.
    built.panels = [_row(p) if isinstance(p, Row) else _panel(p) for p in model.panels]
    document: dict[str, Any] = json.loads(json.dumps(built, cls=JSONEncoder))
    _drop_link_placement(document)
    return document


def _drop_link_placement(document: dict[str, Any]) -> None:
    """The SDK sets every link's placement to "inControlsMenu", which hides dashboard links in a menu on
    recent Grafana; without it they show above the panels, as on every Grafana version."""
    for link in document.get("links", []):
        link.pop("placement", None)
    for panel in document.get("panels", []):
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", []):
            link.pop("placement", None)


def _link(link: Link) -> builders.DashboardLink:
    return (
        builders.DashboardLink(link.title)
        .type(dashboard.DashboardLinkType.LINK)
        .url(link.url)
        .tooltip(link.tooltip)
        .keep_time(True)
        .include_vars(True)
    )


def _variable(variable: Variable) -> cogbuilder.Builder[dashboard.VariableModel]:
    if variable.kind == "datasource":
        return (
            builders.DatasourceVariable(variable.name)
            .label(variable.label)
            .description(variable.description)
            .type(variable.query)
        )
    return (
        builders.QueryVariable(variable.name)
        .label(variable.label)
        .description(variable.description)
        .datasource(DATASOURCE)
        .query(variable.query)
        .definition(variable.query)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dashboard.VariableOption(selected=True, text="All", value="$__all"))
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
    )


def _row(row: Row) -> dashboard.RowPanel:
    return (
        builders.Row(row.title)
        .id(row.id)
        .collapsed(False)
        .grid_pos(dashboard.GridPos(h=1, w=GRID_WIDTH, x=0, y=row.y))
        .build()
    )


def _target(target: Target) -> prometheus.Dataquery:
    query = (
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .expr(target.expr)
        .ref_id(target.ref_id)
        .legend_format(target.legend or "__auto")
    )
    if target.instant:
        query = query.instant()
    if target.table:
        query = query.format(prometheus_models.PromQueryFormat.TABLE)
    return query


def _thresholds(steps: tuple[Step, ...]) -> builders.ThresholdsConfig:
    steps = steps or (Step(None, "green"),)
    return (
        builders.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=s.value, color=s.color) for s in steps])
    )


def _by_names(*names: str) -> dashboard.MatcherConfig:
    # "byNames" takes an object of options; the published schema types every matcher's options as an object.
    return dashboard.MatcherConfig(id_val="byNames", options={"mode": "include", "names": list(names)})


def _series_style(style: SeriesStyle) -> list[dashboard.DynamicConfigValue]:
    props = [dashboard.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": style.color})]
    if style.dashed:
        dash = {"fill": "dash", "dash": [10, 10]}
        props.append(dashboard.DynamicConfigValue(id_val="custom.lineStyle", value=dash))
    return props


def _panel(panel: Panel) -> dashboard.Panel:
    grid = dashboard.GridPos(h=panel.grid.h, w=panel.grid.w, x=panel.grid.x, y=panel.grid.y)
    targets: list[cogbuilder.Builder[Any]] = [_target(t) for t in panel.targets]
    links = [_link(link) for link in panel.data_links]
    if panel.kind == "timeseries":
        ts = (
            timeseries.Panel()
            .legend(common_builders.VizLegendOptions()
                    .show_legend(True)
                    .display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM))
            .tooltip(common_builders.VizTooltipOptions()
                     .mode(common.TooltipDisplayMode.MULTI)
                     .sort(common.SortOrder.DESCENDING))
            .line_width(1)
            .fill_opacity(10)
            .span_nulls(False)
            .thresholds_style(common_builders.GraphThresholdsStyleConfig()
                              .mode(common.GraphThresholdsStyleMode(panel.threshold_style)))
        )
        for style in panel.series:
            ts = ts.with_override(_by_names(style.name), _series_style(style))
        if panel.time_from:
            ts = ts.time_from(panel.time_from)
        common_panel: Any = ts
    elif panel.kind == "stat":
        common_panel = (
            stat.Panel()
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .color_mode(common.BigValueColorMode.BACKGROUND)
            .graph_mode(common.BigValueGraphMode.NONE)
            .text_mode(common.BigValueTextMode.AUTO)
        )
    else:
        tb = table.Panel().with_transformation(dashboard.DataTransformerConfig(id_val="merge", options={}))
        tb = tb.with_transformation(dashboard.DataTransformerConfig(id_val="organize", options={
            "excludeByName": {"Time": True},
            "indexByName": {c.field: i for i, c in enumerate(panel.columns)},
            "renameByName": {c.field: c.title for c in panel.columns},
        }))
        for column in panel.columns:
            if column.steps:
                colours = _thresholds(column.steps).build()
                cells = {"type": "color-background"}
                tb = tb.with_override(_by_names(column.title), [
                    dashboard.DynamicConfigValue(id_val="thresholds", value=colours),
                    dashboard.DynamicConfigValue(id_val="custom.cellOptions", value=cells),
                ])
        common_panel = tb
    common_panel = (
        common_panel
        .id(panel.id)
        .title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .unit(panel.unit)
        .grid_pos(grid)
        .targets(targets)
        .thresholds(_thresholds(panel.steps))
    )
    if panel.min is not None:
        common_panel = common_panel.min(panel.min)
    if panel.max is not None:
        common_panel = common_panel.max(panel.max)
    if links:
        common_panel = common_panel.data_links(links)
    built: dashboard.Panel = common_panel.build()
    return built
