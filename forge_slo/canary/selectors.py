"""Arm selectors: ``deployment=canary,namespace=prod`` -> equality matchers, validated at the edge."""

from __future__ import annotations

import json
from collections.abc import Mapping

from forge_slo import promql
from forge_slo.spec.model import frozen_map

RESERVED_LABELS = frozenset({"le", "quantile"})


class SelectorError(ValueError):
    """A selector that cannot be used; the message says which part and why."""


def parse_selector(text: str) -> Mapping[str, str]:
    """``a=x,b="y, z"`` -> {"a": "x", "b": "y, z"}; values with commas or quotes are written as JSON strings."""
    if not isinstance(text, str) or not text.strip():
        raise SelectorError("is empty; write label=value pairs separated by commas, e.g. deployment=canary")
    matchers: dict[str, str] = {}
    rest = text.strip()
    while rest:
        name, sep, rest = rest.partition("=")
        name = name.strip()
        if not sep:
            raise SelectorError(f"{name!r} has no '=value' (write label=value pairs separated by commas)")
        if rest.startswith(("~", "!")) or name.endswith("!"):
            raise SelectorError(f"{name.rstrip('!')}: only equality matchers (label=value) are supported")
        if not promql.is_label_name(name):
            raise SelectorError(f"{name!r} is not a valid label name")
        if name in RESERVED_LABELS:
            raise SelectorError(f"{name!r} is a histogram label and cannot select an arm")
        if name in matchers:
            raise SelectorError(f"{name!r} appears twice")
        rest = rest.lstrip()
        if rest.startswith('"'):
            try:
                value, end = json.JSONDecoder().raw_decode(rest)
            except json.JSONDecodeError:
                raise SelectorError(f"{name}: the quoted value is not closed or has a bad escape") from None
            rest = rest[end:].lstrip()
            if rest and not rest.startswith(","):
                raise SelectorError(f"{name}: unexpected text after the quoted value: {rest!r}")
        else:
            value, _, after = rest.partition(",")
            rest = "," + after if _ else ""
            value = value.strip()
            if '"' in value:
                raise SelectorError(f"{name}: quote the whole value as a JSON string, e.g. {name}=\"a,b\"")
        if not isinstance(value, str) or value == "":
            raise SelectorError(f"{name}: the value is empty")
        matchers[name] = value
        rest = rest[1:].lstrip() if rest.startswith(",") else rest
        if text.strip().endswith(",") and not rest:
            raise SelectorError("ends with a comma")
    return frozen_map(matchers)


def format_selector(matchers: Mapping[str, str]) -> str:
    """PromQL-style text of equality matchers, values quoted: ``{deployment="canary"}``."""
    return "{" + ",".join(f"{k}={promql.quote(v)}" for k, v in sorted(matchers.items())) + "}"


def check_arms(baseline: Mapping[str, str], canary: Mapping[str, str]) -> None:
    """The two arms must select different series."""
    if dict(baseline) == dict(canary):
        raise SelectorError(f"baseline and canary are the same selector {format_selector(baseline)}")
