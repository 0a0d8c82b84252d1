"""The HTTP server: OpenAI routes, /health, /metrics, the fault admin API, and process lifecycle.

It listens on 127.0.0.1 unless told otherwise and refuses to serve its fault API beyond loopback without an
admin token. Requests must arrive within the read timeout; on SIGTERM streams are cut and the server stops
within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11

from forge_slo.errors import RunnerError, SpecError
from forge_slo.runtime import auth, net
from forge_slo.runtime.serving import LINGER_S, READ_TIMEOUT_S, SHUTDOWN_GRACE_S, BodyError, read_body
from forge_slo.sim.answers import ANSWERS, OUTAGE_STATUS
from forge_slo.sim.config import ConfigFieldError, SimConfig, default_config, load_sim_config, parse_fault
from forge_slo.sim.engine import ModelEngine, Plan, TokenClock, TokenStream
from forge_slo.sim.faults import FaultExists, FaultManager
from forge_slo.sim.metrics import CONTENT_TYPE, Exposition, LagStats
from forge_slo.sim.tracing import RequestTrace, Tracing
from forge_slo.sim.wire import (
    GenerationRequest,
    Identity,
    Kind,
    WireError,
    check_context_length,
    embeddings_response,
    full_response,
    parse_body,
    parse_embeddings,
    parse_generation,
    stream_frames,
)
from forge_slo.spec.presets import PRESETS

ADMIN_TOKEN_ENV = "FORGE_SLO_SIM_ADMIN_TOKEN"
GC_INTERVAL_S = 60.0
log = logging.getLogger("forge_slo.sim")

_JSON = "application/json"


def _error_response(err: WireError) -> web.Response:
    return web.Response(status=err.status, body=err.body(), content_type=_JSON)


def _body_error(e: BodyError) -> WireError:
    kind = "invalid_json" if e.status == 400 else "request_timeout"
    return WireError(e.status, f"The request body: {e.reason}", code=kind)


class SimServer:
    """One simulator: ``await start()``, use ``url``, ``await stop()``; or ``async with SimServer(...)``.

    ``preset`` (vllm, sglang, tgi, triton) overrides the config's: the server whose metrics it exports and
    whose answers it gives. ``span_exporter`` (an OpenTelemetry SpanExporter) overrides the configured tracing
    exporter; tests use it to read spans in-process.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = net.DEFAULT_HOST,
        port: int = 0,
        admin_token: str | None = None,
        span_exporter: Any = None,
        read_timeout_s: float = READ_TIMEOUT_S,
        preset: str | None = None,
    ) -> None:
        self.config = config or default_config()
        self.preset = PRESETS[preset or self.config.preset]
        self.answers = ANSWERS[self.preset.name]
        self.host = host
        self.port = port
        self.admin_token = admin_token if admin_token is not None else self.config.admin_token
        self.read_timeout_s = read_timeout_s
        self.listen_url = ""
        self._span_exporter = span_exporter
        self._runner: web.AppRunner | None = None
        self.engines: dict[str, ModelEngine] = {}
        self.exposition = Exposition(self.preset, [m.name for m in self.config.models],
                                     tpot_one_token=self.answers.tpot_one_token)
        self.lags = LagStats()
        self._req_seq = 0
        self._started_wall = int(time.time())

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        net.check_exposure(self.host, protected="the fault API at /admin/faults", token=self.admin_token,
                           remedy=f"--admin-token TOKEN (or ${ADMIN_TOKEN_ENV}, or admin_token in the config)")
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.clock = TokenClock(loop)
        self.engines = {
            m.name: ModelEngine(m, self.config.seed, loop, self.lags, self.clock, self.exposition.model(m.name))
            for m in self.config.models
        }
        self.default_model = self.config.models[0].name
        self.faults = FaultManager(self.engines, loop.time, loop)
        for fault in self.config.faults:
            self.faults.add(fault)
        self.tracing = Tracing(self.config.tracing, loop.time(), self._span_exporter)
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/admin/faults", self._list_faults)
        app.router.add_post("/admin/faults", self._add_fault)
        app.router.add_delete("/admin/faults", self._clear_faults)
        app.router.add_delete("/admin/faults/{fault_id}", self._delete_fault)
        app.router.add_get("/debug/stats", self._stats)
        # handler_cancellation: a client that goes away cancels its handler, which counts an abort.
        # keepalive_timeout: aiohttp closes a connection that has not delivered a whole request line and
        # headers this long after it opened or got its last answer (it has no header timeout of its own).
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_GRACE_S,
            keepalive_timeout=self.read_timeout_s,
            lingering_time=LINGER_S,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=4096)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise RunnerError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from e
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
            self.listen_url = net.url_of(sockets[0].getsockname())

    async def stop(self) -> None:
        """Cut running streams (they count as aborted), stop listening, flush traces."""
        for engine in self.engines.values():
            engine.cut_all("abort")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.clock.close()
        self.tracing.shutdown()

    # -- middleware --------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every error as an OpenAI error body. What a request counts is the handlers' to say (by outcome)."""
        self.clock.service()
        try:
            return await handler(request)
        except WireError as e:
            return _error_response(e)
        except BodyError as e:
            return _error_response(_body_error(e))
        except web.HTTPException as e:
            return _error_response(WireError(e.status, e.reason, code=e.status))
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return _error_response(WireError(500, "internal simulator error", code="internal_error"))

    # -- OpenAI routes -----------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat", "/v1/chat/completions")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion", "/v1/completions")

    async def _generate(self, request: web.Request, kind: Kind, route: str) -> web.StreamResponse:
        arrival = self.loop.time()
        parsed, engine = await self._accept(request, kind, route)
        self.clock.service()
        parent = self.tracing.extract(request.headers) if self.tracing.enabled else None
        self._refuse(engine, route, parsed, parent, arrival)
        plan = engine.plan(parsed.max_tokens)
        room = engine.cfg.max_model_len - parsed.prompt_tokens
        if parsed.max_tokens is None and plan.output_tokens > room:
            plan = engine.plan(room)  # as vLLM: without max_tokens, the output stops at the context's end
        self._req_seq += 1
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        ident = Identity(kind, f"{prefix}-sim{self._req_seq:012d}", int(time.time()), model=engine.cfg.name)
        response: web.StreamResponse | None = None
        frames, transport = (b"", b"", b""), None
        if parsed.stream:
            response, frames = await self._open_stream(request, engine, parsed, plan, ident)
            transport = request.transport
            if transport is None:  # the client already left
                self.exposition.record("cancelled", engine.cfg.name, route, 200, None)
                return response
        stream = TokenStream(engine, parsed.prompt_tokens, plan, arrival, transport, frames, route)
        reason = await self._run(stream, parent, route, parsed)
        if reason == "abort":
            return await self._cut_off(request, response)
        if response is not None:
            await response.write_eof()
            return response
        text = engine.cfg.token_text * plan.output_tokens
        body = full_response(ident, text, reason, parsed.prompt_tokens, stream.emitted)
        return web.Response(body=body, content_type=_JSON, headers={"X-Request-Id": ident.request_id})

    async def _accept(self, request: web.Request, kind: Kind, route: str) -> tuple[GenerationRequest, ModelEngine]:
        """The request and its model's engine; an invalid request (4xx) is counted as the server counts one."""
        engine: ModelEngine | None = None
        try:
            parsed = parse_generation(parse_body(await read_body(request, self.read_timeout_s)), kind)
            engine = self._engine_for(parsed)
            check_context_length(parsed, engine.cfg.max_model_len)
            if parsed.stream and request.version != HttpVersion11:
                raise WireError(400, "Streaming needs HTTP/1.1 (chunked transfer encoding).", param="stream")
        except (WireError, BodyError) as e:
            error = e if isinstance(e, WireError) else _body_error(e)
            self.exposition.record("client_error", engine.cfg.name if engine else None, route, error.status, None)
            raise error from None
        return parsed, engine

    def _refuse(self, engine: ModelEngine, route: str, parsed: GenerationRequest, parent: Any,
                arrival: float) -> None:
        """Fail (an outage, an errors fault) or shed (a full queue) the request at once, as its server answers."""
        if engine.mods.outage:
            outcome, status, message = "server_error", OUTAGE_STATUS, "simulated outage (forge-slo sim fault)"
        elif engine.mods.errors and engine.http_error_due():
            outcome, status, message = "server_error", self.answers.server_error, \
                "simulated server error (forge-slo sim fault)"
        elif engine.full():
            outcome, status, message = "shed", self.answers.shed, \
                f"The request queue is full ({engine.cfg.max_queued_requests} waiting); try again later."
        else:
            return
        self.exposition.record(outcome, engine.cfg.name, route, status, None)
        self._trace(parent, route, engine.cfg.name, parsed, arrival, None, None, 0, "error", status)
        code = "queue_full" if outcome == "shed" else "simulated_fault"
        raise WireError(status, message, code=code)

    async def _open_stream(self, request: web.Request, engine: ModelEngine, parsed: GenerationRequest,
                           plan: Plan, ident: Identity) -> tuple[web.StreamResponse, tuple[bytes, bytes, bytes]]:
        """Answer 200 with an event stream; the SSE frames of this request's tokens."""
        frames = stream_frames(ident, engine.cfg.token_text, engine.cfg.tokens_per_chunk, plan.output_tokens,
                               plan.finish_reason, parsed.prompt_tokens, parsed.include_usage)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache", "X-Request-Id": ident.request_id})
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response, frames

    async def _run(self, stream: TokenStream, parent: Any, route: str, parsed: GenerationRequest) -> str:
        """Queue the request on its engine and wait until it ends; its finish reason (an outage raises 500)."""
        self.clock.service()
        try:
            stream.engine.try_admit(stream)
            reason = await stream.done
        except asyncio.CancelledError:
            stream.finish("cancelled")
            self._trace_stream(parent, route, parsed, stream, 200 if parsed.stream else 499)
            raise
        if reason == "outage":
            self._trace_stream(parent, route, parsed, stream, 500)
            raise WireError(500, "simulated outage (forge-slo sim fault)", code="simulated_fault")
        self._trace_stream(parent, route, parsed, stream, 200)
        return reason

    async def _cut_off(self, request: web.Request, response: web.StreamResponse | None) -> web.StreamResponse:
        """An aborted request (an abort fault): the client sees its connection cut."""
        if response is None and request.transport is not None:
            request.transport.close()  # a non-streaming answer cut off: the client gets no response
        # The connection is closing: aiohttp cancels this handler when it is gone (handler_cancellation).
        await asyncio.sleep(5.0)
        if request.transport is not None:
            request.transport.abort()
        return response if response is not None else web.Response(status=500)

    def _engine_for(self, parsed: GenerationRequest) -> ModelEngine:
        name = parsed.model if parsed.model is not None else self.default_model
        engine = self.engines.get(name)
        if engine is None:
            raise WireError(404, f"The model `{name}` does not exist.", param="model", code=404)
        return engine

    def _trace_stream(
        self, parent: Any, route: str, parsed: GenerationRequest, stream: TokenStream, status: int
    ) -> None:
        if not self.tracing.enabled:
            return
        self._trace(
            parent,
            route,
            stream.engine.cfg.name,
            parsed,
            stream.arrival,
            stream.admitted_at or None,
            stream.first_at or None,
            stream.emitted,
            stream.finish_reason or "abort",
            status,
        )

    def _trace(
        self,
        parent: Any,
        route: str,
        model: str,
        parsed: GenerationRequest,
        arrival: float,
        admitted: float | None,
        first: float | None,
        completion_tokens: int,
        reason: str,
        status: int,
    ) -> None:
        if not self.tracing.enabled:
            return
        self.tracing.record(
            parent,
            RequestTrace(
                name=f"POST {route}",
                route=route,
                model=model,
                arrival=arrival,
                admitted=admitted,
                first_token=first,
                end=self.loop.time(),
                prompt_tokens=parsed.prompt_tokens,
                completion_tokens=completion_tokens,
                finish_reason=reason,
                status_code=status,
                stream=parsed.stream,
            ),
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        """A minimal embeddings route: the prefill time of the input, then a small fixed vector per input. It
        does not queue for the model's slots and moves none of the preset's counters."""
        model, tokens, inputs = parse_embeddings(parse_body(await read_body(request, self.read_timeout_s)))
        name = model if model is not None else self.default_model
        engine = self.engines.get(name)
        if engine is None:
            raise WireError(404, f"The model `{name}` does not exist.", param="model", code=404)
        cfg = engine.cfg
        await asyncio.sleep(cfg.prefill_base_s + cfg.prefill_per_token_s * tokens)
        return web.Response(body=embeddings_response(name, tokens, inputs), content_type=_JSON)

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {
                "id": name,
                "object": "model",
                "created": self._started_wall,
                "owned_by": "forge-slo-sim",
                "root": name,
                "parent": None,
                "max_model_len": e.cfg.max_model_len,
            }
            for name, e in self.engines.items()
        ]
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        if self.faults.outage_everywhere():
            return web.Response(status=503, text="simulated outage")
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        gauges = {name: engine.gauges() for name, engine in self.engines.items()}
        return web.Response(body=self.exposition.render(gauges), headers={"Content-Type": CONTENT_TYPE})

    async def _stats(self, request: web.Request) -> web.Response:
        """The simulator's own scheduling error (late tokens); ``?reset=1`` starts a new window, ``?bins=1``
        adds the raw histograms."""
        out: dict[str, Any] = self.lags.summary()
        if request.query.get("bins") in ("1", "true"):
            out["bins"] = self.lags.bins()
        out["models"] = {
            n: {"running": e.running, "waiting": len(e.waiting)} for n, e in self.engines.items()
        }
        if request.query.get("reset") in ("1", "true"):
            self.lags.reset()
        return web.json_response(out)

    # -- admin -------------------------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> None:
        if not auth.authorized(request.headers.get("Authorization"), self.admin_token):
            raise WireError(
                401,
                "Missing or wrong admin token (Authorization: Bearer <token>).",
                code="invalid_admin_token",
            )

    async def _list_faults(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response({"faults": self.faults.listing()})

    async def _add_fault(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = parse_body(await read_body(request, self.read_timeout_s))
        try:
            fault = parse_fault(body, model_names=tuple(self.engines))
        except ConfigFieldError as e:
            raise WireError(
                400,
                f"{e.field}: {e.reason}" if e.field else e.reason,
                param=e.field or None,
                code="invalid_fault",
            ) from e
        try:
            fault_id = self.faults.add(fault)
        except FaultExists as e:
            raise WireError(409, str(e), param="id", code="fault_exists") from e
        return web.json_response(self.faults.describe(fault_id), status=201)

    async def _delete_fault(self, request: web.Request) -> web.Response:
        self._authorize(request)
        fault_id = request.match_info["fault_id"]
        if not self.faults.delete(fault_id):
            raise WireError(404, f"No active fault with id {fault_id!r}.", param="id", code="fault_not_found")
        return web.json_response({"deleted": fault_id})

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response({"deleted_count": self.faults.clear()})


# ---------------------------------------------------------------------------------------------------------
# Blocking entry point


def run_simulator(
    port: int,
    host: str = "127.0.0.1",
    config_path: str | None = None,
    *,
    admin_token: str | None = None,
    ready_file: str | None = None,
    read_timeout_s: float = READ_TIMEOUT_S,
    preset: str | None = None,
) -> int:
    """Serve until SIGINT or SIGTERM; returns 0 after a clean stop. ``preset`` (the --preset flag) wins over
    the config's ``preset``.

    Raises :class:`~forge_slo.errors.SpecError` (exit code 2) for a bad config file,
    :class:`~forge_slo.errors.UsageError` (exit code 2) for an unusable token or a fault API exposed beyond
    loopback without one, and :class:`~forge_slo.errors.RunnerError` (exit code 1) when the port cannot be
    bound. The admin token is, first found: ``admin_token`` (the --admin-token flag),
    $FORGE_SLO_SIM_ADMIN_TOKEN, the config's ``admin_token``. ``port`` 0 picks a free port; ``ready_file``
    then receives ``{"host", "port", "pid"}`` as JSON once the server listens.
    """
    config = load_sim_config(config_path) if config_path else default_config()
    if config.admin_token is not None:
        problem = auth.token_problem(config.admin_token)
        if problem is not None:
            raise SpecError(f"the token {problem}", file=config_path, field="admin_token")
    token = auth.token_from("--admin-token", admin_token, ADMIN_TOKEN_ENV)
    return asyncio.run(_serve(config, host, port, token, ready_file, read_timeout_s, preset))


async def _serve(
    config: SimConfig, host: str, port: int, token: str | None, ready_file: str | None, read_timeout_s: float,
    preset: str | None,
) -> int:
    server = SimServer(config, host=host, port=port, admin_token=token, read_timeout_s=read_timeout_s,
                       preset=preset)
    await server.start()
    # The cyclic GC walks every live object on its older passes: tens of milliseconds with a thousand open
    # streams, a stall in every stream at once, and here it finds next to nothing (refcounting frees
    # almost all). So: freeze what lives as long as the server, and collect on a fixed, rare schedule.
    gc.collect()
    gc.freeze()
    gc.disable()
    collector = asyncio.create_task(_collect_garbage(GC_INTERVAL_S))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    models = ", ".join(server.engines)
    print(f"forge-slo sim listening on {server.listen_url} (models: {models}; {server.preset.title} metrics)",
          flush=True)
    if ready_file:
        tmp = f"{ready_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"host": server.host, "port": server.port, "pid": os.getpid()}, fh)
        os.replace(tmp, ready_file)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        lag = server.lags.summary()["first_token_lag_s"]
        print(
            f"forge-slo sim stopping; first-token scheduling lag p50={lag['p50'] * 1000:.3f}ms "
            f"p99={lag['p99'] * 1000:.3f}ms max={lag['max'] * 1000:.3f}ms over {int(lag['count'])} requests",
            file=sys.stderr,
            flush=True,
        )
        collector.cancel()
        await server.stop()
        gc.enable()
    return 0


async def _collect_garbage(interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        gc.collect()
