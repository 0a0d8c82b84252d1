"""The check request sent before any stage: a wrong model, endpoint, key or port ends the run at once, with the
server's own message and exit code 2, instead of a stage of failures explained only in the report.

One small request per model of the run (one output token), from the CLI's process with httpx (no Locust). A
client error (4xx other than 408 and 429) or a connection that cannot be made is bad input; anything else (a
5xx, a timeout, a malformed answer) only warns: the run itself measures and reports it, and a server under a
fault that fails some requests must still be load-tested.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import httpx

from forge_slo.errors import UsageError
from forge_slo.load.options import LoadOptions
from forge_slo.load.stream import error_message

CHECK_TIMEOUT_S = 30.0
ANSWER_READ_S = 5.0      # a 200 is all the check needs; the rest of the answer is read this long at most
ERROR_BODY_BYTES = 65536
_RETRYABLE = frozenset({408, 429})


@dataclass(frozen=True)
class CheckResult:
    model: str
    status: int | None
    message: str

    @property
    def bad_input(self) -> bool:
        return self.status is None or (400 <= self.status < 500 and self.status not in _RETRYABLE)


def check_body(options: LoadOptions, model: str) -> dict[str, object]:
    """The smallest request of the run's kind to ``model``."""
    if options.api == "embeddings":
        return {"model": model, "input": "ping"}
    body: dict[str, object] = {"model": model, "max_tokens": 1, "stream": True,
                               "stream_options": {"include_usage": True}}
    if options.api == "chat":
        body["messages"] = [{"role": "user", "content": "ping"}]
    else:
        body["prompt"] = "ping"
    return body


def check_one(options: LoadOptions, model: str, client: httpx.Client) -> CheckResult:
    """Send one check request; the status and a message (the server's own for an error)."""
    headers = {"Content-Type": "application/json"}
    if options.api_key:
        headers["Authorization"] = f"Bearer {options.api_key}"
    try:
        with client.stream("POST", options.url, json=check_body(options, model), headers=headers) as resp:
            body = b""
            until = time.monotonic() + ANSWER_READ_S
            for chunk in resp.iter_bytes():  # one token is asked for: read to its end, so no one is cut off
                body += chunk
                if len(body) >= ERROR_BODY_BYTES or time.monotonic() > until:
                    break
            if resp.status_code != 200:
                return CheckResult(model, resp.status_code, error_message(body, resp.status_code))
            return CheckResult(model, 200, "ok")
    except httpx.ConnectError as exc:
        return CheckResult(model, None, f"cannot connect to {options.target}: {_reason(exc)}")
    except httpx.HTTPError as exc:
        return CheckResult(model, 0, f"{type(exc).__name__}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text


def run_check(options: LoadOptions) -> None:
    """Check every model of the run; UsageError (exit 2) with the server's message on bad input."""
    timeout = httpx.Timeout(min(options.timeout_s, CHECK_TIMEOUT_S))
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for model, _ in options.model_mix:
            result = check_one(options, model, client)
            if result.bad_input:
                raise UsageError(f"the check request to {options.url} (model {model!r}) failed: {result.message}"
                                 + _hint(result))
            if result.status != 200:
                print(f"warning: the check request to {options.url} (model {model!r}) got {result.message}; "
                      "running the load anyway", file=sys.stderr)


def _hint(result: CheckResult) -> str:
    if result.status is None:
        return " (is the server running, and --target right?)"
    if result.status in (401, 403):
        return " (--api-key, or $OPENAI_API_KEY)"
    if result.status == 404:
        return " (--model, --api, --endpoint; skip this check with --no-check)"
    return " (skip this check with --no-check)"
