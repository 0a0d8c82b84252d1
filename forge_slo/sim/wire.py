"""OpenAI wire format: request validation, error bodies, and response bytes built once per request.

Prompt tokens are estimated, never tokenized: ``ceil(characters / 4)`` per text, plus 3 tokens per chat
message for the chat template; a completions prompt given as token ids counts its ids.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from forge_slo.runtime.serving import BodyError, parse_json

Kind = Literal["chat", "completion"]
CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 3
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})


class WireError(Exception):
    """An error answer in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _default_type(status)

    def body(self) -> bytes:
        return json.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        ).encode()


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "NotFoundError"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def bad(message: str, param: str | None, code: str = "invalid_value") -> WireError:
    return WireError(400, message, param=param, code=code)


@dataclass(frozen=True)
class GenerationRequest:
    kind: Kind
    model: str | None
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    include_usage: bool


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = parse_json(raw)
    except BodyError as e:
        raise bad(f"The request body is not valid JSON: {e.reason}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.", None, "invalid_type")
    return body


def parse_generation(body: dict[str, Any], kind: Kind) -> GenerationRequest:
    """Validate the fields the simulator uses; other OpenAI fields (temperature, ...) are ignored."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad(f"'model' must be a string, got {_json_type(model)}.", "model", "invalid_type")
    prompt_tokens = _chat_prompt_tokens(body) if kind == "chat" else _completion_prompt_tokens(body)
    max_tokens = _max_tokens(body, "max_tokens")
    if kind == "chat":
        mct = _max_tokens(body, "max_completion_tokens")
        if mct is not None:
            max_tokens = mct
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad(f"'stream' must be a boolean, got {_json_type(stream)}.", "stream", "invalid_type")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad("'stream_options' must be an object.", "stream_options", "invalid_type")
        if not stream:
            raise bad("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        iu = options.get("include_usage")
        if iu is not None and not isinstance(iu, bool):
            raise bad(
                "'stream_options.include_usage' must be a boolean.",
                "stream_options.include_usage",
                "invalid_type",
            )
        include_usage = bool(iu)
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n != 1):
        raise bad("The simulator supports only n=1.", "n")
    return GenerationRequest(kind, model, prompt_tokens, max_tokens, bool(stream), include_usage)


def check_context_length(request: GenerationRequest, max_model_len: int) -> None:
    """Refuse, as vLLM does, a prompt that leaves no room in the context (with or without ``max_tokens``)."""
    prompt = request.prompt_tokens
    where = "messages" if request.kind == "chat" else "prompt"
    if request.max_tokens is None:
        if prompt < max_model_len:
            return
        raise WireError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your request has "
            f"{prompt} input tokens ({where}). Please reduce the length of the input.",
            param=where,
            code="context_length_exceeded",
        )
    if prompt + request.max_tokens > max_model_len:
        raise WireError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt + request.max_tokens} tokens ({prompt} in the {where}, {request.max_tokens} in the "
            f"completion). Please reduce the length of the {where} or completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )


def _max_tokens(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(
            f"'{key}' must be an integer, got {_json_type(value)} {json.dumps(value)}.", key, "invalid_type"
        )
    if value < 1:
        raise bad(f"'{key}' must be at least 1, got {value}.", key)
    return value


def _chat_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if messages is None:
        raise bad("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise bad(f"'messages' must be an array, got {_json_type(messages)}.", "messages", "invalid_type")
    if not messages:
        raise bad("'messages' must contain at least one message.", "messages")
    total = 0
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad(f"'{where}' must be an object, got {_json_type(msg)}.", where, "invalid_type")
        role = msg.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise bad(f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}.", f"{where}.role")
        total += CHAT_TOKENS_PER_MESSAGE + _content_tokens(msg.get("content"), f"{where}.content")
    return max(1, total)


def _content_tokens(content: object, where: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return estimate_tokens(content)
    if isinstance(content, list):
        total = 0
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise bad(f"'{where}[{j}]' must be an object.", f"{where}[{j}]", "invalid_type")
            text = part.get("text")
            if isinstance(text, str):
                total += estimate_tokens(text)
        return total
    raise bad(
        f"'{where}' must be a string or an array of parts, got {_json_type(content)}.", where, "invalid_type"
    )


def _completion_prompt_tokens(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if prompt is None:
        raise bad("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if isinstance(prompt, str):
        return max(1, estimate_tokens(prompt))
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return len(prompt)
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return max(1, estimate_tokens(prompt[0]))
        if (
            len(prompt) == 1
            and isinstance(prompt[0], list)
            and prompt[0]
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt[0])
        ):
            return len(prompt[0])
        if len(prompt) > 1 and all(isinstance(p, str | list) for p in prompt):
            raise bad("The simulator supports one prompt per request.", "prompt")
    raise bad(
        "'prompt' must be a string, an array of token ids, or an array with one of those.",
        "prompt",
        "invalid_type",
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------------------
# Responses


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def http_chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk: hex size, CRLF, data, CRLF."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


DONE_EVENT = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Identity:
    kind: Kind
    request_id: str
    created: int
    model: str


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@functools.lru_cache(maxsize=1024)
def _json_str(text: str) -> bytes:
    return json.dumps(text).encode()


_CHAT_ROLE = (
    b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
)
_CHAT_TOKEN = b'[{"index":0,"delta":{"content":%s},"logprobs":null,"finish_reason":null}]}\n\n'
_CHAT_FINAL = b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":%s}]}\n\n'
_TEXT_TOKEN = b'[{"index":0,"text":%s,"logprobs":null,"finish_reason":null}]}\n\n'
_TEXT_FINAL = b'[{"index":0,"text":"","logprobs":null,"finish_reason":%s}]}\n\n'
_USAGE = b'[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'


def stream_frames(
    ident: Identity,
    token_text: str,
    per_chunk: int,
    n: int,
    finish_reason: str,
    prompt_tokens: int,
    include_usage: bool,
) -> tuple[bytes, bytes, bytes]:
    """The first, middle and last HTTP chunks of a stream of ``n`` tokens, ``per_chunk`` tokens per event.

    The first carries the assistant role (chat) with the first token, so the first byte a client sees is its
    first token; the last carries the last token, the finish reason, the usage (if asked) and ``[DONE]``.
    Built from byte templates (the JSON is OpenAI's, compact, keys in OpenAI's order): no ``json.dumps`` of
    whole objects per request, none at all per token.
    """
    chat = ident.kind == "chat"
    obj = b"chat.completion.chunk" if chat else b"text_completion"
    start = b'data: {"id":%s,"object":"%s","created":%d,"model":%s,"choices":' % (
        _json_str(ident.request_id),
        obj,
        ident.created,
        _json_str(ident.model),
    )
    token_tpl = _CHAT_TOKEN if chat else _TEXT_TOKEN

    def tokens(k: int) -> bytes:
        return start + token_tpl % _json_str(token_text * k)

    head = start + _CHAT_ROLE if chat else b""
    tail = start + (_CHAT_FINAL if chat else _TEXT_FINAL) % _json_str(finish_reason)
    if include_usage:
        tail += start + _USAGE % (prompt_tokens, n, prompt_tokens + n)
    tail += DONE_EVENT
    first_k = min(per_chunk, n)
    last_k = n - per_chunk * ((n - 1) // per_chunk)
    mid = tokens(per_chunk)
    last = tokens(last_k) + tail
    if n <= per_chunk:
        return http_chunk(head + last), http_chunk(mid), http_chunk(head + last)
    return http_chunk(head + tokens(first_k)), http_chunk(mid), http_chunk(last)


def full_response(
    ident: Identity, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> bytes:
    if ident.kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return _dumps(
        {
            "id": ident.request_id,
            "object": obj,
            "created": ident.created,
            "model": ident.model,
            "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens),
        }
    )


# ---------------------------------------------------------------------------------------------------------
# Embeddings (a minimal route: enough for a load test of the endpoint)

EMBEDDING_DIMENSIONS = 8


def parse_embeddings(body: dict[str, Any]) -> tuple[str | None, int, int]:
    """(model, prompt tokens, inputs) of an embeddings request; ``input`` is a string, token ids, or a list of
    either."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad(f"'model' must be a string, got {_json_type(model)}.", "model", "invalid_type")
    raw = body.get("input")
    if raw is None:
        raise bad("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    items = raw if isinstance(raw, list) and raw and not all(_is_id(t) for t in raw) else [raw]
    tokens = 0
    for i, item in enumerate(items):
        if isinstance(item, str) and item:
            tokens += estimate_tokens(item)
        elif isinstance(item, list) and item and all(_is_id(t) for t in item):
            tokens += len(item)
        else:
            raise bad(f"'input[{i}]' must be a non-empty string or array of token ids.", "input", "invalid_type")
    return model, max(1, tokens), len(items)


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def embeddings_response(model: str, tokens: int, inputs: int) -> bytes:
    vector = [round(1.0 / (d + 1), 6) for d in range(EMBEDDING_DIMENSIONS)]
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(inputs)]
    return _dumps({"object": "list", "data": data, "model": model,
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
