"""YAML with line numbers, read with bounds: every value knows its file, line and field path, and fails with them.

Every reader of user configuration (spec files, simulator configs, fake fleets, game-day files) comes through
here, so hostile input gets one answer everywhere: a :class:`SpecError` naming the file and line, in bounded
time and memory, never a traceback. The bounds:

- a file holds at most :data:`MAX_FILE_BYTES` of UTF-8 text without NUL or other control characters, and
  at most :data:`MAX_DOCUMENTS` YAML documents (PyYAML reads some 100 KiB a second at worst, so this bounds time);
- values nest at most :data:`MAX_DEPTH` levels, counting what aliases expand to;
- aliases (``*name``) materialise at most :data:`MAX_ALIAS_NODES` values in a file, so a few hundred bytes of
  nested aliases (a "billion laughs") are refused at once, and an alias inside its own anchor is refused;
- integers are at most :data:`MAX_INTEGER` in magnitude (every consumer reads numbers as floats).

Data that was parsed elsewhere (a JSON request body) becomes Nodes through :func:`from_data`, with the same
field paths and checks, so a file and an API validate identically.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from yaml.constructor import SafeConstructor

from forge_slo.errors import SpecError

MAX_FILE_BYTES = 256 * 1024  # the examples are under 2 KiB
MAX_DOCUMENTS = 1000
MAX_DEPTH = 64
MAX_ALIAS_NODES = 10_000
MAX_INTEGER = 2**53  # beyond it a float cannot hold every integer, and every consumer reads floats
# Longer integer text is refused before it is converted (int() of huge text is slow, and raises past 4300).
_MAX_INTEGER_TEXT = 80
# The characters YAML allows (the same class PyYAML's reader checks), so a bad one is reported with its line.
_NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TAG = "tag:yaml.org,2002:"


@dataclass(frozen=True)
class Node:
    """A YAML value with where it came from. ``value`` holds Nodes inside mappings and lists."""

    value: Any
    file: str
    line: int | None
    path: str

    def fail(self, reason: str) -> NoReturn:
        raise SpecError(reason, file=self.file, line=self.line, field=self.path)

    def child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    # Shapes --------------------------------------------------------------------------------------------
    def mapping(self, allowed: set[str] | None = None, required: tuple[str, ...] = ()) -> dict[str, Node]:
        if not isinstance(self.value, dict):
            self.fail(f"must be a mapping, got {describe(self.value)}")
        items: dict[str, Node] = self.value
        if allowed is not None:
            for key, node in items.items():
                if key not in allowed:
                    hint = difflib.get_close_matches(key, sorted(allowed), n=1)
                    extra = f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {', '.join(sorted(allowed))}"
                    Node(None, self.file, node.line, self.child_path(key)).fail(f"unknown field{extra}")
        for key in required:
            if key not in items:
                self.fail(f"missing required field {key!r}")
        return items

    def items(self) -> Iterator[tuple[str, Node]]:
        yield from self.mapping().items()

    def sequence(self) -> list[Node]:
        if not isinstance(self.value, list):
            self.fail(f"must be a list, got {describe(self.value)}")
        return list(self.value)

    def string(self, *, non_empty: bool = True) -> str:
        if not isinstance(self.value, str):
            self.fail(f"must be a string, got {describe(self.value)}")
        if non_empty and not self.value.strip():
            self.fail("must not be empty")
        return self.value

    def number(self, *, minimum: float | None = None, maximum: float | None = None,
               above: float | None = None) -> float:
        """A finite number, optionally within bounds (``above``: a lower bound the value may not equal)."""
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            self.fail(f"must be a number, got {describe(self.value)}")
        if not math.isfinite(self.value):
            self.fail("must be a finite number")
        value = float(self.value)
        self._check_range(value, minimum, maximum, above)
        return value

    def integer(self, *, minimum: int | None = None, maximum: int | None = None) -> int:
        """A whole number (``3`` or ``3.0``), optionally within bounds."""
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"must be an integer, got {describe(value)}")
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                self.fail(f"must be an integer (a whole number), got {_fmt(value)}")
            value = int(value)
        self._check_range(value, minimum, maximum, None)
        return value

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            self.fail(f"must be true or false, got {describe(self.value)}")
        return self.value

    def choice(self, choices: tuple[str, ...]) -> str:
        if not isinstance(self.value, str) or self.value not in choices:
            self.fail(f"must be one of {', '.join(choices)}, got {describe(self.value)}")
        return self.value

    def string_map(self) -> dict[str, str]:
        out = {}
        for key, node in self.items():
            out[key] = node.string(non_empty=False)
        return out

    def plain(self) -> Any:
        """The value with Nodes unwrapped (for passing through data we do not interpret)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value

    def _check_range(self, value: float, minimum: float | None, maximum: float | None,
                     above: float | None) -> None:
        low_ok = (minimum is None or value >= minimum) and (above is None or value > above)
        if low_ok and (maximum is None or value <= maximum):
            return
        parts = []
        if above is not None:
            parts.append(f"above {_fmt(above)}")
        if minimum is not None and maximum is not None and above is None:
            parts.append(f"between {_fmt(minimum)} and {_fmt(maximum)}")
        else:
            if minimum is not None:
                parts.append(f"at least {_fmt(minimum)}")
            if maximum is not None:
                parts.append(f"at most {_fmt(maximum)}")
        self.fail(f"must be {' and '.join(parts)}, got {_fmt(value)}")


def _fmt(value: float) -> str:
    """A number as a person writes it: 3600, 0.5, 1e+308."""
    if float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}"


def describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({_fmt(value)})"
    if isinstance(value, str):
        return f"a string ({value[:80]!r})" if len(value) <= 80 else f"a string ({value[:80]!r}...)"
    return f"a {type(value).__name__} ({str(value)[:80]})"


# Reading ------------------------------------------------------------------------------------------------

def load_file(path: str | Path, *, what: str = "the file") -> list[Node]:
    """Every document of a YAML file as Nodes; any bytes end in Nodes or a SpecError naming file and line."""
    return load_documents(read_bytes(path, what=what), str(path))


def read_bytes(path: str | Path, *, what: str = "the file") -> bytes:
    """A file's bytes, at most :data:`MAX_FILE_BYTES` of them; ``what`` names the file in the error."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read {what}: {exc.strerror or exc}", file=str(path)) from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(_too_large(), file=str(path))
    return data


def load_documents(text: str | bytes, file: str) -> list[Node]:
    """Every document of a YAML stream as Nodes; broken or hostile YAML raises SpecError with its line."""
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(_too_large(), file=file)
    if isinstance(text, bytes):
        text = _decode(text, file)
    _check_characters(text, file)
    try:
        loader = _loader(text, file)
        try:
            docs: list[Node] = []
            converter = _Converter(loader, file)  # one for the file: the alias budget is the file's
            while loader.check_node():
                node = loader.get_node()
                if node is not None:
                    docs.append(converter.document(node))
            return docs
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise SpecError(f"invalid YAML: {reason}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=file) from None


def _too_large() -> str:
    return f"is larger than {MAX_FILE_BYTES // 1024} KiB; configuration files are small"


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"is not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded; save the file as "
                        "UTF-8", file=file, line=line) from None


def _check_characters(text: str, file: str) -> None:
    bad = _NOT_PRINTABLE.search(text)
    if bad is None:
        return
    char = bad.group()
    line = text.count("\n", 0, bad.start()) + 1
    what = "a NUL byte (U+0000)" if char == "\0" else f"the character U+{ord(char):04X}"
    raise SpecError(f"holds {what}, which YAML text may not contain", file=file, line=line)


def _loader(text: str, file: str) -> yaml.SafeLoader | yaml.CSafeLoader:
    """libyaml's loader when PyYAML has it (some 20 times faster), after a pass over its events checks what its
    composer, which recurses in C, would meet; else the pure-Python one with the same bounds."""
    if not yaml.__with_libyaml__:
        return _BoundedLoader(text, file)
    events = yaml.CSafeLoader(text)
    depth = documents = 0
    try:
        while events.check_event():
            event = events.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError(_too_deep(), file=file, line=_line_of(event))
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > MAX_DOCUMENTS:
                    raise SpecError(_too_many(), file=file, line=_line_of(event))
    finally:
        events.dispose()
    return yaml.CSafeLoader(text)


def _line_of(event: yaml.Event) -> int | None:
    return event.start_mark.line + 1 if event.start_mark is not None else None


def _too_deep() -> str:
    return f"values nest deeper than {MAX_DEPTH} levels"


def _too_many() -> str:
    return f"holds more than {MAX_DOCUMENTS} YAML documents"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader whose composer, which recurses once per level, stops at the bounds."""

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file = file
        self.depth = 0
        self.documents = 0

    def _line(self) -> int | None:
        return _line_of(self.peek_event())  # type: ignore[no-untyped-call]  # the stubs leave it untyped

    def compose_document(self) -> yaml.Node | None:
        self.documents += 1
        if self.documents > MAX_DOCUMENTS:
            raise SpecError(_too_many(), file=self.file, line=self._line())
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        collection = self.check_event(yaml.CollectionStartEvent)
        if collection and self.depth >= MAX_DEPTH:
            raise SpecError(_too_deep(), file=self.file, line=self._line())
        self.depth += collection
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= collection


class _Converter:
    """Turns a file's composed documents into Nodes, counting what aliases materialise.

    The composed graph shares one yaml node per anchor, so an alias is a second visit to a node already
    seen; everything below such a visit counts against :data:`MAX_ALIAS_NODES`, for the whole file (anchors
    are per document, so a per-document budget would let a thousand small bombs through).
    """

    def __init__(self, loader: SafeConstructor, file: str) -> None:
        self.loader = loader
        self.file = file
        self.seen: set[int] = set()
        self.open: set[int] = set()  # nodes being converted: meeting one again means it contains itself
        self.expanded = 0

    def document(self, node: yaml.Node) -> Node:
        self.seen.clear()
        self.open.clear()
        return self.convert(node, "", 1, node.start_mark.line + 1)

    def fail(self, node: yaml.Node, path: str, reason: str) -> NoReturn:
        raise SpecError(reason, file=self.file, line=node.start_mark.line + 1, field=path)

    def convert(self, node: yaml.Node, path: str, depth: int, ref_line: int,
                expansion: tuple[int, str] | None = None) -> Node:
        """``ref_line``: where the value is referred to; ``expansion``: line and path of the alias being expanded."""
        key = id(node)
        if key in self.open:
            raise SpecError("an alias refers to the value that contains it (a recursive alias)", file=self.file,
                            line=ref_line, field=path)
        if expansion is None and key in self.seen:
            expansion = (ref_line, path)
        self.seen.add(key)
        if expansion is not None:
            self.expanded += 1
            if self.expanded > MAX_ALIAS_NODES:
                raise SpecError(f"aliases expand to more than {MAX_ALIAS_NODES} values; write the values out or "
                                "nest fewer aliases", file=self.file, line=expansion[0], field=expansion[1])
        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            return Node(self.scalar(node, path), self.file, line, path)
        if depth > MAX_DEPTH:
            self.fail(node, path, f"{_too_deep()} (counting what aliases expand to)")
        self.open.add(key)
        try:
            if isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map":
                return Node(self.mapping(node, path, depth, expansion), self.file, line, path)
            if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
                items = [self.convert(v, f"{path}[{i}]", depth + 1, line, expansion) for i, v in enumerate(node.value)]
                return Node(items, self.file, line, path)
            self.fail(node, path, f"the tag {node.tag!r} is not supported here")
        finally:
            self.open.discard(key)

    def mapping(self, node: yaml.MappingNode, path: str, depth: int,
                expansion: tuple[int, str] | None) -> dict[str, Node]:
        own: dict[str, Node] = {}
        merged: dict[str, Node] = {}  # from merge keys (<<): the mapping's own keys win, then earlier sources
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _TAG + "merge":
                for source in self.merge_sources(value_node, path):
                    converted = self.convert(source, path, depth, key_line, expansion)
                    for key, value in converted.value.items():
                        merged.setdefault(key, value)
                continue
            key = self.key(key_node, path)
            child = f"{path}.{key}" if path else key
            if key in own:
                self.fail(key_node, child, "duplicate key")
            own[key] = self.convert(value_node, child, depth + 1, key_line, expansion)
        return {**merged, **own}

    def merge_sources(self, node: yaml.Node, path: str) -> list[yaml.Node]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self.fail(source, path, "a merge key (<<) takes a mapping or a list of mappings")
        return list(sources)

    def key(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            shape = "a mapping" if isinstance(node, yaml.MappingNode) else "a list"
            self.fail(node, path, f"keys must be strings, got {shape}")
        if node.tag == _TAG + "value":  # the YAML 1.1 value key `=`: a plain string to us
            return str(node.value)
        key = self.scalar(node, path)
        if not isinstance(key, str):
            self.fail(node, path, f"keys must be strings, got {describe(key)}")
        return key

    def scalar(self, node: yaml.ScalarNode, path: str) -> Any:
        if node.tag == _TAG + "int" and len(node.value) > _MAX_INTEGER_TEXT:
            self.fail(node, path, f"the integer is too large (at most {MAX_INTEGER} in magnitude)")
        try:
            value = self.loader.construct_object(node)
        except (ValueError, OverflowError) as exc:  # 2024-13-45 reads as a timestamp, and is no date
            self.fail(node, path, f"{node.value[:80]!r} is not a valid {node.tag.removeprefix(_TAG)}: {exc}")
        problem = _value_problem(value)
        if problem:
            self.fail(node, path, problem)
        return value


def _value_problem(value: object) -> str | None:
    """Why a scalar is refused: an integer no consumer can hold, or a string with control characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
        return f"the integer is too large (at most {MAX_INTEGER} in magnitude)"
    if isinstance(value, str):
        bad = _NOT_PRINTABLE.search(value)
        if bad is not None:
            return f"holds the control character U+{ord(bad.group()):04X}, which no value may contain"
    return None


# Data parsed elsewhere ------------------------------------------------------------------------------------

def from_data(value: object, file: str = "<data>", path: str = "") -> Node:
    """Nodes (no line numbers) from already-parsed data such as a JSON body, with the same checks as files.

    A list or mapping met twice (shared, as an alias shares in YAML) counts against the same budget.
    """
    return _DataConverter(file).convert(value, path, 1, shared=False)


class _DataConverter:
    def __init__(self, file: str) -> None:
        self.file = file
        self.seen: set[int] = set()
        self.open: set[int] = set()
        self.expanded = 0

    def convert(self, value: object, path: str, depth: int, *, shared: bool) -> Node:
        where = Node(None, self.file, None, path)
        problem = _value_problem(value)
        if problem:
            where.fail(problem)
        if shared:
            self.expanded += 1
            if self.expanded > MAX_ALIAS_NODES:
                where.fail(f"shared values expand to more than {MAX_ALIAS_NODES} values")
        if not isinstance(value, Mapping | list | tuple):
            return Node(value, self.file, None, path)
        if depth > MAX_DEPTH:
            where.fail(_too_deep())
        key = id(value)
        if key in self.open:
            where.fail("the value contains itself")
        shared = shared or key in self.seen
        self.seen.add(key)
        self.open.add(key)
        try:
            if isinstance(value, Mapping):
                out: dict[str, Node] = {}
                for name, item in value.items():
                    if not isinstance(name, str):
                        where.fail(f"keys must be strings, got {describe(name)}")
                    out[name] = self.convert(item, where.child_path(name), depth + 1, shared=shared)
                return Node(out, self.file, None, path)
            items = [self.convert(item, f"{path}[{i}]", depth + 1, shared=shared) for i, item in enumerate(value)]
            return Node(items, self.file, None, path)
        finally:
            self.open.discard(key)
