"""The typed spec model. Everything downstream of the loader reads these frozen objects, never dicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from forge_slo.spec.presets import QUANTITIES, Availability, AvailabilityPolicy, Histogram, Preset, Quantity

PAGE = "page"
TICKET = "ticket"
SEVERITIES = (PAGE, TICKET)


def frozen_map(items: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """A read-only mapping with sorted keys, so output built from it is deterministic."""
    return MappingProxyType(dict(sorted((items or {}).items())))


@dataclass(frozen=True)
class LatencySLI:
    """Share of requests slower than ``threshold_seconds``, read from a histogram's buckets."""

    alias: str
    histogram: Histogram
    threshold_seconds: float

    @property
    def quantity(self) -> Quantity | None:
        """What the histogram measures (None for a custom alias of unknown meaning)."""
        return QUANTITIES.get(self.alias)

    @property
    def bucket_bound(self) -> float:
        """The threshold in the histogram's own unit (the ``le`` bound)."""
        return self.threshold_seconds / self.histogram.unit_seconds

    kind: str = field(default="latency", init=False)


@dataclass(frozen=True)
class AvailabilitySLI:
    """Share of requests the server failed, from the preset's outcome counters under the spec's policy for
    shed and cancelled requests (each request counted once)."""

    counters: Availability
    kind: str = field(default="availability", init=False)

    @property
    def policy(self) -> AvailabilityPolicy:
        return self.counters.policy


@dataclass(frozen=True)
class RatioSLI:
    """User PromQL: ``errors`` (or ``good``) and ``total`` per-second rates over ``{{window}}``."""

    total: str
    errors: str | None = None
    good: str | None = None
    # What the queries measure, for the info series: "ratio", or the kind an exported SLI had before it was
    # flattened into queries (an OpenSLO round trip of a latency SLO reads back as "latency").
    kind: str = "ratio"


@dataclass(frozen=True)
class GaugeSLI:
    """Share of time a gauge, aggregated over ``by`` (a pool), is on the good side of a threshold.

    Example: the pool's average GPU utilization at or above 75%. Each second is one event.
    """

    metric: str
    threshold: float
    good_when: str  # ">=", ">", "<=" or "<"
    aggregate: str = "avg"  # avg | min | max | sum over the matching series
    selector: Mapping[str, str] = field(default_factory=frozen_map)
    by: tuple[str, ...] = ()
    kind: str = field(default="gauge", init=False)


SLI = LatencySLI | AvailabilitySLI | RatioSLI | GaugeSLI

# XIDs that mean a GPU needs attention now (NVIDIA's XID catalogue): 48 double-bit ECC, 63/64 row
# remapping, 74 NVLink, 79 fallen off the bus, 92 high single-bit ECC rate, 94/95 contained/uncontained
# ECC, 119/120 GSP, 140 unrecovered ECC.
CRITICAL_XIDS: tuple[int, ...] = (48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140)


@dataclass(frozen=True)
class GpuPool:
    """The GPUs serving a service, read through dcgm-exporter's (or forge-slo's exporter's) series."""

    selector: Mapping[str, str] = field(default_factory=frozen_map)
    price_per_gpu_hour: float | None = None
    unhealthy_for_seconds: float = 60.0
    thermal_for_seconds: float = 300.0
    critical_xids: tuple[int, ...] = CRITICAL_XIDS


@dataclass(frozen=True)
class BurnWindow:
    """Alert when the burn rate exceeds ``factor`` over both the long and the short window."""

    long_seconds: float
    short_seconds: float
    factor: float


@dataclass(frozen=True)
class AlertPolicy:
    severity: str
    windows: tuple[BurnWindow, ...]
    for_seconds: float
    labels: Mapping[str, str] = field(default_factory=frozen_map)
    annotations: Mapping[str, str] = field(default_factory=frozen_map)
    enabled: bool = True


@dataclass(frozen=True)
class SLO:
    name: str
    objective_percent: float
    sli: SLI
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=frozen_map)
    alert_name: str = ""  # overrides the derived burn-rate alert name
    # The SLO's own page and ticket policies where they differ from the service's (factors lowered for a low
    # objective, an imported per-SLO alerting section); None: the service's.
    alerting: tuple[AlertPolicy, AlertPolicy] | None = None

    @property
    def objective_ratio(self) -> float:
        return self.objective_percent / 100.0

    @property
    def error_budget_ratio(self) -> float:
        # Rounded so 99.9 gives 0.001, not 0.0010000000000000009.
        return round(1.0 - self.objective_percent / 100.0, 12)


@dataclass(frozen=True)
class BudgetPolicy:
    """What the service does as its error budget runs out: releases freeze while any SLO it covers has less
    than ``freeze_below_ratio`` of its period's budget left (``slos`` empty: every SLO of the service)."""

    freeze_below_ratio: float
    slos: tuple[str, ...] = ()

    def covers(self, slo: str) -> bool:
        return not self.slos or slo in self.slos


@dataclass(frozen=True)
class ServiceSpec:
    service: str
    preset: Preset
    period_seconds: float
    slos: tuple[SLO, ...]
    page: AlertPolicy
    ticket: AlertPolicy
    selector: Mapping[str, str] = field(default_factory=frozen_map)
    group_by: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=frozen_map)
    min_events: float = 10.0
    absent_for_seconds: float = 600.0
    description: str = ""
    source: str = ""
    source_format: str = "forge-slo/v1"
    gpu: GpuPool | None = None
    budget_policy: BudgetPolicy | None = None

    warnings: tuple[str, ...] = ()  # what loading changed or could not carry over, for the user to read

    def page_and_ticket(self, slo: SLO) -> tuple[AlertPolicy, AlertPolicy]:
        """The page and ticket policies of ``slo`` (its own, or the service's)."""
        return slo.alerting if slo.alerting is not None else (self.page, self.ticket)

    def policies(self, slo: SLO) -> tuple[AlertPolicy, ...]:
        """The enabled alert policies of ``slo``."""
        return tuple(p for p in self.page_and_ticket(slo) if p.enabled)

    def windows_seconds(self) -> list[float]:
        """Every alert window (long and short) of every enabled policy of every SLO, ascending, no repeats."""
        seen = {w for slo in self.slos for p in self.policies(slo) for b in p.windows
                for w in (b.long_seconds, b.short_seconds)}
        return sorted(seen)

    @property
    def base_window_seconds(self) -> float:
        """The shortest alert window: its recorded rates feed the period SLI."""
        windows = self.windows_seconds()
        return windows[0] if windows else 300.0


def default_windows(period_seconds: float) -> tuple[tuple[BurnWindow, ...], tuple[BurnWindow, ...]]:
    """The SRE workbook's windows, factors derived from the period.

    Page: 2% of the budget in 1h (short 5m) or 5% in 6h (short 30m). Ticket: 10% in 1d (short 2h) or 10%
    in 3d (short 6h). For 30 days that is 14.4x, 6x, 3x and 1x; for 28 days 13.44x, 5.6x, 2.8x and 0.93x.
    """

    def window(long_s: float, short_s: float, budget_share: float) -> BurnWindow:
        return BurnWindow(long_s, short_s, round(budget_share * period_seconds / long_s, 4))

    hour = 3600.0
    page = (window(hour, 300.0, 0.02), window(6 * hour, 1800.0, 0.05))
    ticket = (window(24 * hour, 2 * hour, 0.10), window(72 * hour, 6 * hour, 0.10))
    return page, ticket
