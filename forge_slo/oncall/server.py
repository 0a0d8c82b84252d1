"""``forge-slo ui``: the status page over HTTP (aiohttp), read-only.

Routes: ``GET /`` every SLO (``?q=`` filter, ``?only=alerting|frozen``, ``?sort=&order=``), ``GET
/slo/<service>/<slo>`` one SLO (``?range=6h`` for its error-ratio chart), ``GET /healthz`` (no token), and with a
token ``GET``/``POST /login``: a browser signs in once and keeps a session cookie derived from the token (the
token itself is never stored); other clients send ``Authorization: Bearer TOKEN``.

Prometheus is read in daemon threads, one shared connection pool, each call bounded by the Prometheus timeout:
a hung Prometheus gives a page that says so, and never holds the process past SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from forge_slo.durations import format_duration, parse_duration
from forge_slo.oncall import pages
from forge_slo.oncall.status import read_detail, read_status, unknown_detail, unknown_status
from forge_slo.runtime import auth, net
from forge_slo.runtime.serving import (
    READ_TIMEOUT_S,
    BodyError,
    in_daemon_thread,
    read_body,
    serve_app,
)
from forge_slo.sources.prometheus import PrometheusClient
from forge_slo.spec.model import ServiceSpec

COOKIE = "forge_slo_ui_session"
_MAX_BODY = 8 * 1024
# No script may run, nothing is loaded from elsewhere: styles and charts are inline.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


@dataclass(frozen=True)
class UiOptions:
    specs: tuple[ServiceSpec, ...]
    prometheus_url: str
    prometheus_timeout_s: float = 5.0
    token: str | None = None
    refresh_seconds: float = 30.0
    grafana_url: str | None = None
    read_timeout_s: float = READ_TIMEOUT_S

    @property
    def page_timeout_s(self) -> float:
        """The most one page may wait on Prometheus, whatever happens (each call has the Prometheus timeout)."""
        return 3 * self.prometheus_timeout_s


def session_value(token: str) -> str:
    """What the session cookie holds: derived from the token, so a leaked cookie does not reveal the token."""
    return hmac.new(token.encode("utf-8"), b"forge-slo ui session", hashlib.sha256).hexdigest()


def safe_next(path: str) -> str:
    """Where to go after signing in: a path on this server only (never ``//host`` or a full URL)."""
    if path.startswith("/") and not path.startswith("//") and "\\" not in path and path.isprintable():
        return path
    return "/"


class StatusServer:
    """The page's state (options, one Prometheus client) and its HTTP application."""

    def __init__(self, options: UiOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self.site = pages.Site(options.prometheus_url, options.refresh_seconds, options.grafana_url)
        self.client = PrometheusClient(options.prometheus_url, timeout_s=options.prometheus_timeout_s)
        self._services = {spec.service: spec for spec in options.specs}

    def close(self) -> None:
        self.client.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY, middlewares=[self._errors, self._auth])
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/", self._list)
        app.router.add_get("/slo/{service}/{slo}", self._detail)
        app.router.add_get("/login", self._login_form)
        app.router.add_post("/login", self._login)
        return app

    def _html(self, text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=status, text=text, content_type="text/html", charset="utf-8",
                            headers={**SECURITY_HEADERS, **(headers or {})})

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BodyError as exc:
            return self._html(pages.not_found_page(exc.reason, self.site), exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            what = {404: f"No page at {request.path}.", 405: f"{request.method} is not allowed here.",
                    413: "The request is too large."}.get(exc.status, exc.reason)
            allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return self._html(pages.not_found_page(what, self.site), exc.status, allow)

    def _signed_in(self, request: web.Request) -> bool:
        token = self.options.token
        if token is None or auth.authorized(request.headers.get("Authorization"), token):
            return True
        return auth.token_matches(request.cookies.get(COOKIE), session_value(token))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/login") or self._signed_in(request):
            return await handler(request)
        return self._html(pages.login_page(self.site, safe_next(request.path_qs), wrong=False), 401,
                          {"WWW-Authenticate": 'Bearer realm="forge-slo"'})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "services": sorted(self._services)})

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        async with asyncio.timeout(self.options.page_timeout_s):
            return await in_daemon_thread("ui-read", fn, *args)

    def _late(self) -> str:
        return (f"{self.options.prometheus_url}: Prometheus did not answer within "
                f"{format_duration(self.options.page_timeout_s)}")

    async def _list(self, request: web.Request) -> web.Response:
        query = pages.ListQuery.parse({k: request.query.getone(k) for k in request.query})
        at = float(int(self.clock()))
        try:
            status = await self._read(read_status, self.client, self.options.specs, at)
        except TimeoutError:
            status = unknown_status(self.options.specs, at, self._late())
        return self._html(pages.list_page(status, query, self.site), 503 if status.problem else 200)

    async def _detail(self, request: web.Request) -> web.Response:
        spec = self._services.get(request.match_info["service"])
        slo = next((s for s in spec.slos if s.name == request.match_info["slo"]), None) if spec else None
        if spec is None or slo is None:
            return self._html(pages.not_found_page(
                f"No SLO {request.match_info['slo']!r} of a service {request.match_info['service']!r} in the specs "
                "this page was started with.", self.site), 404)
        span = None
        if "range" in request.query:
            try:
                span = parse_duration(request.query.getone("range"), maximum=spec.period_seconds)
            except ValueError as exc:
                return self._html(pages.not_found_page(f"range: {exc}", self.site), 400)
        at = float(int(self.clock()))
        try:
            detail = await self._read(read_detail, self.client, spec, slo, at, span)
        except TimeoutError:
            detail = unknown_detail(spec, slo, at, self._late(), span)
        return self._html(pages.detail_page(detail, self.site), 503 if detail.status.problem else 200)

    async def _login_form(self, request: web.Request) -> web.Response:
        return self._html(pages.login_page(self.site, safe_next(request.query.get("next", "/")), wrong=False))

    async def _login(self, request: web.Request) -> web.Response:
        raw = await read_body(request, self.options.read_timeout_s)
        try:
            form = urllib.parse.parse_qs(raw.decode("utf-8"), max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            form = {}
        target = safe_next(form.get("next", ["/"])[0])
        token = self.options.token
        if token is None:
            raise web.HTTPSeeOther(target)
        if not auth.token_matches(form.get("token", [""])[0], token):
            return self._html(pages.login_page(self.site, target, wrong=True), 401)
        response = web.HTTPSeeOther(target, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="Strict", path="/")
        return response


def serve(options: UiOptions, *, host: str, port: int, ready_file: str | None = None) -> int:
    """Serve until SIGINT or SIGTERM; returns 0."""
    if options.token is None and not net.is_loopback(host):
        print(f"warning: --host {host}: serving the SLO page beyond loopback without a token; anyone who can reach "
              "the port can read it (pass --token or --token-file to require one)", file=sys.stderr, flush=True)
    return asyncio.run(_serve(options, host, port, ready_file))


async def _serve(options: UiOptions, host: str, port: int, ready_file: str | None) -> int:
    server = StatusServer(options)
    slos = sum(len(spec.slos) for spec in options.specs)
    services = ", ".join(sorted(spec.service for spec in options.specs))
    return await serve_app(server.app(), host, port, read_timeout_s=options.read_timeout_s, ready_file=ready_file,
                           announce=lambda url: f"forge-slo ui listening on {url}: {slos} SLOs of {services}, "
                                                f"read from {options.prometheus_url}",
                           on_stop=server.close)

