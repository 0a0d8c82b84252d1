"""Helpers shared by the activities: HTTP calls that fail with RunnerError, exposition scraping, windows."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from forge_slo.durations import format_duration, parse_duration
from forge_slo.errors import RunnerError, SourceError, UsageError

T = TypeVar("T")
MAX_WAIT_S = 3600.0


def window_seconds(text: str, what: str = "window") -> float:
    try:
        return parse_duration(str(text))
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def window_text(text: str, what: str = "window") -> str:
    return format_duration(window_seconds(text, what))


def check_wait(timeout_s: float, poll_s: float) -> None:
    if not 0 < float(timeout_s) <= MAX_WAIT_S:
        raise UsageError(f"timeout_s: {timeout_s!r}; use a number of seconds above 0 and at most {MAX_WAIT_S:g}")
    if not 0 < float(poll_s) <= 60:
        raise UsageError(f"poll_s: {poll_s!r}; use a number of seconds above 0 and at most 60")


def base_url(url: str, what: str) -> str:
    url = str(url).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{what}: {url!r} is not an http:// or https:// URL")
    return url


def request_json(method: str, url: str, *, body: Any = None, token: str = "", timeout_s: float = 10.0,
                 ok: tuple[int, ...] = (200, 201, 204)) -> tuple[int, Any]:
    """(status, JSON body or None); RunnerError when unreachable or the status is not in ``ok``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise RunnerError(f"{method} {url}: unreachable: {exc}") from None
    try:
        data = response.json() if response.content else None
    except ValueError:
        data = response.text
    if response.status_code not in ok:
        detail = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(detail, dict) and "message" in detail:  # OpenAI-style errors (the simulator's)
            detail = str(detail["message"]) + (f" (field {detail['param']})" if detail.get("param") else "")
        raise RunnerError(f"{method} {url}: HTTP {response.status_code}: {detail}")
    return response.status_code, data


@dataclass(frozen=True)
class MetricSample:
    name: str
    labels: Mapping[str, str]
    value: float


def scrape(url: str, *, timeout_s: float = 5.0) -> list[MetricSample]:
    """Every sample of a ``/metrics`` page (``url`` with or without the ``/metrics`` path)."""
    from prometheus_client.parser import text_string_to_metric_families

    url = base_url(url, "metrics URL")
    if not url.endswith("/metrics"):
        url += "/metrics"
    try:
        response = httpx.get(url, timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise SourceError(f"{url}: cannot scrape: {exc}") from None
    try:
        return [MetricSample(s.name, dict(s.labels), float(s.value))
                for family in text_string_to_metric_families(response.text) for s in family.samples]
    except ValueError as exc:
        raise SourceError(f"{url}: not a Prometheus exposition: {exc}") from None


def poll_until(check: Callable[[], T | None], *, timeout_s: float, poll_s: float, what: str) -> tuple[float, T]:
    """Call ``check`` until it returns a value; (seconds it took, value); RunnerError after ``timeout_s``.

    A check that raises SourceError counts as "not yet" (a scrape can fail while a target restarts); the last
    such error is named if time runs out.
    """
    check_wait(timeout_s, poll_s)
    start = time.monotonic()
    deadline = start + float(timeout_s)
    last_error = ""
    while True:
        try:
            value = check()
        except SourceError as exc:
            value, last_error = None, str(exc)
        if value is not None:
            return time.monotonic() - start, value
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_error})" if last_error else ""
            raise RunnerError(f"{what} did not happen within {float(timeout_s):g}s{suffix}")
        time.sleep(min(float(poll_s), max(0.0, deadline - time.monotonic())))


def finite(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]
