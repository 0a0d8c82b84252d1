"""Reading spec files: the only place that turns user YAML into typed spec objects.

It finds the files, reads each with line numbers (:mod:`forge_slo.spec.yamlnode`) and hands every document to
the parser of its format: forge-slo's own (:mod:`forge_slo.spec.native`), Sloth, OpenSLO or Pyrra
(:mod:`forge_slo.spec.importers`). A file may hold several YAML documents, or one list of documents (as the
OpenSLO SDK writes them). Sloth ``AlertWindows`` and OpenSLO documents are read across all files, since they
refer to each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from forge_slo.errors import SpecError, SpecErrors
from forge_slo.spec.importers import from_pyrra, import_openslo, import_sloth, openslo, pyrra, sloth
from forge_slo.spec.model import ServiceSpec
from forge_slo.spec.native import API_VERSION, parse_service
from forge_slo.spec.yamlnode import Node, load_documents, read_bytes

NATIVE, SLOTH, SLOTH_WINDOWS, OPENSLO, PYRRA = "forge-slo", "sloth", "sloth-windows", "openslo", "pyrra"


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


def load_specs(paths: Sequence[str | Path], *, native_histograms: bool = False) -> list[ServiceSpec]:
    """Every service in the given files, validated. Raises SpecErrors listing every bad document.

    ``native_histograms``: the Prometheus that will evaluate the rules reads native histograms, so SLIs on them
    (Pyrra's ``latencyNative``) compile; otherwise they are refused.
    """
    errors: list[SpecError] = []
    specs: list[ServiceSpec] = []
    shared: dict[str, list[Node]] = {SLOTH: [], SLOTH_WINDOWS: [], OPENSLO: []}
    try:
        files = spec_files(paths)
    except SpecError as exc:
        raise SpecErrors([exc]) from None
    for file in files:
        try:
            docs = documents(load_documents(read_bytes(file, what="the spec file"), str(file)))
        except SpecError as exc:
            errors.append(exc)
            continue
        if not docs:
            errors.append(SpecError("holds no spec: the file is empty (or only comments)", file=str(file)))
            continue
        for doc in docs:
            try:
                fmt = document_format(doc)
                if fmt in shared:
                    shared[fmt].append(doc)
                elif fmt == PYRRA:
                    specs.append(from_pyrra(doc, native_histograms=native_histograms))
                else:
                    specs.append(parse_service(doc))
            except SpecError as exc:
                errors.append(exc)
    read: set[str] = set()
    try:
        if shared[SLOTH] or shared[SLOTH_WINDOWS]:
            imported, used = import_sloth(shared[SLOTH], shared[SLOTH_WINDOWS])
            specs.extend(imported)
            read |= used
    except SpecErrors as exc:
        errors.extend(exc.errors)
    try:
        if shared[OPENSLO]:
            imported, used = import_openslo(shared[OPENSLO])
            specs.extend(imported)
            read |= used
    except SpecErrors as exc:
        errors.extend(exc.errors)
    errors.extend(_files_without_a_service(files, specs, errors, read))
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


def documents(docs: Sequence[Node]) -> list[Node]:
    """The documents of a file, a top-level list standing for its items; empty documents left out."""
    out: list[Node] = []
    for doc in docs:
        if isinstance(doc.value, list):
            out.extend(item for item in doc.value if item.value is not None)
        elif doc.value is not None:
            out.append(doc)
    return out


def _files_without_a_service(files: Sequence[Path], specs: Sequence[ServiceSpec], errors: Sequence[SpecError],
                             read: set[str]) -> list[SpecError]:
    """A file that yields no service, no error of its own and nothing a service read holds only documents that
    compile to nothing (OpenSLO SLI or Service documents without an SLO): saying nothing would compile nothing."""
    produced = {spec.source for spec in specs} | {e.file for e in errors} | read
    return [SpecError("holds no service spec: only documents that compile to nothing on their own (e.g. OpenSLO "
                      "SLI or Service documents, Sloth AlertWindows); an SLO document (kind: SLO) or a forge-slo "
                      "ServiceSLO is needed",
                      file=str(file)) for file in files if str(file) not in produced]


_EXPECTED = (f"{API_VERSION!r}, a Sloth \"version: prometheus/v1\" or {sloth.K8S_API!r}, OpenSLO "
             + ", ".join(repr(v) for v in openslo.VERSIONS) + f", or Pyrra {pyrra.API_VERSION!r}")


def document_format(doc: Node) -> str:
    """Which parser reads ``doc``: forge-slo, sloth, sloth-windows, openslo or pyrra."""
    items = doc.mapping()
    if "apiVersion" not in items:
        if "version" in items:
            version = items["version"].value
            if version == sloth.SPEC_VERSION:
                return SLOTH
            items["version"].fail(f"unsupported version {version!r}; Sloth specs use \"{sloth.SPEC_VERSION}\"")
        doc.fail(f"missing apiVersion (expected {_EXPECTED})")
    api = items["apiVersion"].string()
    if api == API_VERSION:
        return NATIVE
    if api in openslo.VERSIONS:
        return OPENSLO
    kinds = {sloth.K8S_API: {sloth.K8S_KIND: SLOTH, sloth.WINDOWS_KIND: SLOTH_WINDOWS},
             pyrra.API_VERSION: {pyrra.KIND: PYRRA}}
    if api in kinds:
        kind = items["kind"].string() if "kind" in items else doc.fail("missing required field 'kind'")
        if kind not in kinds[api]:
            items["kind"].fail(f"unsupported kind {kind!r} for {api}; expected {' or '.join(kinds[api])}")
        return kinds[api][kind]
    items["apiVersion"].fail(f"unsupported apiVersion {api!r}; expected {_EXPECTED}")
