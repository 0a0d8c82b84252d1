"""Writing compiled artifacts: all or nothing.

Each directory forge-slo owns (``prometheus/``, ``promtool-tests/``, ``grafana/``) is written into a
staging directory beside its destination and then swapped into place whole, so a failure never leaves a
half-written tree and files of services that no longer exist disappear.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from forge_slo.compile.pipeline import Artifact
from forge_slo.errors import ForgeError, UsageError


def _split(artifacts: Sequence[Artifact], targets: Mapping[str, Path]) -> dict[str, dict[str, str]]:
    """Artifacts grouped by owned directory: {"grafana": {"chat.json": "..."}}."""
    groups: dict[str, dict[str, str]] = {name: {} for name in targets}
    for artifact in artifacts:
        top, _, rest = artifact.path.partition("/")
        if top not in targets:
            raise ValueError(f"artifact {artifact.path} is outside the owned directories")
        groups[top][rest] = artifact.content
    return groups


def write_tree(artifacts: Sequence[Artifact], targets: Mapping[str, Path]) -> None:
    """Replace each target directory with the artifacts under its name (``targets``: owned dir -> path)."""
    staged: list[tuple[Path, Path]] = []
    for target in targets.values():
        for path in (target, *target.parents):
            if path.exists() and not path.is_dir():
                raise UsageError(f"{path} is a file: the output needs a directory there")
    try:
        for name, files in _split(artifacts, targets).items():
            if not files:
                continue
            target = targets[name]
            target.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
            staged.append((stage, target))
            for rel, content in files.items():
                path = stage / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content, encoding="utf-8")
        for stage, target in staged:
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                target.rename(old)
            stage.rename(target)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise ForgeError(f"writing the output failed: {exc}") from None
    finally:
        for stage, _ in staged:
            shutil.rmtree(stage, ignore_errors=True)


def stale_files(artifacts: Sequence[Artifact], targets: Mapping[str, Path]) -> list[str]:
    """Files that differ from, lack, or are not among the artifacts (for ``--check``)."""
    problems = []
    for name, files in _split(artifacts, targets).items():
        base = targets[name]
        for rel, content in sorted(files.items()):
            path = base / rel
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.read_text(encoding="utf-8") != content:
                problems.append(f"{path}: out of date")
        if base.is_dir():
            for path in sorted(p for p in base.rglob("*") if p.is_file()):
                if path.relative_to(base).as_posix() not in files:
                    problems.append(f"{path}: not produced by these specs")
    return problems
