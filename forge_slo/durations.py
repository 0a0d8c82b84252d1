"""Prometheus-style durations (``5m``, ``1h30m``, ``30d``) to and from seconds."""

from __future__ import annotations

import functools
import re

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_WHOLE = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration; raises ValueError with a readable reason."""
    text = text.strip()
    if not _WHOLE.match(text):
        raise ValueError(f"{text!r} is not a duration (use e.g. 30s, 5m, 1h30m, 30d)")
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return float(seconds)


@functools.lru_cache(maxsize=1024)
def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for a number of seconds: 300 -> ``5m``, 5400 -> ``1h30m``."""
    if seconds <= 0:
        raise ValueError("durations are positive")
    ms = round(seconds * 1000)
    out = []
    for unit, size in (("d", 86400_000), ("h", 3600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
