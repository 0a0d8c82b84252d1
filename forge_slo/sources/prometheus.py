"""A small Prometheus HTTP API client (httpx): instant and range queries, alerts.

Every failure (unreachable, timeout, HTTP error, an error answer, a malformed body) raises
:class:`forge_slo.errors.SourceError` with the URL and the reason, so callers can fail closed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from forge_slo.errors import SourceError


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]  # (unix seconds, value)


@dataclass(frozen=True)
class Alert:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    state: str  # "pending" or "firing"
    active_at: str
    value: float


class PrometheusClient:
    """``PrometheusClient("http://127.0.0.1:9090")``; use as a context manager or call :meth:`close`."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, headers: Mapping[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise SourceError(f"{url}: a Prometheus URL starts with http:// or https://")
        self.url = url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s, headers=dict(headers or {}))

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.url}/api/v1/{path}"
        try:
            response = self._client.get(url, params=dict(params))
        except httpx.TimeoutException:
            raise SourceError(f"{url}: Prometheus did not answer in time") from None
        except httpx.HTTPError as exc:
            raise SourceError(f"{url}: Prometheus is unreachable: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise SourceError(f"{url}: HTTP {response.status_code}, not a Prometheus API answer") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            reason = body.get("error", body) if isinstance(body, dict) else body
            raise SourceError(f"{url}: HTTP {response.status_code}: {reason}")
        return body.get("data")

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query's vector (a scalar comes back as one sample without labels)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = repr(at)
        data = self._get("query", params)
        try:
            kind, result = data["resultType"], data["result"]
            if kind == "scalar":
                return [Sample({}, _float(result[1]))]
            if kind != "vector":
                raise SourceError(f"{self.url}: {expr!r} returned a {kind}, not an instant vector")
            return [Sample(dict(item["metric"]), _float(item["value"][1])) for item in result]
        except (KeyError, TypeError, IndexError) as exc:
            raise SourceError(f"{self.url}: malformed query answer ({exc})") from None

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Series]:
        data = self._get("query_range", {"query": expr, "start": repr(start), "end": repr(end),
                                         "step": repr(step_s)})
        try:
            return [Series(dict(item["metric"]), tuple((float(t), _float(v)) for t, v in item["values"]))
                    for item in data["result"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"{self.url}: malformed range answer ({exc})") from None

    def scalar(self, expr: str, default: float | None = None) -> float | None:
        """The single value of ``expr``; ``default`` when it is empty; SourceError when it has several."""
        samples = self.query(expr)
        if not samples:
            return default
        if len(samples) > 1:
            raise SourceError(f"{self.url}: {expr!r} returned {len(samples)} series, expected one")
        return samples[0].value

    def alerts(self) -> list[Alert]:
        data = self._get("alerts", {})
        try:
            return [Alert(dict(a["labels"]), dict(a.get("annotations", {})), a["state"], a.get("activeAt", ""),
                          _float(a.get("value", "nan"))) for a in data["alerts"]]
        except (KeyError, TypeError) as exc:
            raise SourceError(f"{self.url}: malformed alerts answer ({exc})") from None

    def firing(self, alertname: str, **labels: str) -> list[Alert]:
        return [a for a in self.alerts() if a.state == "firing" and a.labels.get("alertname") == alertname
                and all(a.labels.get(k) == v for k, v in labels.items())]


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
