"""The GPU exporter: a collector thread reads the backend once per interval; scrapes serve the last snapshot.

Every collection reads each GPU once, renders the whole exposition (plain and gzip) and swaps it in as one
immutable :class:`Snapshot`; the HTTP handler only writes those bytes, so scrape cost does not grow with the
number of scrapers and NVML is never called on a scrape. A GPU that fails its read is reported unhealthy in
that snapshot and the others are still served. The exporter's own metrics live in a per-exporter
``CollectorRegistry`` and are rendered into the same snapshot.

It listens on 127.0.0.1 unless told otherwise, and refuses to offer fault injection (a fake fleet) beyond
loopback without a token. A connection must deliver each request within the read timeout or it is closed.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from forge_slo import conventions as cv
from forge_slo.errors import RunnerError, SpecError
from forge_slo.runtime import auth, net
from forge_slo.runtime.serving import READ_TIMEOUT_S, BodyError, StopSignals, parse_json
from forge_slo.telemetry.backend import FaultInjector, GpuBackend, GpuUnavailable
from forge_slo.telemetry.metrics import (
    ADMIN_TOKEN_ENV,
    CONTENT_TYPE,
    DEFAULT_XID_CODES,
    GpuSample,
    HostnameLabel,
    Renderer,
)

MAX_ADMIN_BODY = 64 * 1024
COLLECTION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class ExporterOptions:
    """Everything the exporter is told on its command line, typed."""

    port: int = 9400
    host: str = net.DEFAULT_HOST
    interval_s: float = 1.0
    fake_fleet: str | None = None
    hostname_label: HostnameLabel = "hostname"
    hostname: str | None = None
    xid_codes: tuple[int, ...] = DEFAULT_XID_CODES
    admin_token: str | None = None
    collect_on_scrape: bool = False
    read_timeout_s: float = READ_TIMEOUT_S


@dataclass(frozen=True)
class Snapshot:
    """One collection, rendered: what every scrape until the next collection gets."""

    body: bytes
    body_gzip: bytes
    taken_at: float
    samples: tuple[GpuSample, ...] = field(default=())


def open_backend(options: ExporterOptions) -> GpuBackend:
    """The fake fleet when ``--fake-fleet`` is given, else NVML (which fails clearly without a GPU)."""
    if options.fake_fleet is not None:
        from forge_slo.telemetry.fake import FakeFleet
        from forge_slo.telemetry.fleet import load_fleet

        return FakeFleet(load_fleet(options.fake_fleet))
    from forge_slo.telemetry.nvml import NvmlBackend

    return NvmlBackend()


P = cv.GPU_EXPORTER_METRIC_PREFIX


class _SelfMetrics:
    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        self.collections = Counter(f"{P}collections", "Collections of all GPUs since start.",
                                   ["backend"], registry=registry).labels(backend)
        self.duration = Histogram(f"{P}collection_duration_seconds",
                                  "Time to read every GPU once (the NVML read latency of one collection).",
                                  ["backend"], buckets=COLLECTION_BUCKETS, registry=registry).labels(backend)
        self.last = Gauge(f"{P}last_collection_timestamp_seconds",
                          "Unix time of the last collection.", registry=registry)
        self.read_errors = Counter(f"{P}gpu_read_errors", "GPU reads that failed, per GPU.",
                                   ["gpu"], registry=registry)
        self.xid_watch = Gauge(f"{P}xid_watch_active",
                               "1 when XID events are being received from the backend.", registry=registry)


class GpuExporter:
    """One exporter over one backend. :meth:`start` binds and collects once; :meth:`stop` undoes it all."""

    def __init__(self, options: ExporterOptions, backend: GpuBackend, *,
                 log: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.backend = backend
        self.registry = CollectorRegistry(auto_describe=False)
        self._self = _SelfMetrics(self.registry, backend.name)
        self._log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        hostname = (options.hostname or backend.hostname() or os.environ.get("NODE_NAME")
                    or socket.gethostname())
        self.gpus = tuple(backend.gpus())
        self._renderer = Renderer(self.gpus, hostname=hostname, driver_version=backend.driver_version(),
                                  hostname_label=options.hostname_label, xid_codes=options.xid_codes)
        self._snapshot: Snapshot | None = None
        self._collect_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self.collections = 0
        token = options.admin_token
        self.admin_token = auth.check_token(token, "--admin-token") if token is not None else None

    # Lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.admin_enabled:
            net.check_exposure(self.options.host, protected="fault injection at /admin/faults",
                               token=self.admin_token, remedy=f"--admin-token TOKEN (or ${ADMIN_TOKEN_ENV})")
        try:
            server = _Server((self.options.host, self.options.port), _Handler)
        except OSError as e:
            raise RunnerError(f"cannot listen on {self.options.host}:{self.options.port}: "
                              f"{e.strerror or e}") from None
        server.exporter = self
        self._server = server
        self.backend.start()
        self._self.xid_watch.set(1 if getattr(self.backend, "xid_watch_active", True) else 0)
        self.collect_once()
        if not self.options.collect_on_scrape:
            self._thread = threading.Thread(target=self._collect_loop, name="gpu-collector", daemon=True)
            self._thread.start()
        self._server_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                               name="gpu-exporter-http", daemon=True)
        self._server_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._server is not None:
            if self._server_thread is not None:  # shutdown() waits for serve_forever, so only when it ran
                self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in (self._thread, self._server_thread):
            if thread is not None:
                thread.join(timeout=10)
        self._thread = self._server_thread = None
        self.backend.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "the exporter is not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the exporter (loopback when it listens on every interface)."""
        host = self.options.host if self.options.host not in ("0.0.0.0", "::", "") else net.DEFAULT_HOST
        return f"http://{host}:{self.port}"

    @property
    def listen_url(self) -> str:
        """The address actually bound, as ``http://HOST:PORT``."""
        assert self._server is not None, "the exporter is not started"
        return net.url_of(self._server.socket.getsockname())

    @property
    def admin_enabled(self) -> bool:
        return isinstance(self.backend, FaultInjector)

    # Collection -------------------------------------------------------------------------------------------
    def collect_once(self) -> Snapshot:
        """Read every GPU once and publish the rendered snapshot."""
        with self._collect_lock:
            started = time.perf_counter()
            samples = []
            for info in self.gpus:
                try:
                    reading, error = self.backend.read(info.index), None
                except GpuUnavailable as e:
                    reading, error = None, e
                    self._self.read_errors.labels(str(info.index)).inc()
                samples.append(GpuSample(info, reading, error, self.backend.xid_counts(info.index)))
            elapsed = time.perf_counter() - started
            now = time.time()
            self.collections += 1
            self._self.collections.inc()
            self._self.duration.observe(elapsed)
            self._self.last.set(now)
            text = self._renderer.render(samples).encode() + generate_latest(self.registry)
            snapshot = Snapshot(text, gzip.compress(text, compresslevel=5, mtime=0), now, tuple(samples))
            self._snapshot = snapshot
            return snapshot

    def _collect_loop(self) -> None:
        interval = self.options.interval_s
        next_at = time.monotonic() + interval
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_at - time.monotonic()))
            if self._stop.is_set():
                return
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                self.collect_once()
            except Exception:  # a bug must not freeze the snapshot silently: log it and keep collecting
                self._log("gpu-exporter: collection failed:\n" + traceback.format_exc())
            if not woken:
                next_at += interval
                if next_at < time.monotonic():  # fell behind (slow reads): skip, never burst
                    next_at = time.monotonic() + interval

    def snapshot(self) -> Snapshot:
        if self.options.collect_on_scrape:
            return self.collect_once()
        assert self._snapshot is not None, "the exporter is not started"
        return self._snapshot

    def healthy(self) -> bool:
        """The collector is alive: the last snapshot is at most three intervals old."""
        snap = self._snapshot
        if snap is None:
            return False
        age = time.time() - snap.taken_at
        return self.options.collect_on_scrape or age <= 3 * self.options.interval_s + 1

    # Admin ------------------------------------------------------------------------------------------------
    def fault_state(self) -> dict[str, object]:
        backend = self.backend
        assert isinstance(backend, FaultInjector)
        return backend.fault_state()

    def inject(self, data: object) -> dict[str, object]:
        """Parse and apply a fault from the admin API; raises SpecError (HTTP 400) naming the wrong field."""
        from forge_slo.telemetry.fleet import fault_from_json

        backend = self.backend
        assert isinstance(backend, FaultInjector)
        fault = fault_from_json(data, gpu_count=len(self.gpus))
        backend.inject(fault)
        self._wake.set()  # collect now, so the next scrape shows it
        return fault.to_json()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections (Prometheus keeps one) must not block stop()
    allow_reuse_address = True
    request_queue_size = 128  # many scrapers connecting at once must not wait for a SYN retry
    exporter: GpuExporter


class _DeadlineReader(io.RawIOBase):
    """A connection's reading side that fails with TimeoutError once the handler's deadline has passed.

    A socket timeout alone bounds each recv, so a client sending one byte every few seconds would hold its
    thread forever; this bounds the whole request instead. http.server closes the connection on TimeoutError.
    """

    def __init__(self, sock: socket.socket, handler: _Handler) -> None:
        super().__init__()
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive within the read timeout")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._handler.server.exporter.options.read_timeout_s)  # for writes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "forge-slo-gpu-exporter"
    # Headers and body go out in two writes; with Nagle on, the body waits for a delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    server: _Server
    deadline = 0.0

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def _arm(self) -> None:
        self.deadline = time.monotonic() + self.server.exporter.options.read_timeout_s

    def handle_one_request(self) -> None:
        self._arm()  # from the connection's start or the last answer: the request line and headers
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        pass  # one line per scrape is noise; errors are logged by the exporter

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        exporter = self.server.exporter
        if path == "/metrics":
            snap = exporter.snapshot()
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                self._send(200, snap.body_gzip, CONTENT_TYPE, {"Content-Encoding": "gzip"})
            else:
                self._send(200, snap.body, CONTENT_TYPE)
        elif path == "/health":
            ok = exporter.healthy()
            self._send(200 if ok else 503, b"ok\n" if ok else b"collector stalled\n", "text/plain")
        elif path == "/admin/faults":
            if self._admin_allowed():
                self._json(200, exporter.fault_state())
        elif path == "/":
            admin = "  GET|POST /admin/faults" if exporter.admin_enabled else ""
            text = (f"forge-slo GPU exporter ({exporter.backend.name} backend, {len(exporter.gpus)} GPUs)\n"
                    f"GET /metrics  GET /health{admin}\n")
            self._send(200, text.encode(), "text/plain; charset=utf-8")
        else:
            self._json(404, {"error": f"no such path: {path}"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path != "/admin/faults":
            self._json(404, {"error": f"no such path: {path}"})
            return
        if not self._admin_allowed():
            return
        text = self.headers.get("Content-Length") or "0"
        length = int(text) if text.isdigit() else -1
        if length < 0:
            self.close_connection = True  # the body's end is unknown: this connection cannot carry another
            self._json(400, {"error": f"Content-Length: {text!r} is not a byte count"})
            return
        if length > MAX_ADMIN_BODY:
            self.close_connection = True
            self._json(413, {"error": f"request body over {MAX_ADMIN_BODY} bytes"})
            return
        self._arm()  # the body gets a read timeout of its own
        try:
            data = parse_json(self.rfile.read(length) or b"null")
        except BodyError as e:
            self._json(400, {"error": f"request body: {e.reason}"})
            return
        try:
            injected = self.server.exporter.inject(data)
        except SpecError as e:
            self._json(400, {"error": e.reason, "field": e.field})
            return
        except ValueError as e:
            self._json(400, {"error": str(e)})
            return
        self._json(200, {"injected": injected})

    def _admin_allowed(self) -> bool:
        exporter = self.server.exporter
        if not exporter.admin_enabled:
            self._json(404, {"error": "fault injection needs a fake fleet: start with --fake-fleet FILE"})
            return False
        if not auth.authorized(self.headers.get("Authorization"), exporter.admin_token):
            self._json(401, {"error": "missing or wrong 'Authorization: Bearer <token>'"})
            return False
        return True

    def _json(self, status: int, data: object) -> None:
        self._send(status, (json.dumps(data, sort_keys=True) + "\n").encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


def start_exporter(options: ExporterOptions, backend: GpuBackend | None = None) -> GpuExporter:
    """Open the backend (unless given), bind, collect once and serve in background threads."""
    backend = backend if backend is not None else open_backend(options)
    try:
        exporter = GpuExporter(options, backend)
    except BaseException:
        backend.close()
        raise
    try:
        exporter.start()
    except BaseException:
        exporter.stop()
        raise
    return exporter


def run_exporter(options: ExporterOptions, *, backend: GpuBackend | None = None,
                 stop: threading.Event | None = None) -> int:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set); returns the exit code (0)."""
    stop = stop or threading.Event()
    # Signals reach Python's main thread only; elsewhere whoever runs the exporter sets ``stop``.
    on_main = threading.current_thread() is threading.main_thread()
    with StopSignals(stop) if on_main else contextlib.nullcontext() as signals:
        exporter = start_exporter(options, backend)
        try:
            _announce(exporter)
            if isinstance(signals, StopSignals):
                signals.wait()
            else:
                while not stop.wait(0.5):
                    pass
        finally:
            exporter.stop()
    return 0


def _announce(exporter: GpuExporter) -> None:
    options = exporter.options
    source = f"fake fleet {options.fake_fleet}" if options.fake_fleet else "NVML"
    print(f"gpu-exporter: {len(exporter.gpus)} GPUs from {source}, read every {options.interval_s:g}s"
          + (" (and on every scrape)" if options.collect_on_scrape else ""), file=sys.stderr, flush=True)
    if exporter.admin_enabled:
        print(f"gpu-exporter: fault injection at POST {exporter.url}/admin/faults"
              + ("" if exporter.admin_token else " (no token: loopback only)"), file=sys.stderr, flush=True)
    print(f"listening on {exporter.listen_url}/metrics", flush=True)
