"""Durations, one syntax everywhere: spec files, config files, HTTP parameters and command-line flags.

A duration is one or more ``<number><unit>`` parts, largest unit first: ``30s``, ``5m``, ``1h30m``, ``30d``,
``2.5s``, ``500ms``. Units: ``ms s m h d w y`` (a year is 365 days). A number without a unit is refused
(``30`` could mean seconds or minutes); ``0`` is accepted only where zero means something (``for: 0``).
Prometheus writes durations the same way (a decimal such as ``2.5s`` is written back as ``2s500ms``).
"""

from __future__ import annotations

import argparse
import functools
import math
import re
from collections.abc import Callable

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0, "y": 365 * 86400.0}
_ORDER = ("y", "w", "d", "h", "m", "s", "ms")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y))+$")
MAX_TEXT = 32  # characters: longer text is refused before any digit is converted
MAX_SECONDS = 10 * 365 * 86400.0  # ten years: beyond it a value is a typo


def parse_duration(text: str, *, allow_zero: bool = False, maximum: float = MAX_SECONDS) -> float:
    """Seconds in ``text``; ValueError with a readable reason when it is not a duration of this syntax."""
    text = str(text).strip()
    if allow_zero and text in ("0", "0s"):
        return 0.0
    if len(text) > MAX_TEXT:
        raise ValueError(f"is not a duration: longer than {MAX_TEXT} characters")
    if not _WHOLE.match(text):
        hint = " (add a unit: 30s, 5m)" if re.fullmatch(r"\d+(\.\d+)?", text) else ""
        raise ValueError(f"{text!r} is not a duration{hint}; use e.g. 30s, 2.5s, 500ms, 5m, 1h30m, 30d")
    parts = _PART.findall(text)
    units = [unit for _, unit in parts]
    if len(set(units)) != len(units) or units != sorted(units, key=_ORDER.index):
        raise ValueError(f"{text!r}: give each unit once, largest first (e.g. 1h30m)")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero" + (" (or exactly 0)" if allow_zero else ""))
    if seconds > maximum:
        raise ValueError(f"{text!r} is longer than {format_duration(maximum)}, the most allowed here")
    return seconds


def duration_flag(*, allow_zero: bool = False, maximum: float = MAX_SECONDS) -> Callable[[str], float]:
    """An argparse ``type=`` for a duration flag: seconds, or argparse's usual error (exit 2) with the reason."""

    def parse(text: str) -> float:
        try:
            return parse_duration(text, allow_zero=allow_zero, maximum=maximum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "duration"  # argparse names the type in its message
    return parse


@functools.lru_cache(maxsize=1024)
def format_duration(seconds: float) -> str:
    """The shortest duration for a number of seconds: 300 -> ``5m``, 5400 -> ``1h30m``, 2.5 -> ``2s500ms``."""
    if seconds <= 0:
        raise ValueError("durations are positive")
    ms = round(seconds * 1000)
    out = []
    for unit, size in (("d", 86400_000), ("h", 3600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
