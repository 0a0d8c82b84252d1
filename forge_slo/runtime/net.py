"""Where a server listens: loopback by default, never an open fault-injection API beyond it.

Every server binds :data:`DEFAULT_HOST` unless told otherwise. A server with endpoints that change its state
(the simulator's /admin/faults, the exporter's fault injection, the gate's analysis sessions) refuses to
listen beyond loopback without a token: :func:`check_exposure` raises a UsageError (exit 2) saying what to do.
"""

from __future__ import annotations

import ipaddress
import socket

from forge_slo.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
_WILDCARDS = ("", "0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server reachable from this machine only.

    ``localhost`` and any address in 127.0.0.0/8 or ::1 (IPv4-mapped too) are loopback; a wildcard, any
    other address and any other name are not (a name is not resolved: a hosts file may map it anywhere).
    """
    text = host.strip().strip("[]")
    if text.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_exposure(host: str, *, protected: str, token: str | None, remedy: str) -> None:
    """Refuse to serve ``protected`` (e.g. "fault injection at /admin/faults") beyond loopback without a token.

    ``remedy`` names how to give a token, e.g. "--admin-token TOKEN (or $FORGE_SLO_SIM_ADMIN_TOKEN)".
    """
    if token is not None or is_loopback(host):
        return
    where = "all interfaces" if host in _WILDCARDS else host
    raise UsageError(f"--host {host or '0.0.0.0'}: refusing to serve {protected} on {where} without a token: "
                     f"anyone who can reach the port could use it. Pass {remedy}, or bind --host {DEFAULT_HOST}")


def url_of(sockname: tuple[object, ...] | str) -> str:
    """``http://HOST:PORT`` of a bound socket's address (``getsockname()``): the address actually bound."""
    if isinstance(sockname, str):  # a Unix socket path
        return f"unix:{sockname}"
    host, port = str(sockname[0]), int(str(sockname[1]))
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def bound_address(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a listening socket."""
    return url_of(sock.getsockname())
