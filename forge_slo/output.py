"""Writing compiled artifacts: only files forge-slo generated, all or nothing, with the user's umask.

Every directory forge-slo writes into keeps a manifest (:data:`MANIFEST`) listing the files it wrote there.
A run writes its files, removes the files it wrote before that no spec produces any more, and touches
nothing else: a file forge-slo did not write is never replaced or deleted (the run stops before writing
anything instead). A file without a manifest entry counts as forge-slo's when it carries the header
every generated file has (output of releases that kept no manifest).

All or nothing: every file is first written beside its destination under a temporary name, then all are
renamed into place; a failure before the renames leaves the tree as it was, and a failure during them puts
back what was there. Files and folders are created like any other tool's output (mode 0666/0777 less the
umask), so a Prometheus or Grafana running as another user can read them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from forge_slo.compile.artifact import GENERATED_MARK, Artifact
from forge_slo.errors import ForgeError, UsageError

MANIFEST = ".forge-slo-manifest"
_MANIFEST_HEAD = "# Files forge-slo compile wrote in this folder; it removes or replaces only these.\n"
_TMP_TAG = ".forge-slo-tmp-"
_MARK_SCAN_BYTES = 4096
# The overview dashboard of releases before the manifest said only this of itself.
_LEGACY_MARKS = (b"compiled by forge-slo. Generated; do not edit.",)


@dataclass
class DirPlan:
    """What one run does in one output folder."""

    name: str                     # the producer's folder name (``prometheus``, ``grafana``, ...)
    path: Path                    # where it lives (symlinks resolved)
    files: dict[str, str]         # relative path -> content to write
    owned: set[str]               # files listed in the folder's manifest before this run
    stale: list[str] = field(default_factory=list)  # owned files no spec produces any more

    @property
    def manifest_text(self) -> str:
        return _MANIFEST_HEAD + "".join(f"{rel}\n" for rel in sorted(self.files))


def group_artifacts(artifacts: Sequence[Artifact], targets: Mapping[str, Path]) -> dict[str, dict[str, str]]:
    """Artifacts by output folder: ``{"grafana": {"chat.json": "..."}}``."""
    groups: dict[str, dict[str, str]] = {name: {} for name in targets}
    for artifact in artifacts:
        top, _, rest = artifact.path.partition("/")
        if top not in targets:
            raise ValueError(f"artifact {artifact.path} is outside the output folders")
        groups[top][rest] = artifact.content
    return groups


def plan_output(artifacts: Sequence[Artifact], targets: Mapping[str, Path]) -> list[DirPlan]:
    """Check every destination before anything is written; UsageError (exit 2) names the first problem."""
    resolved = {name: _resolve_dir(path) for name, path in targets.items()}
    _refuse_overlaps(targets, resolved)
    plans = []
    for name, files in group_artifacts(artifacts, targets).items():
        path = resolved[name]
        plan = DirPlan(name, path, files, _read_manifest(path))
        for rel in sorted(files):
            _check_destination(plan, rel)
        plan.stale = sorted(rel for rel in plan.owned - set(files) if _is_plain_file(path / rel))
        plans.append(plan)
    return plans


def write_output(artifacts: Sequence[Artifact], targets: Mapping[str, Path]) -> list[DirPlan]:
    """Write the artifacts into their folders (see the module docstring); returns what was done."""
    plans = plan_output(artifacts, targets)
    writes: list[tuple[Path, str]] = []
    for plan in plans:
        if not plan.files and not plan.owned:
            continue  # a producer with nothing to say leaves a folder it never wrote alone
        writes.extend((plan.path / rel, content) for rel, content in sorted(plan.files.items()))
        writes.append((plan.path / MANIFEST, plan.manifest_text))
    try:
        _commit(writes)
        for plan in plans:
            for rel in plan.stale:
                (plan.path / rel).unlink()
    except OSError as exc:
        raise ForgeError(f"writing the output failed: {exc}; nothing was changed") from None
    return plans


def stale_files(artifacts: Sequence[Artifact], targets: Mapping[str, Path]) -> list[str]:
    """Differences between the folders and what the artifacts would make them (for ``--check``)."""
    problems = []
    for plan in plan_output(artifacts, targets):
        for rel, content in sorted(plan.files.items()):
            path = plan.path / rel
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.read_text(encoding="utf-8", errors="replace") != content:
                problems.append(f"{path}: out of date")
        problems.extend(f"{plan.path / rel}: no longer produced by these specs" for rel in plan.stale)
        manifest = plan.path / MANIFEST
        if plan.files and (not manifest.is_file() or manifest.read_text(encoding="utf-8") != plan.manifest_text):
            problems.append(f"{manifest}: out of date")
    return problems


# Checks ---------------------------------------------------------------------------------------------------

def _resolve_dir(path: Path) -> Path:
    """The folder ``path`` names, symlinks followed; it or its nearest existing parent must be a folder."""
    full = Path(os.path.abspath(path))
    existing = full
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise UsageError(f"{existing} is a broken symbolic link: the output needs a folder there")
    if not existing.is_dir():
        raise UsageError(f"{existing} is a file: the output needs a folder there")
    return existing.resolve() / full.relative_to(existing)


def _refuse_overlaps(targets: Mapping[str, Path], resolved: Mapping[str, Path]) -> None:
    names = sorted(resolved)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = resolved[a], resolved[b]
            if pa == pb:
                raise UsageError(f"the {a} and {b} output folders are the same folder ({targets[a]}); give each "
                                 "its own folder")
            for outer, inner in ((a, b), (b, a)):
                if resolved[inner].is_relative_to(resolved[outer]):
                    raise UsageError(f"the {outer} output folder {targets[outer]} encloses the {inner} output "
                                     f"folder {targets[inner]}; give them folders side by side")


def _read_manifest(folder: Path) -> set[str]:
    path = folder / MANIFEST
    if not path.exists():
        return set()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read forge-slo's manifest ({exc}); remove it to start afresh") from None
    owned = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        if not _is_safe_relative(line):
            raise UsageError(f"{path}:{number}: {line!r} is not a file inside this folder; the manifest is "
                             "damaged: remove it to start afresh")
        owned.add(line)
    return owned


def _is_safe_relative(rel: str) -> bool:
    pure = PurePosixPath(rel)
    return not pure.is_absolute() and ".." not in pure.parts and rel not in ("", ".") and "\\" not in rel


def _is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _check_destination(plan: DirPlan, rel: str) -> None:
    path = plan.path / rel
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link: forge-slo writes only plain files it owns; remove the link")
    if path.exists() and not path.is_file():
        raise UsageError(f"{path} exists and is not a file: forge-slo cannot write its output there")
    if path.exists() and rel not in plan.owned and not _carries_mark(path):
        raise UsageError(f"{path} exists and forge-slo did not write it; move it away or choose another output "
                         "folder (forge-slo never replaces files it did not generate)")
    for parent in PurePosixPath(rel).parents:
        folder = plan.path / parent
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file: the output needs a folder there")


def _carries_mark(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(_MARK_SCAN_BYTES)
    except OSError:
        return False
    return any(mark in head for mark in (GENERATED_MARK.encode(), *_LEGACY_MARKS))


# Writing --------------------------------------------------------------------------------------------------

def _commit(writes: Sequence[tuple[Path, str]]) -> None:
    """Write every file under a temporary name, then rename all into place; undo everything on failure."""
    created_dirs: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    done: list[tuple[Path, bytes | None]] = []
    try:
        for dest, content in writes:
            created_dirs.extend(_make_dirs(dest.parent))
            staged.append((_write_temp(dest, content), dest))
        for tmp, dest in staged:
            previous = dest.read_bytes() if dest.exists() else None
            os.replace(tmp, dest)
            done.append((dest, previous))
    except BaseException:
        for dest, previous in reversed(done):
            with contextlib.suppress(OSError):
                if previous is None:
                    dest.unlink()
                else:
                    _write_temp_and_replace(dest, previous)
        for folder in reversed(created_dirs):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _make_dirs(folder: Path) -> Iterator[Path]:
    """Create ``folder`` and missing parents (mode 0777 less the umask); yields the ones it created."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        yield path


def _write_temp(dest: Path, content: str | bytes) -> Path:
    data = content.encode("utf-8") if isinstance(content, str) else content
    for attempt in range(100):
        tmp = dest.with_name(f".{dest.name}{_TMP_TAG}{os.getpid()}-{attempt}")
        try:
            # os.open with 0o666 lets the umask decide the mode, as for any file a program writes.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return tmp
    raise OSError(f"cannot create a temporary file beside {dest}")


def _write_temp_and_replace(dest: Path, data: bytes) -> None:
    tmp = _write_temp(dest, data)
    os.replace(tmp, dest)
