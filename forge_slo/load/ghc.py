"""Two small changes to geventhttpclient, the HTTP client under Locust's FastHttpUser.

- A pooled socket's liveness check that does not yield to the gevent hub (a yield there lands in TTFT).
- A cap on the bytes of an answer's headers (geventhttpclient keeps every header however many arrive).

:func:`install` applies both, once, in a process that runs Locust users.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent import monkey  # type: ignore[import-untyped]
from geventhttpclient.connectionpool import ConnectionPool
from geventhttpclient.response import HTTPParseError, HTTPResponse

MAX_HEADER_BYTES = 2**20
_select_without_yield: Any = monkey.get_original("select", "select")
_installed: list[bool] = []


class HeadersTooLong(HTTPParseError):
    """An answer's headers went past MAX_HEADER_BYTES."""


def _socket_alive(self: ConnectionPool, sock: Any) -> bool:
    """geventhttpclient's liveness check of a pooled socket, without yielding to the gevent hub.

    The original asks gevent's ``select`` with a zero timeout, which switches to the hub: every other
    stream's pending events run before this request is even written, and that wait lands in its TTFT
    (measured here: +2 ms TTFT p50 at 100 streams, +20 ms at 500). A zero-timeout ``select`` system call
    answers the same question at once.
    """
    if sock is None:
        return False
    try:
        if sock.fileno() < 0:
            return False
        readable, _, _ = _select_without_yield([sock.fileno()], [], [], 0.0)
        return not readable
    except (OSError, ValueError):
        return False


def _cap_headers(original: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    """A header callback that fails the answer past MAX_HEADER_BYTES: a server that sends headers without end
    (and never lets the socket wait, so the --timeout timer never runs) would hold the request forever."""
    def on_header_part(self: Any, string: str) -> None:
        seen = getattr(self, "_forge_header_bytes", 0) + len(string)
        self._forge_header_bytes = seen
        if seen > MAX_HEADER_BYTES:
            raise HeadersTooLong(f"the answer's headers are longer than {MAX_HEADER_BYTES // 2**20}MiB")
        original(self, string)
    return on_header_part


def install() -> None:
    """Apply both changes (once per process; a second call does nothing)."""
    if _installed:
        return
    _installed.append(True)
    if hasattr(ConnectionPool, "_is_socket_alive"):
        ConnectionPool._is_socket_alive = _socket_alive  # type: ignore[method-assign]
    for name in ("_on_header_field", "_on_header_value"):
        if hasattr(HTTPResponse, name):
            setattr(HTTPResponse, name, _cap_headers(getattr(HTTPResponse, name)))
