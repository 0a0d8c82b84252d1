"""The load generator's flags, shared by ``forge-slo load`` and Locust's own parser (``locust -f``).

Flags are added to a parser (the CLI's, or Locust's when it runs a locustfile) and parsed once, at the edge,
into a frozen :class:`LoadOptions`. From there the options travel as data: to the engine process and to
Locust's workers as JSON (:meth:`LoadOptions.to_dict`, :meth:`LoadOptions.from_dict`), never as flags again.
Importing this module is cheap: no Locust, no gevent, no prometheus_client.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from forge_slo.durations import duration_flag, parse_duration
from forge_slo.errors import UsageError
from forge_slo.load.wire import Fields
from forge_slo.load.workload import LengthDist, load_dataset, parse_length

Api = Literal["chat", "completions"]
Arrival = Literal["constant", "poisson", "gamma"]
Mode = Literal["rate", "concurrency"]
APIS: tuple[str, ...] = ("chat", "completions")
ARRIVALS: tuple[str, ...] = ("constant", "poisson", "gamma")
MODES: tuple[str, ...] = ("rate", "concurrency")
PROGRESS_MODES: tuple[str, ...] = ("auto", "rich", "plain", "off")
API_KEY_ENV = "OPENAI_API_KEY"
MAX_WORKERS = 256

DEFAULTS: dict[str, Any] = {
    "api": "chat",
    "arrival": "poisson",
    "duration": "60s",
    "warmup": "0s",
    "prompt_tokens": "128",
    "output_tokens": "128",
    "timeout": "120s",
    "max_in_flight": 2000,
    "max_line_size": "1MiB",
    "max_response_size": "64MiB",
    "seed": 0,
    "metrics_host": "127.0.0.1",
    "progress": "auto",
}


@dataclass(frozen=True)
class Stage:
    """One stage of a run: an arrival rate (requests/s, open loop) or a number of concurrent streams."""

    mode: Mode
    value: float

    @property
    def name(self) -> str:
        if self.mode == "rate":
            return f"rate={self.value:g}"
        return f"concurrency={int(self.value)}"


def endpoint_for(api: str, prefix: str = "") -> str:
    """The path of the completions endpoint of ``api`` under a path ``prefix`` of the target."""
    return prefix + ("/v1/chat/completions" if api == "chat" else "/v1/completions")


@dataclass(frozen=True)
class LoadOptions:
    """Everything a load run needs, typed and checked; it travels to the engine and workers as JSON."""

    target: str                      # scheme://host:port, no trailing slash
    endpoint: str                    # path of the completions endpoint, e.g. /v1/chat/completions
    model: str
    stages: tuple[Stage, ...]
    api: Api = "chat"
    duration_s: float = 60.0         # per stage
    warmup_s: float = 0.0            # per stage, excluded from the summary
    max_requests: int | None = None  # per stage
    arrival: Arrival = "poisson"
    burstiness: float = 1.0
    prompt_tokens: LengthDist = LengthDist("fixed", 128)
    output_tokens: LengthDist = LengthDist("fixed", 128)
    dataset_path: str | None = None  # read where requests are built (each worker reads its own copy)
    ignore_eos: bool = False
    timeout_s: float = 120.0
    max_in_flight: int = 2000
    seed: int = 0
    api_key: str | None = field(default=None, repr=False)
    spec_path: str | None = None
    service: str | None = None
    out: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    stop_on_fail: bool = True
    progress: str = "auto"
    max_line_bytes: int = 2**20          # one line of the event stream
    max_response_bytes: int = 64 * 2**20  # one answer's body
    workers: int = 0                 # Locust worker processes the engine starts (0: it sends itself)

    @property
    def url(self) -> str:
        return self.target + self.endpoint

    def to_dict(self) -> dict[str, Any]:
        """A JSON object of every field: what the engine and the workers receive."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["stages"] = [{"mode": s.mode, "value": s.value} for s in self.stages]
        for key in ("prompt_tokens", "output_tokens"):
            dist: LengthDist = data[key]
            data[key] = {"kind": dist.kind, "a": dist.a, "b": dist.b}
        return data

    @classmethod
    def from_dict(cls, data: object) -> LoadOptions:
        """The options :meth:`to_dict` wrote; RunnerError naming the field when one is missing or wrong."""
        f = Fields(data, "load options")
        return cls(
            target=f.text("target"), endpoint=f.text("endpoint"), model=f.text("model"),
            stages=tuple(Stage(_mode(s.choice("mode", MODES)), s.number("value")) for s in f.children("stages")),
            api=_api(f.choice("api", APIS)), duration_s=f.number("duration_s"), warmup_s=f.number("warmup_s"),
            max_requests=f.maybe_whole("max_requests"), arrival=_arrival(f.choice("arrival", ARRIVALS)),
            burstiness=f.number("burstiness"), prompt_tokens=_length(f.child("prompt_tokens")),
            output_tokens=_length(f.child("output_tokens")), dataset_path=f.maybe_text("dataset_path"),
            ignore_eos=f.flag("ignore_eos"), timeout_s=f.number("timeout_s"), max_in_flight=f.whole("max_in_flight"),
            seed=f.whole("seed"), api_key=f.maybe_text("api_key"), spec_path=f.maybe_text("spec_path"),
            service=f.maybe_text("service"), out=f.maybe_text("out"), metrics_port=f.maybe_whole("metrics_port"),
            metrics_host=f.text("metrics_host"), stop_on_fail=f.flag("stop_on_fail"),
            progress=f.choice("progress", PROGRESS_MODES), max_line_bytes=f.whole("max_line_bytes"),
            max_response_bytes=f.whole("max_response_bytes"), workers=f.whole("workers"),
        )


def _mode(text: str) -> Mode:
    return "rate" if text == "rate" else "concurrency"


def _api(text: str) -> Api:
    return "chat" if text == "chat" else "completions"


def _arrival(text: str) -> Arrival:
    return "constant" if text == "constant" else "gamma" if text == "gamma" else "poisson"


def _length(f: Fields) -> LengthDist:
    kind = f.choice("kind", ("fixed", "uniform", "normal"))
    return LengthDist("fixed" if kind == "fixed" else "uniform" if kind == "uniform" else "normal",
                      f.number("a"), f.number("b"))


def add_load_arguments(parser: Any, *, locust: bool = False) -> None:
    """Add the load flags to an argparse (or Locust/configargparse) parser.

    With ``locust=True`` the flags that Locust already has an equivalent for are left out: ``--target``
    (Locust's ``-H/--host``) and ``--workers`` (``--processes`` or ``--master``/``--worker``).
    """
    g = parser.add_argument_group("forge-slo load") if locust else parser
    if not locust:
        g.add_argument("--target", required=True, metavar="URL",
                       help="the server's base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    g.add_argument("--model", required=not locust, metavar="NAME", help="model name sent in every request")
    g.add_argument("--api", choices=("chat", "completions"), default=DEFAULTS["api"],
                   help="/v1/chat/completions (default) or /v1/completions")
    g.add_argument("--endpoint", metavar="PATH",
                   help="path of the endpoint instead of /v1/chat/completions or /v1/completions")
    g.add_argument("--api-key", metavar="KEY", help=f"sent as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")
    if locust:
        g.add_argument("--rate", metavar="R", help="open loop: requests per second (all workers together)")
        g.add_argument("--concurrency", metavar="C", help="closed loop: concurrent streams (default: -u)")
        g.add_argument("--sweep", metavar="KIND=LIST", help="stages, e.g. rate=1,2,4 or concurrency=1,8,32")
    else:
        load = g.add_mutually_exclusive_group(required=True)
        load.add_argument("--rate", metavar="R",
                          help="open loop: send R requests per second whatever the server does")
        load.add_argument("--concurrency", metavar="C", help="closed loop: keep C streams running")
        load.add_argument("--sweep", metavar="KIND=LIST",
                          help="one stage per value, e.g. rate=1,2,4,8 or concurrency=1,8,32, each --duration long")
    g.add_argument("--arrival", choices=ARRIVALS, default=DEFAULTS["arrival"],
                   help="open-loop arrivals: constant intervals, poisson (default) or gamma (with --burstiness)")
    g.add_argument("--burstiness", metavar="B",
                   help="gamma shape factor: 1 is Poisson, below 1 burstier, above 1 more even (default 1)")
    g.add_argument("--duration", type=duration_flag(), default=DEFAULTS["duration"], metavar="D",
                   help="how long each stage sends, e.g. 30s, 5m (default 60s)")
    g.add_argument("--warmup", type=duration_flag(allow_zero=True), default=DEFAULTS["warmup"], metavar="D",
                   help="requests sent in the first D of each stage are recorded but left out of the summary "
                        "(default 0s)")
    g.add_argument("--max-requests", metavar="N", help="end a stage after sending N requests")
    g.add_argument("--prompt-tokens", default=DEFAULTS["prompt_tokens"], metavar="DIST",
                   help="prompt length in tokens: N, uniform:MIN:MAX or normal:MEAN:STDDEV (default 128)")
    g.add_argument("--output-tokens", default=DEFAULTS["output_tokens"], metavar="DIST",
                   help="max_tokens of each request, same forms (default 128)")
    g.add_argument("--dataset", metavar="FILE",
                   help="JSONL of prompts: {\"prompt\": ...} or {\"messages\": [...]}, optional \"max_tokens\"")
    g.add_argument("--ignore-eos", action="store_true",
                   help="send ignore_eos=true (vLLM, SGLang) so every answer is exactly max_tokens long")
    g.add_argument("--timeout", type=duration_flag(), default=DEFAULTS["timeout"], metavar="D",
                   help="give up on a request after D (counted as a timeout; default 120s)")
    g.add_argument("--max-line-size", default=DEFAULTS["max_line_size"], metavar="SIZE",
                   help="a line of an answer's event stream longer than SIZE fails the request as malformed "
                        f"(bytes, or with KiB, MiB, GiB; default {DEFAULTS['max_line_size']})")
    g.add_argument("--max-response-size", default=DEFAULTS["max_response_size"], metavar="SIZE",
                   help="an answer longer than SIZE fails the request as malformed "
                        f"(default {DEFAULTS['max_response_size']})")
    g.add_argument("--max-in-flight", type=int, default=DEFAULTS["max_in_flight"], metavar="N",
                   help="open loop: arrivals beyond N running requests per process are dropped and counted "
                        "(default 2000)")
    g.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed of every random draw (default 0)")
    g.add_argument("--spec", metavar="FILE", help="judge the run against the SLOs of this spec")
    g.add_argument("--service", metavar="NAME", help="the service of the spec to judge (when it has several)")
    g.add_argument("--out", required=not locust, metavar="DIR",
                   help="write records.jsonl, summary.json and report.html here")
    g.add_argument("--metrics-port", metavar="PORT",
                   help="serve client-side Prometheus metrics (forge_load_*) on this port while running "
                        "(0: any free port)")
    g.add_argument("--metrics-host", default=DEFAULTS["metrics_host"], metavar="ADDR",
                   help="address for --metrics-port (default 127.0.0.1)")
    g.add_argument("--no-stop-on-fail", dest="stop_on_fail", action="store_false", default=True,
                   help="run every sweep stage even after one misses an SLO")
    if not locust:
        g.add_argument("--workers", type=int, default=0, metavar="N",
                       help="run a Locust master with N worker processes (default 0: one process)")
        g.add_argument("--progress", choices=PROGRESS_MODES, default=DEFAULTS["progress"],
                       help="live display: rich on a terminal, plain lines otherwise (default auto)")


def options_from_namespace(ns: argparse.Namespace | Mapping[str, Any], *, host: str | None = None,
                           default_users: int | None = None) -> LoadOptions:
    """Check the flags and build the options, once, at the edge; raises UsageError naming the flag.

    ``ns`` is what a parser made of :func:`add_load_arguments` (durations already in seconds), or a mapping
    of flag names to their text.
    """
    get = (ns.get if isinstance(ns, Mapping) else lambda k, d=None: getattr(ns, k, d))
    target, endpoint, api = _where(get, host)
    arrival = _choice("--arrival", get("arrival") or DEFAULTS["arrival"], ARRIVALS)
    duration, warmup = _stage_times(get)
    dataset_path = str(get("dataset")) if get("dataset") else None
    if dataset_path:
        load_dataset(dataset_path, api)  # checked here, so a bad line is exit 2 before anything starts
    return LoadOptions(
        target=target, endpoint=endpoint, model=_model(get("model")), api=_api(api),
        stages=_stages(get("rate"), get("concurrency"), get("sweep"), default_users),
        duration_s=duration, warmup_s=warmup, max_requests=_optional_int("--max-requests", get("max_requests")),
        arrival=_arrival(arrival), burstiness=_burstiness(get("burstiness"), arrival),
        prompt_tokens=_length_flag("--prompt-tokens", get("prompt_tokens") or DEFAULTS["prompt_tokens"]),
        output_tokens=_length_flag("--output-tokens", get("output_tokens") or DEFAULTS["output_tokens"]),
        dataset_path=dataset_path, ignore_eos=bool(get("ignore_eos")),
        timeout_s=_seconds("--timeout", get("timeout") or DEFAULTS["timeout"]),
        max_in_flight=_positive_int("--max-in-flight", get("max_in_flight", DEFAULTS["max_in_flight"])),
        seed=_whole("--seed", get("seed", 0)), api_key=_api_key(get("api_key")), spec_path=_spec_path(get("spec")),
        service=get("service") or None, out=str(get("out")) if get("out") else None,
        metrics_port=_port(get("metrics_port")), metrics_host=str(get("metrics_host") or DEFAULTS["metrics_host"]),
        stop_on_fail=bool(get("stop_on_fail", True)),
        progress=_choice("--progress", get("progress") or DEFAULTS["progress"], PROGRESS_MODES),
        max_line_bytes=_size("--max-line-size", get("max_line_size") or DEFAULTS["max_line_size"]),
        max_response_bytes=_size("--max-response-size", get("max_response_size") or DEFAULTS["max_response_size"]),
        workers=_workers(get("workers")),
    )


def _where(get: Callable[..., Any], host: str | None) -> tuple[str, str, str]:
    """(target, endpoint, api) from --target (or Locust's --host), --api and --endpoint."""
    target_raw = get("target") or host
    if not target_raw:
        raise UsageError("--target (or Locust's --host): the server's URL is required")
    target, prefix = split_target(str(target_raw))
    api = _choice("--api", get("api") or DEFAULTS["api"], APIS)
    endpoint = get("endpoint")
    if not endpoint:
        return target, endpoint_for(api, prefix), api
    if not str(endpoint).startswith("/"):
        raise UsageError(f"--endpoint: {endpoint!r} must start with /")
    return target, str(endpoint), api


def _model(raw: Any) -> str:
    if not raw:
        raise UsageError("--model: a model name is required")
    return str(raw)


def _choice(flag: str, raw: Any, choices: tuple[str, ...]) -> str:
    text = str(raw)
    if text not in choices:
        raise UsageError(f"{flag}: {text!r} is not one of {', '.join(choices)}")
    return text


def _stage_times(get: Callable[..., Any]) -> tuple[float, float]:
    """(--duration, --warmup) in seconds; the warm-up must leave part of the stage to measure."""
    duration = _seconds("--duration", get("duration") or DEFAULTS["duration"])
    warmup = _seconds("--warmup", get("warmup") or DEFAULTS["warmup"], allow_zero=True)
    if warmup >= duration:
        raise UsageError(f"--warmup: {warmup:g}s leaves nothing of a {duration:g}s stage to measure")
    return duration, warmup


def _seconds(flag: str, raw: Any, *, allow_zero: bool = False) -> float:
    """Seconds of a duration flag: argparse's ``duration_flag`` gave them already, or the text is parsed here."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    try:
        return parse_duration(str(raw), allow_zero=allow_zero)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _burstiness(raw: Any, arrival: str) -> float:
    if raw in (None, ""):
        return 1.0
    if arrival != "gamma":
        raise UsageError("--burstiness: only applies to --arrival gamma")
    return positive_number("--burstiness", raw)


def _length_flag(flag: str, raw: Any) -> LengthDist:
    try:
        return parse_length(str(raw))
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _optional_int(flag: str, raw: Any) -> int | None:
    return None if raw in (None, "") else _positive_int(flag, raw)


def _whole(flag: str, raw: Any) -> int:
    try:
        return int(raw if raw is not None else 0)
    except (TypeError, ValueError):
        raise UsageError(f"{flag}: {raw!r} is not an integer") from None


def _api_key(raw: Any) -> str | None:
    key = raw or os.environ.get(API_KEY_ENV) or None
    return str(key) if key else None


def _spec_path(raw: Any) -> str | None:
    if not raw:
        return None
    if not Path(str(raw)).exists():
        raise UsageError(f"--spec: {raw}: no such file")
    return str(raw)


def _port(raw: Any) -> int | None:
    if raw in (None, ""):
        return None
    try:
        port = int(str(raw))
    except ValueError:
        raise UsageError(f"--metrics-port: {raw!r} is not a port number") from None
    if not 0 <= port < 65536:
        raise UsageError(f"--metrics-port: {port} is not a port number (1-65535, or 0 for any)")
    return port


def _workers(raw: Any) -> int:
    workers = _whole("--workers", raw)
    if not 0 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers: {workers} is not between 0 and {MAX_WORKERS}")
    return workers


def split_target(raw: str) -> tuple[str, str]:
    """``http://h:p/v1`` -> (``http://h:p``, ``""``); a path other than /v1 becomes a prefix."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--target: {raw!r} is not an http(s) URL such as http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UsageError(f"--target: {raw!r} has a bad port") from None
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}", path


_SWEEP = re.compile(r"^\s*(rate|concurrency)\s*[=:]\s*(.+)$")


def _stages(rate: Any, concurrency: Any, sweep: Any, default_users: int | None) -> tuple[Stage, ...]:
    given = [name for name, v in (("--rate", rate), ("--concurrency", concurrency), ("--sweep", sweep))
             if v not in (None, "")]
    if len(given) > 1:
        raise UsageError(f"{given[1]}: give only one of --rate, --concurrency and --sweep")
    if rate not in (None, ""):
        return (Stage("rate", positive_number("--rate", rate)),)
    if concurrency not in (None, ""):
        return (Stage("concurrency", _positive_int("--concurrency", concurrency)),)
    if sweep not in (None, ""):
        m = _SWEEP.match(str(sweep))
        if not m:
            raise UsageError(f"--sweep: {sweep!r} must look like rate=1,2,4 or concurrency=1,8,32")
        kind = "rate" if m.group(1) == "rate" else "concurrency"
        values = [v for v in m.group(2).split(",") if v.strip()]
        if not values:
            raise UsageError("--sweep: no values")
        if len(values) > 100:
            raise UsageError("--sweep: at most 100 stages")
        if kind == "rate":
            return tuple(Stage("rate", positive_number("--sweep", v)) for v in values)
        return tuple(Stage("concurrency", _positive_int("--sweep", v)) for v in values)
    if default_users:
        return (Stage("concurrency", default_users),)
    raise UsageError("one of --rate, --concurrency or --sweep is required")


def positive_number(flag: str, raw: Any) -> float:
    """A finite number above zero; UsageError naming ``flag`` otherwise."""
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise UsageError(f"{flag}: {raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{flag}: {raw!r} must be a positive number")
    return value


def _positive_int(flag: str, raw: Any) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise UsageError(f"{flag}: {raw!r} is not a whole number") from None
    if value <= 0:
        raise UsageError(f"{flag}: {raw!r} must be at least 1")
    return value


_SIZE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
MAX_SIZE = 2**40


def _size(flag: str, raw: Any) -> int:
    """Bytes from ``65536``, ``64KiB``, ``1MiB`` or ``2GiB``."""
    match = _SIZE.match(str(raw).strip())
    if not match:
        raise UsageError(f"{flag}: {raw!r} is not a size such as 65536, 64KiB or 1MiB")
    value = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not 0 < value <= MAX_SIZE:
        raise UsageError(f"{flag}: {raw!r} must be between 1 byte and 1024GiB")
    return value
