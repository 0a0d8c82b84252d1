"""One bearer-token check for every server, and one validation of a token given on a flag or in the environment.

The check is total: any header value (empty, huge, non-ASCII, lone surrogates from a JSON body or from bytes a
server decoded with ``surrogateescape``) gives True or False, never an exception, so a bad header is a 401 and
never a 500. Both sides are hashed before the constant-time comparison, so neither the content nor the length
of the token leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from forge_slo.errors import UsageError

SCHEME = "bearer"
# What a token may hold: visible ASCII. Anything else cannot be sent unchanged in an HTTP header by every
# client (httpx refuses non-ASCII, proxies fold or strip whitespace), so such a token could never match.
_VISIBLE_ASCII = frozenset(chr(c) for c in range(0x21, 0x7F))


def _digest(text: str) -> bytes:
    # surrogatepass encodes every str, lone surrogates included: the check never raises.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def token_matches(given: object, expected: str) -> bool:
    """Whether ``given`` (what a client sent: any string, or any JSON value) is ``expected``, in constant time."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(_digest(given), _digest(expected))


def bearer_token(header: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header value, or None for any other value."""
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != SCHEME:
        return None
    return credentials.strip()


def authorized(header: str | None, expected: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``expected`` (always True when no token is set)."""
    if expected is None:
        return True
    return token_matches(bearer_token(header), expected)


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be used as a bearer token, or None when it can."""
    if not token.strip():
        return "is empty or only whitespace; give a token such as the output of `openssl rand -hex 32`"
    for char in token:
        if char not in _VISIBLE_ASCII:
            what = "whitespace" if char.isspace() else f"the character {char!r} (U+{ord(char):04X})"
            return (f"holds {what}, which cannot travel in an HTTP header; "
                    "use visible ASCII only (letters, digits, punctuation)")
    return None


def check_token(token: str, source: str) -> str:
    """``token`` unchanged when it is usable; else a UsageError naming ``source`` (a flag or ``$VARIABLE``)."""
    problem = token_problem(token)
    if problem is not None:
        raise UsageError(f"{source}: the token {problem}")
    return token


def token_from(flag: str, value: str | None, env: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The token given on ``flag``, else in ``$env`` (unset or empty: not given), validated; None when absent."""
    if value is not None:
        return check_token(value, flag)
    from_env = (os.environ if environ is None else environ).get(env)
    if not from_env:
        return None
    return check_token(from_env, f"${env}")


def token_from_flags(value: str | None, file: str | None, env: str, flag: str = "--token",
                     file_flag: str = "--token-file") -> str | None:
    """The token of a server's ``--token``, ``--token-file`` (its text, trimmed) or ``$env``,
    validated; None when none is given. Both flags at once, or a file that cannot be read, is a UsageError."""
    if value is not None and file:
        raise UsageError(f"{flag} and {file_flag}: give one of them")
    if not file:
        return token_from(flag, value, env)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"{file_flag}: {file}: {reason or exc}") from None
    return check_token(text.strip(), f"{file_flag} {file}")
