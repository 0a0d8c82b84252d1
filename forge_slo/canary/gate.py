"""``forge-slo gate serve``: the canary judge over HTTP, for Argo Rollouts and Flagger.

Routes (all under ``/v1`` need ``Authorization: Bearer TOKEN``):

- ``GET /v1/argo?service=&baseline=&canary=[&window=&interval=&session=&since=]`` or ``POST /v1/argo`` with
  the same fields as a JSON object: Argo Rollouts' web metric provider. Always 200 with the verdict as JSON
  (``result.verdict`` is ``pass``, ``fail`` or ``inconclusive``) unless the request itself is malformed.
- ``POST /v1/flagger/rollout``: a Flagger ``rollout`` webhook (payload ``{name, namespace, phase, checksum,
  metadata}``, our fields in ``metadata``; Flagger cannot send headers, so ``metadata.token`` may carry the
  token). 200 while the canary may go on, 412 to halt it (a fail, or an
  inconclusive verdict that cannot improve: an unreachable Prometheus, or too little data at the end).
- ``POST /v1/flagger/confirm-promotion``: 200 only when the verdict is ``pass``; 412 holds the promotion.
- ``GET /healthz``: 200, no token.

A spec with a ``budget_policy`` holds every verdict while its releases are frozen, unless the request's
``budget_override`` field says who overrides and why (see :mod:`forge_slo.canary.policy`).

An analysis starts at the first request of its session (Argo: service, selectors and ``session``; Flagger:
namespace, name and checksum) unless ``since`` says when; each look reads Prometheus from then to now.
Malformed requests get 400 (401 without the token, 404 for an unknown route, 408 for a body that does not
arrive within the read timeout, 413 for one over 64 KiB) and a JSON body naming the field:
``{"error": "canary: ...", "field": "canary"}``.

Looks run concurrently (up to :data:`MAX_CONCURRENT_LOOKS`, each in a daemon thread that shares one
connection pool to Prometheus). A look has ``look_timeout_s`` in all, and each Prometheus call at most the
look's remaining time: a slow or hung Prometheus gives an inconclusive answer within the look timeout, and
never holds the process past SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import httpx
from aiohttp import web

from forge_slo.canary import policy
from forge_slo.canary.judge import judge_source, unavailable
from forge_slo.canary.model import CanaryVerdict, JudgeConfig
from forge_slo.canary.selectors import SelectorError, check_arms, format_selector, parse_selector
from forge_slo.canary.sources import PrometheusSource
from forge_slo.durations import parse_duration
from forge_slo.runtime import auth, net
from forge_slo.runtime.serving import (
    READ_TIMEOUT_S,
    BodyError,
    exit_now,
    in_daemon_thread,
    parse_json,
    read_body,
    serve_app,
)
from forge_slo.sources.prometheus import PrometheusClient
from forge_slo.spec.model import ServiceSpec

PARAMS = ("service", "baseline", "canary", "window", "interval", "session", "since", policy.OVERRIDE_FIELD)
_JSON = "application/json"
_MAX_BODY = 64 * 1024
# Argo Rollouts' web metric provider waits 10 s by default: answer before it gives up.
LOOK_TIMEOUT_S = 8.0
# Looks wait on Prometheus, not on the CPU: many may run at once. Past this many, a look waits for a slot
# (within its own timeout).
MAX_CONCURRENT_LOOKS = 256
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class GateOptions:
    specs: Mapping[str, ServiceSpec]
    prometheus_url: str
    prometheus_timeout_s: float
    token: str | None
    window_seconds: float
    interval_seconds: float
    config: JudgeConfig
    look_timeout_s: float = LOOK_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S


@dataclass(frozen=True)
class Analysis:
    """One request's analysis, parsed: which service, both arms, the window and the session."""

    spec: ServiceSpec
    baseline: Mapping[str, str]
    canary: Mapping[str, str]
    window_seconds: float
    interval_seconds: float
    session: str
    since: float | None
    budget_override: str | None = None  # who overrides the spec's budget policy, and why


class BadRequest(Exception):
    def __init__(self, field: str, reason: str, status: int = 400) -> None:
        self.field = field
        self.reason = reason
        self.status = status
        super().__init__(f"{field}: {reason}" if field else reason)

    def response(self) -> web.Response:
        body = {"error": str(self), "field": self.field or None}
        return web.Response(status=self.status, text=json.dumps(body), content_type=_JSON)


class Gate:
    """The gate's state (analysis sessions) and its HTTP application."""

    def __init__(self, options: GateOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self._sessions: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        # One client for every look, built here: built on first use, concurrent looks would each build one.
        self._prometheus = _LookClient(options.prometheus_url, options.prometheus_timeout_s, MAX_CONCURRENT_LOOKS)
        self._slots: asyncio.Semaphore | None = None
        self._looking: set[asyncio.Task[Any]] = set()

    def close(self) -> None:
        """Abandon the looks in flight (their callers get no answer) and close the connections to Prometheus.

        The client is closed from a daemon thread nobody waits for: closing its pool waits for the requests
        still inside it, which a hung Prometheus holds for up to --prometheus-timeout, and the process is
        ending anyway."""
        for task in self._looking:
            task.cancel()
        threading.Thread(target=self._prometheus.close, name="gate-close", daemon=True).start()

    # -------------------------------------------------------------------------------------------- parsing
    def parse(self, params: Mapping[str, Any], where: str = "") -> Analysis:
        """Fields of a request (query string, JSON body or Flagger metadata) -> an Analysis, or BadRequest."""
        prefix = f"{where}." if where else ""
        for key in params:
            if key not in PARAMS:
                raise BadRequest(f"{prefix}{key}", f"unknown field; allowed: {', '.join(PARAMS)}")
        for key, value in params.items():
            if key == "since" and isinstance(value, int | float) and not isinstance(value, bool):
                continue
            if not isinstance(value, str):
                raise BadRequest(f"{prefix}{key}", f"must be a string, got {type(value).__name__}")
        specs = self.options.specs
        service = params.get("service")
        if service is None:
            if len(specs) != 1:
                raise BadRequest(f"{prefix}service", f"missing; one of {', '.join(sorted(specs))}")
            spec = next(iter(specs.values()))
        elif service not in specs:
            raise BadRequest(f"{prefix}service", f"unknown service {service!r}; one of {', '.join(sorted(specs))}",
                             status=404)
        else:
            spec = specs[service]
        arms = {}
        for arm in ("baseline", "canary"):
            text = params.get(arm)
            if text is None:
                raise BadRequest(f"{prefix}{arm}", "missing: a label selector such as deployment=" + arm)
            try:
                arms[arm] = parse_selector(text)
            except SelectorError as exc:
                raise BadRequest(f"{prefix}{arm}", str(exc)) from None
        try:
            check_arms(arms["baseline"], arms["canary"])
        except SelectorError as exc:
            raise BadRequest(f"{prefix}canary", str(exc)) from None
        window = self._duration(params, "window", self.options.window_seconds, prefix)
        interval = self._duration(params, "interval", self.options.interval_seconds, prefix)
        if interval > window:
            raise BadRequest(f"{prefix}interval", "is longer than the window")
        try:
            override = policy.parse_override(params.get(policy.OVERRIDE_FIELD))
        except ValueError as exc:
            raise BadRequest(f"{prefix}{policy.OVERRIDE_FIELD}", str(exc)) from None
        return Analysis(spec, arms["baseline"], arms["canary"], window, interval, str(params.get("session", "")),
                        self._since(params.get("since"), prefix), override)

    @staticmethod
    def _duration(params: Mapping[str, Any], key: str, default: float, prefix: str) -> float:
        text = params.get(key)
        if text is None:
            return default
        try:
            return parse_duration(str(text))
        except ValueError as exc:
            raise BadRequest(f"{prefix}{key}", str(exc)) from None

    def _since(self, value: Any, prefix: str) -> float | None:
        if value is None:
            return None
        field = f"{prefix}since"
        if isinstance(value, str):
            try:
                seconds = float(value)
            except ValueError:
                try:
                    stamp = datetime.fromisoformat(value)
                except ValueError:
                    raise BadRequest(field, "is neither Unix seconds nor an RFC 3339 time") from None
                if stamp.tzinfo is None:
                    raise BadRequest(field, "needs a time zone (e.g. 2025-01-02T03:04:05Z)") from None
                seconds = stamp.timestamp()
        else:
            seconds = float(value)
        if not math.isfinite(seconds) or seconds <= 0:
            raise BadRequest(field, "must be a positive time")
        if seconds > self.clock() + 60:
            raise BadRequest(field, "is in the future")
        return seconds

    # ------------------------------------------------------------------------------------------- judging
    async def look(self, analysis: Analysis, session_key: tuple[str, ...]) -> CanaryVerdict:
        """One look: read Prometheus from the session's start to now and judge, within the look timeout."""
        start, now, complete = self._window(analysis, session_key)
        timeout = self.options.look_timeout_s
        deadline = time.monotonic() + timeout
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_CONCURRENT_LOOKS)
        task = asyncio.current_task()
        assert task is not None
        self._looking.add(task)
        try:
            async with asyncio.timeout(timeout), self._slots:
                return await in_daemon_thread("gate-look", self.evaluate, analysis, start, now, complete, deadline)
        except TimeoutError:
            source = PrometheusSource(self._prometheus, analysis.baseline, analysis.canary)
            return unavailable(analysis.spec, self.options.config,
                               f"{self.options.prometheus_url}: Prometheus did not answer within the look "
                               f"timeout ({timeout:g}s)", complete=complete, elapsed_seconds=now - start,
                               window_seconds=analysis.window_seconds, source=source.describe())
        finally:
            self._looking.discard(task)

    def _window(self, analysis: Analysis, session_key: tuple[str, ...]) -> tuple[float, float, bool]:
        """The look's time range (its session's start, now) and whether the analysis is complete."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            start = analysis.since if analysis.since is not None else self._sessions.setdefault(session_key, now)
        elapsed = max(now - start, 0.0)
        return start, now, elapsed >= analysis.window_seconds - analysis.interval_seconds

    def evaluate(self, analysis: Analysis, start: float, now: float, complete: bool,
                 deadline: float) -> CanaryVerdict:
        """Read Prometheus over [start, now] and judge (blocking; Prometheus calls end by ``deadline``)."""
        client = self._prometheus
        with client.deadline(deadline):
            source = PrometheusSource(client, analysis.baseline, analysis.canary)
            verdict = judge_source(analysis.spec, source, self.options.config, start=start, end=now,
                                   complete=complete, window_seconds=analysis.window_seconds)
            return policy.enforce(analysis.spec, client, verdict, analysis.budget_override, at=now)

    def _expire(self, now: float) -> None:
        horizon = 2 * self.options.window_seconds + 3600
        for key, started in list(self._sessions.items()):
            if now - started > max(horizon, 86400):
                del self._sessions[key]

    # --------------------------------------------------------------------------------------------- HTTP
    def app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY, middlewares=[self._errors, self._auth])
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/v1/argo", self._argo_get)
        app.router.add_post("/v1/argo", self._argo_post)
        app.router.add_post("/v1/flagger/rollout", self._flagger_rollout)
        app.router.add_post("/v1/flagger/confirm-promotion", self._flagger_promotion)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Unauthorized as exc:
            return _unauthorized(str(exc))
        except BadRequest as exc:
            return exc.response()
        except BodyError as exc:
            return BadRequest("body", exc.reason, exc.status).response()
        except web.HTTPException as exc:
            if exc.status >= 400:
                reason = {404: "no such route; see GET /v1/argo, POST /v1/flagger/rollout",
                          405: f"method {request.method} is not allowed here",
                          413: f"the body is larger than {_MAX_BODY} bytes"}.get(exc.status, exc.reason)
                return web.Response(status=exc.status, text=json.dumps({"error": reason, "field": None}),
                                    content_type=_JSON, headers={k: v for k, v in exc.headers.items()
                                                                 if k.lower() == "allow"})
            raise

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[_AUTHENTICATED] = auth.authorized(request.headers.get("Authorization"), self.options.token)
        # Flagger's webhooks cannot send headers: its routes may carry the token in the metadata instead.
        if not request[_AUTHENTICATED] and request.path.startswith("/v1/") \
                and not request.path.startswith("/v1/flagger/"):
            return _unauthorized("missing Authorization header" if "Authorization" not in request.headers
                                 else "wrong bearer token")
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "services": sorted(self.options.specs)})

    async def _argo_get(self, request: web.Request) -> web.Response:
        params: dict[str, str] = {}
        for key, value in request.query.items():
            if key in params:
                raise BadRequest(key, "given twice")
            params[key] = value
        return await self._argo(self.parse(params))

    async def _argo_post(self, request: web.Request) -> web.Response:
        body = await _json_object(request, self.options.read_timeout_s)
        return await self._argo(self.parse(body))

    async def _argo(self, analysis: Analysis) -> web.Response:
        key = ("argo", analysis.spec.service, format_selector(analysis.baseline), format_selector(analysis.canary),
               analysis.session)
        verdict = await self.look(analysis, key)
        _log("argo", analysis, verdict)
        return web.json_response(verdict.to_json(), dumps=_dumps)

    async def _flagger(self, request: web.Request, hook: str) -> tuple[Analysis, CanaryVerdict]:
        body = await _json_object(request, self.options.read_timeout_s)
        for key in ("name", "namespace"):
            value = body.get(key)
            if not isinstance(value, str) or not value:
                raise BadRequest(key, "missing or not a non-empty string (Flagger sends the canary's "
                                      "name and namespace)")
        for key in ("phase", "checksum"):
            if key in body and not isinstance(body[key], str):
                raise BadRequest(key, "must be a string")
        metadata = body.get("metadata")
        if not isinstance(metadata, dict):
            raise BadRequest("metadata", "missing: the webhook's metadata must hold at least baseline and canary")
        metadata = dict(metadata)
        given = metadata.pop("token", None)
        if not request[_AUTHENTICATED] and not auth.token_matches(given, self.options.token or ""):
            raise _Unauthorized("missing or wrong token: send 'Authorization: Bearer TOKEN' or metadata.token")
        analysis = self.parse(metadata, "metadata")
        session = ("flagger", str(body["namespace"]), str(body["name"]), str(body.get("checksum", "")),
                   analysis.spec.service, format_selector(analysis.baseline), format_selector(analysis.canary))
        verdict = await self.look(analysis, session)
        _log(f"flagger {hook}", analysis, verdict)
        return analysis, verdict

    async def _flagger_rollout(self, request: web.Request) -> web.Response:
        _, verdict = await self._flagger(request, "rollout")
        proceed = verdict.verdict != "fail" and verdict.decision != "hold"
        return web.json_response(verdict.to_json(), status=200 if proceed else 412, dumps=_dumps)

    async def _flagger_promotion(self, request: web.Request) -> web.Response:
        _, verdict = await self._flagger(request, "confirm-promotion")
        return web.json_response(verdict.to_json(), status=200 if verdict.verdict == "pass" else 412, dumps=_dumps)


_AUTHENTICATED = web.RequestKey("forge_slo_gate_authenticated", bool)


class _Unauthorized(Exception):
    pass


class _LookClient(PrometheusClient):
    """One Prometheus client shared by every look (a connection pool, not a client per look: building an httpx
    client costs tens of milliseconds of CPU). Inside :meth:`deadline`, each call's timeout is cut to what is
    left of the calling thread's look, and a call past it fails at once (a SourceError: inconclusive)."""

    def __init__(self, url: str, timeout_s: float, connections: int) -> None:
        super().__init__(url, timeout_s=timeout_s)
        self.timeout_s = timeout_s
        self._local = threading.local()
        # PrometheusClient takes neither pool limits nor hooks: replace its httpx client with one that has both.
        self._client.close()
        self._client = httpx.Client(
            timeout=timeout_s, limits=httpx.Limits(max_connections=connections,
                                                   max_keepalive_connections=connections),
            event_hooks={"request": [self._bound]})

    @contextlib.contextmanager
    def deadline(self, at: float) -> Iterator[None]:
        """Calls made by this thread inside end by ``at`` (``time.monotonic()`` seconds)."""
        self._local.deadline = at
        try:
            yield
        finally:
            self._local.deadline = None

    def _bound(self, request: httpx.Request) -> None:
        at: float | None = getattr(self._local, "deadline", None)
        if at is None:
            return
        left = at - time.monotonic()
        if left <= 0:
            raise httpx.PoolTimeout("the look's time is up", request=request)
        request.extensions["timeout"] = httpx.Timeout(min(left, self.timeout_s)).as_dict()


def _unauthorized(why: str) -> web.Response:
    return web.Response(status=401, text=json.dumps({"error": f"Authorization: {why}", "field": "Authorization"}),
                        content_type=_JSON, headers={"WWW-Authenticate": 'Bearer realm="forge-slo"'})


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True)


async def _json_object(request: web.Request, timeout_s: float) -> dict[str, Any]:
    raw = await read_body(request, timeout_s)
    if not raw.strip():
        raise BadRequest("body", "empty; send a JSON object")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("body", f"must be a JSON object, got {type(body).__name__}")
    return body


def _log(route: str, analysis: Analysis, verdict: CanaryVerdict) -> None:
    print(f"gate {route}: {analysis.spec.service} canary {format_selector(analysis.canary)} vs baseline "
          f"{format_selector(analysis.baseline)}: {verdict.verdict} ({verdict.decision}): {verdict.reason}",
          file=sys.stderr, flush=True)


def serve(options: GateOptions, *, host: str, port: int, ready_file: str | None = None) -> NoReturn:
    """Serve until SIGINT or SIGTERM, then end the process (exit 0). Without a token, only on loopback."""
    net.check_exposure(host, protected="the gate without a token (any caller could start or judge analyses)",
                       token=options.token, remedy="--token, --token-file or $FORGE_SLO_GATE_TOKEN "
                                                   "instead of --insecure-no-auth")
    exit_now(asyncio.run(_serve(options, host, port, ready_file)))


async def _serve(options: GateOptions, host: str, port: int, ready_file: str | None) -> int:
    gate = Gate(options)
    # gate.close first: looks waiting on Prometheus would hold the connections' shutdown
    return await serve_app(gate.app(), host, port, read_timeout_s=options.read_timeout_s, ready_file=ready_file,
                           announce=lambda url: f"forge-slo gate listening on {url} for "
                                                f"{', '.join(sorted(options.specs))}",
                           on_stop=gate.close)
