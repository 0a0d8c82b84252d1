"""Writing compiled artifacts: all or nothing.

Files are written into a staging directory beside the target, then each directory forge-slo owns
(``prometheus/``, ``promtool-tests/``, ``grafana/``) is swapped into place whole, so a failure never leaves
a half-written tree and files of services that no longer exist disappear.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from forge_slo.compile.pipeline import Artifact
from forge_slo.errors import ForgeError


def write_tree(out: Path, artifacts: Sequence[Artifact], owned: Sequence[str]) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out))
    except OSError as exc:
        raise ForgeError(f"{out}: cannot create the output directory: {exc}") from None
    try:
        for artifact in artifacts:
            path = staging / artifact.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(artifact.content, encoding="utf-8")
        for name in owned:
            staged, target = staging / name, out / name
            if not staged.exists():
                continue
            old = staging / f"{name}.old"
            if target.exists():
                target.rename(old)
            staged.rename(target)
            if old.exists():
                shutil.rmtree(old)
    except OSError as exc:
        raise ForgeError(f"{out}: writing the output failed: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def stale_files(out: Path, artifacts: Sequence[Artifact], owned: Sequence[str]) -> list[str]:
    """Paths under ``out`` that differ from, lack, or are not among the artifacts (for ``--check``)."""
    expected = {a.path: a.content for a in artifacts}
    problems = []
    for rel, content in sorted(expected.items()):
        path = out / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.read_text(encoding="utf-8") != content:
            problems.append(f"{rel}: out of date")
    for name in owned:
        base = out / name
        if base.is_dir():
            for path in sorted(base.rglob("*")):
                rel = path.relative_to(out).as_posix()
                if path.is_file() and rel not in expected:
                    problems.append(f"{rel}: not produced by these specs")
    return problems
