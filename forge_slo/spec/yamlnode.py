"""YAML with line numbers: every value knows its file, line and field path, and fails with them."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import yaml

from forge_slo.errors import SpecError


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

    def number(self) -> float:
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            self.fail(f"must be a number, got {describe(self.value)}")
        if not math.isfinite(self.value):
            self.fail("must be a finite number")
        return float(self.value)

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            self.fail(f"must be true or false, got {describe(self.value)}")
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
        return f"a number ({value})"
    return f"a string ({value!r})"


def load_documents(text: str, file: str) -> list[Node]:
    """Every document of a YAML stream as Nodes; broken YAML raises SpecError with its line."""
    loader = yaml.SafeLoader(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                docs.append(_convert(loader, node, file, ""))
        return docs
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise SpecError(f"invalid YAML: {reason}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()


def _convert(loader: yaml.SafeLoader, node: yaml.Node, file: str, path: str) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise SpecError(f"keys must be strings, got {describe(key)}", file=file,
                                line=key_node.start_mark.line + 1, field=path)
            child = f"{path}.{key}" if path else key
            if key in out:
                raise SpecError("duplicate key", file=file, line=key_node.start_mark.line + 1, field=child)
            out[key] = _convert(loader, value_node, file, child)
        return Node(out, file, line, path)
    if isinstance(node, yaml.SequenceNode):
        return Node([_convert(loader, v, file, f"{path}[{i}]") for i, v in enumerate(node.value)], file, line, path)
    return Node(loader.construct_object(node, deep=True), file, line, path)
