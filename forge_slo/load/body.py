"""Reading a streamed answer line by line, within the request's deadline and the size caps.

geventhttpclient's own ``readline`` has no limit: it keeps one line however long it grows (and scans it again
from its start after each block, so a 100 MB line takes a minute), and a socket that always has data never
yields to the gevent timer that should end the request. :class:`LineReader` reads the same response object
block by block itself, so it can check the deadline and both caps after every block.

It relies on the parts of geventhttpclient's ``HTTPSocketResponse`` that its own ``readline`` uses
(``_body_buffer``, ``_sock``, ``feed``, ``block_size``, ``message_complete``); :func:`supports` tells
whether a response has them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from forge_slo.load.stream import StreamError

_NEEDS = ("_body_buffer", "_sock", "feed", "block_size", "message_complete")
YIELD_EVERY_BLOCKS = 64  # a server that floods bytes would otherwise keep every other stream waiting


def supports(stream: Any) -> bool:
    """Whether ``stream`` is a response this reader can read."""
    return all(hasattr(stream, name) for name in _NEEDS)


def format_size(size: int) -> str:
    """``1048576`` -> ``1MiB``: sizes as the flags take them."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


class LineReader:
    """Lines of one response body; each call to :meth:`readline` returns one line, ``b""`` at the end.

    Raises StreamError: ``timeout`` once ``deadline`` (a ``clock`` value) has passed, ``malformed`` for a line
    longer than ``max_line`` bytes or a body longer than ``max_body`` bytes.
    """

    __slots__ = ("_stream", "_deadline", "_max_line", "_max_body", "_timeout_s", "_clock", "_pause", "_scanned",
                 "_blocks", "received")

    def __init__(self, stream: Any, *, deadline: float, timeout_s: float, max_line: int, max_body: int,
                 clock: Callable[[], float] = time.perf_counter, pause: Callable[[], object] | None = None) -> None:
        self._stream = stream
        self._deadline = deadline
        self._timeout_s = timeout_s
        self._max_line = max_line
        self._max_body = max_body
        self._clock = clock
        self._pause = pause
        self._scanned = 0    # bytes of the buffer already searched for a newline
        self._blocks = 0
        self.received = len(stream._body_buffer)  # body bytes, including those read with the headers

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived."""
        return bool(self._stream.message_complete)

    def readline(self) -> bytes:
        stream = self._stream
        buf: bytearray = stream._body_buffer
        while True:
            at = buf.find(b"\n", self._scanned)
            if at >= 0:
                line = bytes(buf[:at + 1])
                del buf[:at + 1]
                self._scanned = 0
                return line
            self._scanned = len(buf)
            if len(buf) > self._max_line:
                raise StreamError("malformed", f"an event line is longer than --max-line-size "
                                               f"{format_size(self._max_line)}")
            if stream.message_complete:
                line = bytes(buf)  # a last line without a newline, then the end
                del buf[:]
                return line
            self._read_block(stream, buf)

    def _read_block(self, stream: Any, buf: bytearray) -> None:
        if self._clock() > self._deadline:
            raise StreamError("timeout", f"no full answer within {self._timeout_s:g}s")
        sock = stream._sock
        if sock is None:
            raise ConnectionResetError("the connection closed before the end of the answer")
        self._blocks += 1
        if self._pause is not None and self._blocks % YIELD_EVERY_BLOCKS == 0:
            self._pause()
        before = len(buf)
        data = sock.recv(stream.block_size)
        stream.feed(data)
        self.received += len(buf) - before
        if self.received > self._max_body:
            raise StreamError("malformed", f"the answer is longer than --max-response-size "
                                           f"{format_size(self._max_body)}")
        if not data and not stream.message_complete:
            raise ConnectionResetError("the connection closed before the end of the answer")
