"""The load generator's flags, shared by ``forge-slo load`` and Locust's own parser (``locust -f``).

Flags are added to a parser as plain strings (so Locust can forward them to its workers as they are) and
parsed once, at the edge, into a frozen :class:`LoadOptions`. Importing this module is cheap: no Locust, no
gevent, no prometheus_client.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from forge_slo.durations import parse_duration
from forge_slo.errors import UsageError
from forge_slo.load.workload import Dataset, LengthDist, load_dataset, parse_length

Api = Literal["chat", "completions"]
Arrival = Literal["constant", "poisson", "gamma"]
Mode = Literal["rate", "concurrency"]
ARRIVALS: tuple[str, ...] = ("constant", "poisson", "gamma")
PROGRESS_MODES: tuple[str, ...] = ("auto", "rich", "plain", "off")
API_KEY_ENV = "OPENAI_API_KEY"

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


@dataclass(frozen=True)
class LoadOptions:
    """Everything a load run needs, typed and checked."""

    target: str                      # scheme://host:port, no trailing slash
    endpoint: str                    # path of the completions endpoint, e.g. /v1/chat/completions
    model: str
    api: Api
    stages: tuple[Stage, ...]
    duration_s: float                # per stage
    warmup_s: float                  # per stage, excluded from the summary
    max_requests: int | None         # per stage
    arrival: Arrival
    burstiness: float
    prompt_tokens: LengthDist
    output_tokens: LengthDist
    dataset: Dataset | None
    dataset_path: str | None
    ignore_eos: bool
    timeout_s: float
    max_in_flight: int
    seed: int
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

    @property
    def url(self) -> str:
        return self.target + self.endpoint


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
    g.add_argument("--duration", default=DEFAULTS["duration"], metavar="D",
                   help="how long each stage sends, e.g. 30s, 5m (default 60s)")
    g.add_argument("--warmup", default=DEFAULTS["warmup"], metavar="D",
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
    g.add_argument("--timeout", default=DEFAULTS["timeout"], metavar="D",
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
    """Check the flags and build the options; raises UsageError naming the flag."""
    get = (ns.get if isinstance(ns, Mapping) else lambda k, d=None: getattr(ns, k, d))
    target_raw = get("target") or host
    if not target_raw:
        raise UsageError("--target (or Locust's --host): the server's URL is required")
    target, prefix = _target(str(target_raw))
    api = str(get("api") or DEFAULTS["api"])
    if api not in ("chat", "completions"):
        raise UsageError(f"--api: {api!r} is not chat or completions")
    endpoint = get("endpoint")
    if endpoint:
        endpoint = str(endpoint)
        if not endpoint.startswith("/"):
            raise UsageError(f"--endpoint: {endpoint!r} must start with /")
    else:
        endpoint = prefix + ("/v1/chat/completions" if api == "chat" else "/v1/completions")
    model = get("model")
    if not model:
        raise UsageError("--model: a model name is required")
    stages = _stages(get("rate"), get("concurrency"), get("sweep"), default_users)
    arrival = str(get("arrival") or DEFAULTS["arrival"])
    if arrival not in ARRIVALS:
        raise UsageError(f"--arrival: {arrival!r} is not one of {', '.join(ARRIVALS)}")
    burst_raw = get("burstiness")
    burstiness = 1.0
    if burst_raw not in (None, ""):
        burstiness = _positive_float("--burstiness", burst_raw)
        if arrival != "gamma":
            raise UsageError("--burstiness: only applies to --arrival gamma")
    duration = _duration("--duration", get("duration") or DEFAULTS["duration"])
    warmup = _duration("--warmup", get("warmup") or DEFAULTS["warmup"], allow_zero=True)
    if warmup >= duration:
        raise UsageError(f"--warmup: {warmup:g}s leaves nothing of a {duration:g}s stage to measure")
    max_requests = None
    if get("max_requests") not in (None, ""):
        max_requests = _positive_int("--max-requests", get("max_requests"))
    try:
        prompt = parse_length(str(get("prompt_tokens") or DEFAULTS["prompt_tokens"]))
    except ValueError as exc:
        raise UsageError(f"--prompt-tokens: {exc}") from None
    try:
        output = parse_length(str(get("output_tokens") or DEFAULTS["output_tokens"]))
    except ValueError as exc:
        raise UsageError(f"--output-tokens: {exc}") from None
    dataset_path = get("dataset")
    dataset = load_dataset(str(dataset_path), api) if dataset_path else None
    timeout = _duration("--timeout", get("timeout") or DEFAULTS["timeout"])
    max_in_flight = _positive_int("--max-in-flight", get("max_in_flight", DEFAULTS["max_in_flight"]))
    max_line = _size("--max-line-size", get("max_line_size") or DEFAULTS["max_line_size"])
    max_response = _size("--max-response-size", get("max_response_size") or DEFAULTS["max_response_size"])
    seed_raw = get("seed", 0)
    try:
        seed = int(seed_raw if seed_raw is not None else 0)
    except (TypeError, ValueError):
        raise UsageError(f"--seed: {seed_raw!r} is not an integer") from None
    metrics_port = None
    if get("metrics_port") not in (None, ""):
        try:
            metrics_port = int(str(get("metrics_port")))
        except ValueError:
            raise UsageError(f"--metrics-port: {get('metrics_port')!r} is not a port number") from None
        if not 0 <= metrics_port < 65536:
            raise UsageError(f"--metrics-port: {metrics_port} is not a port number (1-65535, or 0 for any)")
    spec_path = get("spec")
    if spec_path and not Path(str(spec_path)).exists():
        raise UsageError(f"--spec: {spec_path}: no such file")
    progress = str(get("progress") or "auto")
    if progress not in PROGRESS_MODES:
        raise UsageError(f"--progress: {progress!r} is not one of {', '.join(PROGRESS_MODES)}")
    api_key = get("api_key") or os.environ.get(API_KEY_ENV) or None
    return LoadOptions(
        target=target, endpoint=endpoint, model=str(model), api="chat" if api == "chat" else "completions",
        stages=stages, duration_s=duration, warmup_s=warmup, max_requests=max_requests,
        arrival="constant" if arrival == "constant" else "gamma" if arrival == "gamma" else "poisson",
        burstiness=burstiness, prompt_tokens=prompt, output_tokens=output, dataset=dataset,
        dataset_path=str(dataset_path) if dataset_path else None, ignore_eos=bool(get("ignore_eos")),
        timeout_s=timeout, max_in_flight=max_in_flight, seed=seed, api_key=str(api_key) if api_key else None,
        spec_path=str(spec_path) if spec_path else None, service=get("service") or None,
        out=str(get("out")) if get("out") else None, metrics_port=metrics_port,
        metrics_host=str(get("metrics_host") or "127.0.0.1"), stop_on_fail=bool(get("stop_on_fail", True)),
        progress=progress, max_line_bytes=max_line, max_response_bytes=max_response,
    )


def _target(raw: str) -> tuple[str, str]:
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
        return (Stage("rate", _positive_float("--rate", rate)),)
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
            return tuple(Stage("rate", _positive_float("--sweep", v)) for v in values)
        return tuple(Stage("concurrency", _positive_int("--sweep", v)) for v in values)
    if default_users:
        return (Stage("concurrency", default_users),)
    raise UsageError("one of --rate, --concurrency or --sweep is required")


def _positive_float(flag: str, raw: Any) -> float:
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


_SIMPLE_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(flag: str, raw: Any, *, allow_zero: bool = False) -> float:
    """Seconds from ``30``, ``2.5s``, ``500ms``, ``5m`` or a Prometheus duration such as ``1m30s``."""
    text = str(raw).strip()
    simple = _SIMPLE_DURATION.match(text)
    try:
        value = float(simple.group(1)) * _UNIT_S[simple.group(2)] if simple else float(text)
    except ValueError:
        try:
            value = parse_duration(text)
        except ValueError as exc:
            raise UsageError(f"{flag}: {exc}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{flag}: {raw!r} must be a positive duration such as 30s")
    return value
