"""Reading spec files: the only place that turns user YAML into typed spec objects.

It finds the files, reads each with line numbers (:mod:`forge_slo.spec.yamlnode`) and hands every document
to the parser of its format: forge-slo's own (:mod:`forge_slo.spec.native`), Sloth or OpenSLO
(:mod:`forge_slo.spec.importers`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from forge_slo.errors import SpecError, SpecErrors
from forge_slo.spec import importers
from forge_slo.spec.model import ServiceSpec
from forge_slo.spec.native import API_VERSION, parse_service
from forge_slo.spec.yamlnode import Node, load_documents, read_bytes


def spec_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named on the command line; a directory means all its ``*.yaml``/``*.yml`` (sorted, not nested)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                raise SpecError("no *.yaml or *.yml files in this directory", file=str(path))
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise SpecError("no such file or directory", file=str(path))
    return out


def load_specs(paths: Sequence[str | Path]) -> list[ServiceSpec]:
    """Every service in the given files, validated. Raises SpecErrors listing every bad document."""
    errors: list[SpecError] = []
    specs: list[ServiceSpec] = []
    openslo_docs: list[Node] = []
    try:
        files = spec_files(paths)
    except SpecError as exc:
        raise SpecErrors([exc]) from None
    for file in files:
        try:
            docs = load_documents(read_bytes(file, what="the spec file"), str(file))
        except SpecError as exc:
            errors.append(exc)
            continue
        if not any(doc.value is not None for doc in docs):
            errors.append(SpecError("holds no spec: the file is empty (or only comments)", file=str(file)))
            continue
        for doc in docs:
            if doc.value is None:
                continue
            try:
                fmt = document_format(doc)
                if fmt == "openslo":
                    openslo_docs.append(doc)
                elif fmt == "sloth":
                    specs.append(importers.from_sloth(doc))
                else:
                    specs.append(parse_service(doc))
            except SpecError as exc:
                errors.append(exc)
    if openslo_docs:
        try:
            specs.extend(importers.from_openslo(openslo_docs))
        except SpecErrors as exc:
            errors.extend(exc.errors)
    errors.extend(_files_without_a_service(files, specs, errors))
    seen: dict[str, ServiceSpec] = {}
    for spec in specs:
        if spec.service in seen:
            errors.append(SpecError(
                f"service {spec.service!r} is also defined in {seen[spec.service].source}; "
                "each service compiles to its own files, so names must be unique",
                file=spec.source, field="service"))
        seen[spec.service] = spec
    if errors:
        raise SpecErrors(errors)
    return sorted(specs, key=lambda s: s.service)


def _files_without_a_service(files: Sequence[Path], specs: Sequence[ServiceSpec],
                             errors: Sequence[SpecError]) -> list[SpecError]:
    """A file that yields no service and no error of its own holds only documents that compile to nothing
    (OpenSLO SLI, Service or AlertPolicy documents without an SLO): saying nothing would compile nothing."""
    produced = {spec.source for spec in specs} | {e.file for e in errors}
    return [SpecError("holds no service spec: only documents that compile to nothing on their own (e.g. OpenSLO "
                      "SLI or Service documents); an SLO document (kind: SLO) or a forge-slo ServiceSLO is needed",
                      file=str(file)) for file in files if str(file) not in produced]


def document_format(doc: Node) -> str:
    items = doc.mapping()
    if "version" in items and "apiVersion" not in items:
        version = items["version"].value
        if version == "prometheus/v1":
            return "sloth"
        items["version"].fail(f"unsupported version {version!r}; Sloth specs use \"prometheus/v1\"")
    if "apiVersion" not in items:
        doc.fail(f"missing apiVersion (expected {API_VERSION!r}, \"openslo/v1\", "
                 "or a Sloth \"version: prometheus/v1\")")
    api = items["apiVersion"].value
    if api == API_VERSION:
        return "forge-slo"
    if api == "openslo/v1":
        return "openslo"
    items["apiVersion"].fail(f"unsupported apiVersion {api!r}; expected {API_VERSION!r} or \"openslo/v1\"")


