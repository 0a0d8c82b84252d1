"""SLO specs: the typed model, loading YAML with line numbers, presets and importers."""

from forge_slo.spec.loader import load_specs
from forge_slo.spec.model import (
           SLI,
           SLO,
           AlertPolicy,
           AvailabilitySLI,
           BurnWindow,
           LatencySLI,
           RatioSLI,
           ServiceSpec,
)

__all__ = ["SLI", "SLO", "AlertPolicy", "AvailabilitySLI", "BurnWindow", "LatencySLI", "RatioSLI", "ServiceSpec",
           "load_specs"]
