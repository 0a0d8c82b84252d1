"""A small Prometheus HTTP API client (httpx): instant and range queries, alerts.

Every failure (unreachable, timeout, HTTP error, an error answer, a malformed body) raises
:class:`forge_slo.errors.SourceError` with the URL and the reason, so callers can fail closed. A sample
value is Prometheus' own float: ``NaN`` and ``+Inf`` are kept as such (callers decide what a non-finite
value means), text that is no number at all is a malformed answer.
"""

from __future__ import annotations

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
                return [Sample({}, self._number(result[1], expr, {}))]
            if kind != "vector":
                raise SourceError(f"{self.url}: {expr!r} returned a {kind}, not an instant vector")
            samples = []
            for item in result:
                labels = dict(item["metric"])
                samples.append(Sample(labels, self._number(item["value"][1], expr, labels)))
            return samples
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise SourceError(f"{self.url}: malformed answer to {expr!r} ({exc})") from None

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Series]:
        data = self._get("query_range", {"query": expr, "start": repr(start), "end": repr(end),
                                         "step": repr(step_s)})
        try:
            out = []
            for item in data["result"]:
                labels = dict(item["metric"])
                points = tuple((self._number(t, expr, labels), self._number(v, expr, labels))
                               for t, v in item["values"])
                out.append(Series(labels, points))
            return out
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"{self.url}: malformed range answer to {expr!r} ({exc})") from None

    def scalar(self, expr: str, default: float | None = None, at: float | None = None) -> float | None:
        """The single value of ``expr`` (at ``at``, default now); ``default`` when it is empty; SourceError when
        it has several. The value may be NaN or infinite, as Prometheus computed it."""
        samples = self.query(expr, at=at)
        if not samples:
            return default
        if len(samples) > 1:
            raise SourceError(f"{self.url}: {expr!r} returned {len(samples)} series, expected one")
        return samples[0].value

    def alerts(self) -> list[Alert]:
        data = self._get("alerts", {})
        try:
            return [Alert(dict(a["labels"]), dict(a.get("annotations", {})), a["state"], a.get("activeAt", ""),
                          self._number(a.get("value", "NaN"), "alerts", dict(a["labels"])))
                    for a in data["alerts"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"{self.url}: malformed alerts answer ({exc})") from None

    def firing(self, alertname: str, **labels: str) -> list[Alert]:
        return [a for a in self.alerts() if a.state == "firing" and a.labels.get("alertname") == alertname
                and all(a.labels.get(k) == v for k, v in labels.items())]


    def _number(self, value: Any, expr: str, labels: Mapping[str, str]) -> float:
        """A sample value as Prometheus writes it ("0.5", "NaN", "+Inf"); anything else is a malformed answer."""
        if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT:
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise SourceError(f"{self.url}: {expr!r} returned {shown} for {_series(labels)}, which is not a number "
                          "(malformed answer)")


# Prometheus writes a float in at most a few dozen characters; longer text is not one of its numbers.
_MAX_NUMBER_TEXT = 64


def _series(labels: Mapping[str, str]) -> str:
    if not labels:
        return "the scalar"
    return "{" + ", ".join(f"{k}={v!r}" for k, v in sorted(labels.items())) + "}"
