"""Checked reading of the JSON objects the processes of a load run send each other.

A message may come from another machine (a Locust worker), so every field is checked for its type: a wrong
one is a :class:`~forge_slo.errors.RunnerError` naming the message and the field, never a KeyError deep
inside the controller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from forge_slo.errors import RunnerError


class Fields:
    """The fields of one received JSON object, read with their expected types."""

    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, Mapping):
            raise RunnerError(f"malformed {what}: not a JSON object")
        self.data: Mapping[str, Any] = data
        self.what = what

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise RunnerError(f"malformed {self.what}: no {key!r}")
        return self.data[key]

    def _bad(self, key: str, kind: str) -> RunnerError:
        return RunnerError(f"malformed {self.what}: {key!r} is not {kind}")

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def whole(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "a whole number")
        return value

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._bad(key, "a finite number")
        return float(value)

    def maybe_text(self, key: str) -> str | None:
        return None if self.data.get(key) is None else self.text(key)

    def maybe_whole(self, key: str) -> int | None:
        return None if self.data.get(key) is None else self.whole(key)

    def maybe_number(self, key: str) -> float | None:
        return None if self.data.get(key) is None else self.number(key)

    def child(self, key: str) -> Fields:
        return Fields(self._get(key), f"{self.what}: {key}")

    def maybe_child(self, key: str) -> Fields | None:
        return None if self.data.get(key) is None else self.child(key)

    def children(self, key: str) -> list[Fields]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        return [Fields(item, f"{self.what}: {key}[{i}]") for i, item in enumerate(value)]

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._bad(key, "a list of strings")
        return tuple(value)

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in choices:
            raise self._bad(key, f"one of {', '.join(choices)}")
        return value
