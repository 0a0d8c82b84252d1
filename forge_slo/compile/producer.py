"""What an output of ``forge-slo compile`` is: a producer with a name, the folder it owns and ``produce``.

Adding an output is one module that defines a :class:`Producer` and one line in
:data:`forge_slo.compile.pipeline.PRODUCERS`; the CLI derives its flags (``--no-NAME``, ``--FOLDER-out``,
``--format``) from that list and the output writer gives the producer its folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from forge_slo.compile.artifact import Artifact
from forge_slo.spec.model import ServiceSpec

# Mimir's default ruler.max-rules-per-rule-group: groups this small load in Mimir, Cortex and Thanos unchanged.
DEFAULT_MAX_RULES_PER_GROUP = 20


@dataclass(frozen=True)
class RuleGroups:
    """How rules are grouped for the engine that evaluates them.

    ``max_rules``: at most this many rules per group (0: no limit); ``interval``, ``limit`` and
    ``query_offset`` (seconds, rules, seconds) are written on every group when set.
    """

    max_rules: int = DEFAULT_MAX_RULES_PER_GROUP
    interval_seconds: float | None = None
    limit: int | None = None
    query_offset_seconds: float | None = None


@dataclass(frozen=True)
class CompileOptions:
    """Choices that reach the producers. ``folders``: where each producer's folder is, relative to a common
    root (a producer that points at another's files, such as promtool tests at rule files, needs it)."""

    format: str = "prometheus"
    folders: Mapping[str, str] = field(default_factory=dict)
    groups: RuleGroups = field(default_factory=RuleGroups)

    def path_between(self, from_folder: str, to_folder: str, file: str) -> str:
        """``file`` in ``to_folder`` as a path relative to ``from_folder`` (``../prometheus/x.yaml``)."""
        start = self.folders.get(from_folder, from_folder)
        target = PurePosixPath(self.folders.get(to_folder, to_folder)) / file
        return os.path.relpath(target, start).replace(os.sep, "/")


@dataclass
class Produced:
    """What a producer made: files (paths relative to its folder) and warnings for the user."""

    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Producer:
    """One kind of output.

    ``produce`` is pure: specs and options in, files out, no I/O. ``formats`` are the values of ``--format``
    this producer understands, the first its default, each with a line for ``--help``; ``optional`` ones get a
    ``--no-NAME`` flag.
    """

    name: str
    folder: str
    description: str
    produce: Callable[[Sequence[ServiceSpec], CompileOptions], Produced]
    formats: Mapping[str, str] = field(default_factory=dict)
    optional: bool = True

    def artifacts(self, specs: Sequence[ServiceSpec], options: CompileOptions) -> tuple[list[Artifact], list[str]]:
        produced = self.produce(specs, options)
        return [Artifact(f"{self.folder}/{rel}", text) for rel, text in sorted(produced.files.items())], \
            produced.warnings
