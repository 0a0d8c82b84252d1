"""Importers from the SLO formats users already have: Sloth, OpenSLO and Pyrra.

Each produces the same :class:`~forge_slo.spec.model.ServiceSpec` as forge-slo's own format, keeping what its
source says; what cannot be carried over is named in ``ServiceSpec.warnings``, what cannot be compiled is
refused at its line.
"""

from forge_slo.spec.importers.openslo import import_openslo
from forge_slo.spec.importers.pyrra import from_pyrra
from forge_slo.spec.importers.sloth import from_sloth, import_sloth

__all__ = ["from_pyrra", "from_sloth", "import_openslo", "import_sloth"]
