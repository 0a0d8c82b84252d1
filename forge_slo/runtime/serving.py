"""What the HTTP servers share: read and shutdown timeouts, JSON request bodies, and waiting for a stop signal.

Timeouts: a client has :data:`READ_TIMEOUT_S` from the moment its connection opens (or its previous answer was
sent) to deliver a whole request line and headers, and as long again for the body, so a connection that sends
a request byte by byte (slowloris) is closed instead of holding a worker forever. On SIGTERM a server stops
accepting, gives requests in flight :data:`SHUTDOWN_GRACE_S`, then cuts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    from aiohttp import web

READ_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 0.5
# How long a server reads and drops a request body it did not want (an early 4xx) before closing.
LINGER_S = 1.0
# Deeper than any OpenAI, Argo or Flagger payload (a tool's JSON schema nests a dozen levels); far below the
# depth where the parser or a later json.dumps of the value would hit Python's recursion limit.
MAX_JSON_DEPTH = 128
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class BodyError(ValueError):
    """A request body that cannot be used: ``status`` is the HTTP answer (400, 408), ``reason`` says why."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def parse_json(raw: bytes) -> Any:
    """A request body as JSON; BodyError (400) for invalid UTF-8, invalid JSON or nesting over the limit."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BodyError(f"the JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    except UnicodeDecodeError as exc:
        raise BodyError(f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise BodyError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise BodyError(f"the JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return value


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar: 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


async def read_body(request: web.BaseRequest, timeout_s: float = READ_TIMEOUT_S) -> bytes:
    """The whole body of an aiohttp request; BodyError (408) when it does not arrive within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise BodyError(f"the request body did not arrive within {timeout_s:g}s", status=408) from None


class StopSignals:
    """Inside ``with StopSignals(stop) as signals:``, SIGINT and SIGTERM set ``stop``, whichever thread the
    kernel delivers them to, and :meth:`wait` returns.

    Python runs signal handlers in the main thread only, and only when it executes bytecode. A main thread
    blocked in ``Event.wait()`` is woken by a signal delivered to itself, but not by one the kernel hands to
    another thread (any thread may take a process-directed signal, and a thread that is busy starting threads
    often does): it would sleep forever. So :meth:`wait` blocks on a socket that the C-level handler writes to
    from any thread (``signal.set_wakeup_fd``). Use it from the main thread.
    """

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop if stop is not None else threading.Event()
        self._previous_fd = -1
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        self._reader, self._writer = socket.socketpair()
        for end in (self._reader, self._writer):
            end.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until ``stop`` is set: by a signal, or by another thread (noticed within ``poll_s``)."""
        while not self.stop.is_set():
            ready, _, _ = select.select([self._reader], [], [], poll_s)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    self._reader.recv(4096)  # drained; the Python handler has run in this thread by now


async def in_daemon_thread(name: str, fn: Callable[..., T], *args: Any) -> T:
    """``await fn(*args)`` run in a new daemon thread called ``name``: unlike asyncio.to_thread's pool, nothing
    waits for it at exit, so a call blocked on a hung upstream (Prometheus) cannot hold the process after
    SIGTERM. An answer that comes after the awaiting coroutine timed out or was cancelled is dropped."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # timed out or cancelled: nobody wants the answer
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine, which re-raises it
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server is gone
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


async def serve_app(app: web.Application, host: str, port: int, *, read_timeout_s: float, ready_file: str | None,
                    announce: Callable[[str], str], on_stop: Callable[[], None]) -> int:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM; returns 0.

    Once listening it writes ``ready_file`` (``{"host", "port", "pid"}``, whole or not at all) and prints
    ``announce(url)`` to stderr, the URL being the address really bound. ``on_stop`` runs first when the
    server stops (or cannot listen), so upstream clients it closes release requests waiting on them; then the
    requests in flight get :data:`SHUTDOWN_GRACE_S`. ``read_timeout_s``: aiohttp closes a connection that has
    not delivered a whole request line and headers this long after it opened or got its last answer (it has
    no header timeout of its own)."""
    from aiohttp import web

    from forge_slo.errors import RunnerError
    from forge_slo.runtime import net

    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S,
                           keepalive_timeout=read_timeout_s, lingering_time=LINGER_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        on_stop()
        await runner.cleanup()
        raise RunnerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = runner.addresses[0]
    if ready_file:  # written whole, then renamed: a reader never sees half a file
        partial = f"{ready_file}.tmp"
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump({"host": host, "port": bound[1], "pid": os.getpid()}, handle)
        os.replace(partial, ready_file)
    print(announce(net.url_of(bound)), file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        on_stop()
        await runner.cleanup()
    return 0


def exit_now(code: int) -> NoReturn:
    """End a server process that has shut down cleanly, skipping the interpreter's finalization.

    A server that abandons work on SIGTERM (a look waiting on a hung Prometheus, in a daemon thread) has
    closed everything it owns by now; finalizing the interpreter around those threads took 3 to 14 s here,
    past the 2 s a stop may take. Standard streams are flushed first, so nothing printed is lost."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
