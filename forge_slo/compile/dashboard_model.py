"""The project's own description of a Grafana dashboard: small frozen dataclasses, no Grafana code.

:mod:`forge_slo.compile.dashboards` builds them from specs; :mod:`forge_slo.compile.grafana_sdk` turns them
into Grafana's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GRID_WIDTH = 24
DATASOURCE_VAR = "datasource"
DATASOURCE_TYPE = "prometheus"


@dataclass(frozen=True)
class GridPos:
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel. ``instant`` ones read the latest value; ``table`` ones return labels."""

    expr: str
    legend: str = ""
    ref_id: str = "A"
    instant: bool = False
    table: bool = False


@dataclass(frozen=True)
class Step:
    """A threshold step: values from ``value`` up take ``color`` (``None`` is the base step)."""

    value: float | None
    color: str


@dataclass(frozen=True)
class SeriesStyle:
    """Draw the series whose legend is ``name`` in a fixed colour, dashed if asked."""

    name: str
    color: str
    dashed: bool = False


@dataclass(frozen=True)
class Column:
    """A table column: ``field`` as Grafana names it (a label, or ``Value #<ref_id>``), shown as ``title``."""

    field: str
    title: str
    steps: tuple[Step, ...] = ()  # colour the cell background by these thresholds


@dataclass(frozen=True)
class Link:
    title: str
    url: str
    tooltip: str = ""


PanelKind = Literal["timeseries", "stat", "table"]
ThresholdStyle = Literal["off", "line", "dashed", "line+area", "dashed+area"]


@dataclass(frozen=True)
class Panel:
    """A visualisation. Every panel has a unit, a description and at least one query."""

    id: int
    kind: PanelKind
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    grid: GridPos
    steps: tuple[Step, ...] = ()
    threshold_style: ThresholdStyle = "off"
    min: float | None = None
    max: float | None = None
    time_from: str | None = None  # a relative range of its own, e.g. the SLO period
    series: tuple[SeriesStyle, ...] = ()
    columns: tuple[Column, ...] = ()  # tables only
    data_links: tuple[Link, ...] = ()


@dataclass(frozen=True)
class Row:
    id: int
    title: str
    y: int


@dataclass(frozen=True)
class Variable:
    """A template variable: the Prometheus data source, or a label's values (``query``: label_values)."""

    name: str
    label: str
    kind: Literal["datasource", "query"]
    query: str
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    variables: tuple[Variable, ...]
    panels: tuple[Panel | Row, ...]
    links: tuple[Link, ...] = ()
    time_from: str = "now-6h"
    refresh: str = "1m"
