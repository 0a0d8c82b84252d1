"""Deterministic, fast YAML for the plain data forge-slo writes (mappings, lists, strings, numbers).

A small emitter of its own: PyYAML's representer dominated compile time (1,000 SLOs took seconds), and
owning the quoting rules keeps them obvious. Strings are written plain only when they cannot be read back
as anything else, single-quoted when printable on one line, and double-quoted with escapes otherwise.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*(:[A-Za-z0-9_./-]+)*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


@functools.lru_cache(maxsize=65536, typed=True)
def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if not isinstance(value, str):
        raise TypeError(f"cannot write {type(value).__name__} as YAML")
    if _PLAIN.match(value) and value.lower() not in _RESERVED:
        return value
    if value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    return json.dumps(value, ensure_ascii=False)


def _emit(value: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if type(item) is str:
                out.append(f"{pad}{scalar(key)}: {scalar(item)}")
            elif isinstance(item, dict | list) and item:
                out.append(f"{pad}{scalar(key)}:")
                _emit(item, indent + 2 if isinstance(item, dict) else indent, out)
            else:
                out.append(f"{pad}{scalar(key)}: {_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                sub: list[str] = []
                _emit(item, indent + 2, sub)
                out.append(f"{pad}- {sub[0][indent + 2:]}")
                out.extend(sub[1:])
            elif isinstance(item, list) and item:
                out.append(f"{pad}-")
                _emit(item, indent + 2, out)
            else:
                out.append(f"{pad}- {_inline(item)}")
    else:
        out.append(f"{pad}{scalar(value)}")


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return scalar(value)


def dump(data: Any, header: str = "") -> str:
    """``data`` as a YAML document, preceded by ``header`` as comment lines."""
    out = [f"# {line}" if line else "#" for line in header.splitlines()]
    _emit(data, 0, out)
    return "\n".join(out) + "\n"
