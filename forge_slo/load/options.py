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
from forge_slo.errors import RunnerError, UsageError
from forge_slo.load.wire import Fields
from forge_slo.load.workload import LengthDist, load_dataset, parse_length

Api = Literal["chat", "completions", "embeddings"]
Arrival = Literal["constant", "poisson", "gamma"]
Mode = Literal["rate", "concurrency"]
APIS: tuple[str, ...] = ("chat", "completions", "embeddings")
ARRIVALS: tuple[str, ...] = ("constant", "poisson", "gamma")
MODES: tuple[str, ...] = ("rate", "concurrency")
PROGRESS_MODES: tuple[str, ...] = ("auto", "rich", "plain", "off")
API_KEY_ENV = "OPENAI_API_KEY"
MAX_WORKERS = 256
LOCUST_MASTER_PORT = 5557
SERVER_PRESETS: tuple[str, ...] = ("vllm", "sglang", "tgi", "triton")

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
    "server_metrics": "auto",
    "worker_wait": "5m",
    "growth": 2.0,
    "resolution": 0.05,
    "confidence": 0.95,
    "max_stages": 20,
}
SEARCH_MAX_LOAD = {"rate": 10000.0, "concurrency": 4096.0}


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
    """The path of the endpoint of ``api`` under a path ``prefix`` of the target."""
    return prefix + {"chat": "/v1/chat/completions", "completions": "/v1/completions",
                     "embeddings": "/v1/embeddings"}[api]


@dataclass(frozen=True)
class SearchOptions:
    """``--find-max``: grow the load from ``start`` by ``growth`` until a stage misses an SLO, then bisect until
    the bracket is narrower than ``resolution`` (relative); a stage holds when every SLO held with
    ``confidence``."""

    mode: Mode
    start: float
    max_load: float
    growth: float = 2.0
    resolution: float = 0.05
    confidence: float = 0.95
    max_stages: int = 20
    max_stage_s: float = 180.0     # a stage whose verdict is not yet sure runs on up to this long

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: object) -> SearchOptions:
        f = Fields(data, "search options")
        return cls(_mode(f.choice("mode", MODES)), f.number("start"), f.number("max_load"), f.number("growth"),
                   f.number("resolution"), f.number("confidence"), f.whole("max_stages"), f.number("max_stage_s"))


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
    models: tuple[tuple[str, float], ...] = ()  # a model/LoRA mix by weight (empty: every request to ``model``)
    turns: LengthDist | None = None  # multi-turn sessions: turns per session
    prefix_share: float = 0.0        # share of each prompt that is a prefix shared with other requests
    prefix_groups: int = 1
    tokenizer_path: str | None = None
    check: bool = True               # one check request before any stage
    search: SearchOptions | None = None
    server_metrics: str = "auto"     # the server's /metrics to scrape: auto (the target's), off, or a URL
    prometheus_url: str | None = None
    prometheus_selector: str = ""
    server_preset: str | None = None  # whose metric names the server exports (default: the spec's preset)
    expect_workers: int = 0          # --master: workers on other machines to wait for
    master_bind_host: str = "127.0.0.1"
    master_bind_port: int = LOCUST_MASTER_PORT
    worker_wait_s: float = 300.0

    @property
    def url(self) -> str:
        return self.target + self.endpoint

    @property
    def model_mix(self) -> tuple[tuple[str, float], ...]:
        """(name, weight) of every model requests go to."""
        return self.models or ((self.model, 1.0),)

    @property
    def stage_bound(self) -> int:
        """The most stages the run can have."""
        return self.search.max_stages if self.search is not None else len(self.stages)

    @property
    def longest_stage_s(self) -> float:
        return max(self.duration_s, self.search.max_stage_s) if self.search is not None else self.duration_s

    def to_dict(self) -> dict[str, Any]:
        """A JSON object of every field: what the engine and the workers receive."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["stages"] = [{"mode": s.mode, "value": s.value} for s in self.stages]
        for key in ("prompt_tokens", "output_tokens", "turns"):
            dist: LengthDist | None = data[key]
            data[key] = None if dist is None else {"kind": dist.kind, "a": dist.a, "b": dist.b,
                                                   "values": list(dist.values), "source": dist.source}
        data["models"] = [[name, weight] for name, weight in self.models]
        data["search"] = self.search.to_dict() if self.search is not None else None
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
            models=tuple((m.text("name"), m.number("weight")) for m in _pairs(f, "models")),
            turns=_maybe_length(f.maybe_child("turns")), prefix_share=f.number("prefix_share"),
            prefix_groups=f.whole("prefix_groups"), tokenizer_path=f.maybe_text("tokenizer_path"),
            check=f.flag("check"), search=_maybe_search(f.maybe_child("search")),
            server_metrics=f.text("server_metrics"), prometheus_url=f.maybe_text("prometheus_url"),
            prometheus_selector=f.text("prometheus_selector"), server_preset=f.maybe_text("server_preset"),
            expect_workers=f.whole("expect_workers"), master_bind_host=f.text("master_bind_host"),
            master_bind_port=f.whole("master_bind_port"), worker_wait_s=f.number("worker_wait_s"),
        )


def _mode(text: str) -> Mode:
    return "rate" if text == "rate" else "concurrency"


def _api(text: str) -> Api:
    return "chat" if text == "chat" else "embeddings" if text == "embeddings" else "completions"


def _arrival(text: str) -> Arrival:
    return "constant" if text == "constant" else "gamma" if text == "gamma" else "poisson"


def _length(f: Fields) -> LengthDist:
    kind = f.choice("kind", ("fixed", "uniform", "normal", "empirical"))
    values = f.data.get("values") or []
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                               for v in values):
        raise RunnerError(f"malformed {f.what}: 'values' is not a list of whole numbers >= 1")
    if kind == "empirical" and not values:
        raise RunnerError(f"malformed {f.what}: an empirical length needs 'values'")
    return LengthDist("fixed" if kind == "fixed" else "uniform" if kind == "uniform" else
                      "empirical" if kind == "empirical" else "normal", f.number("a"), f.number("b"),
                      tuple(values), str(f.data.get("source") or ""))


def _maybe_length(f: Fields | None) -> LengthDist | None:
    return None if f is None else _length(f)


def _maybe_search(f: Fields | None) -> SearchOptions | None:
    return None if f is None else SearchOptions.from_dict(f.data)


def _pairs(f: Fields, key: str) -> list[Fields]:
    """``[[name, weight], ...]`` as fields ``name`` and ``weight``."""
    raw = f.data.get(key) or []
    if not isinstance(raw, list) or not all(isinstance(p, list) and len(p) == 2 for p in raw):
        raise RunnerError(f"malformed {f.what}: {key!r} is not a list of [name, weight] pairs")
    return [Fields({"name": p[0], "weight": p[1]}, f"{f.what}: {key}[{i}]") for i, p in enumerate(raw)]


def add_load_arguments(parser: Any, *, locust: bool = False) -> None:
    """Add the load flags to an argparse (or Locust/configargparse) parser.

    With ``locust=True`` the flags that Locust already has an equivalent for are left out: ``--target``
    (Locust's ``-H/--host``), ``--workers`` and the distribution flags (``--processes`` or
    ``--master``/``--worker``). Required flags are checked by :func:`options_from_namespace`, so ``forge-slo load
    --worker`` and ``forge-slo load compare`` need none of them.
    """
    g = parser.add_argument_group("forge-slo load") if locust else parser
    if not locust:
        g.add_argument("--target", metavar="URL",
                       help="the server's base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine); required")
    g.add_argument("--model", metavar="NAME",
                   help="model name sent in every request; or a mix by weight, e.g. llama-8b=3,sql-lora=1 "
                        "(LoRA adapters are model names too); required")
    g.add_argument("--api", choices=APIS, default=DEFAULTS["api"],
                   help="/v1/chat/completions (default), /v1/completions or /v1/embeddings")
    g.add_argument("--endpoint", metavar="PATH",
                   help="path of the endpoint instead of the --api's usual one")
    g.add_argument("--api-key", metavar="KEY", help=f"sent as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")
    load = g if locust else g.add_mutually_exclusive_group()
    load.add_argument("--rate", metavar="R", help="open loop: send R requests per second whatever the server does")
    load.add_argument("--concurrency", metavar="C", help="closed loop: keep C streams running"
                      + (" (default: -u)" if locust else ""))
    load.add_argument("--sweep", metavar="KIND=LIST",
                      help="one stage per value, e.g. rate=1,2,4,8 or concurrency=1,8,32, each --duration long")
    load.add_argument("--find-max", choices=MODES, metavar="rate|concurrency",
                      help="search (grow, then bisect) for the highest rate or concurrency at which every SLO of "
                           "--spec holds with --confidence")
    _search_arguments(g)
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
    _workload_arguments(g)
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
    g.add_argument("--out", metavar="DIR", help="write records.jsonl, summary.json and report.html here"
                   + ("" if locust else "; required"))
    g.add_argument("--metrics-port", metavar="PORT",
                   help="serve client-side Prometheus metrics (forge_load_*) on this port while running "
                        "(0: any free port)")
    g.add_argument("--metrics-host", default=DEFAULTS["metrics_host"], metavar="ADDR",
                   help="address for --metrics-port (default 127.0.0.1)")
    g.add_argument("--no-stop-on-fail", dest="stop_on_fail", action="store_false", default=True,
                   help="run every sweep stage even after one misses an SLO")
    if not locust:
        _cli_arguments(g)


def _search_arguments(g: Any) -> None:
    g.add_argument("--start", metavar="V", help="--find-max: the first load tried (default 1)")
    g.add_argument("--max-load", metavar="V",
                   help="--find-max: never try more than this (default 10000 requests/s, 4096 streams)")
    g.add_argument("--growth", metavar="F", help="--find-max: factor between loads before a stage fails (default 2)")
    g.add_argument("--resolution", metavar="R",
                   help="--find-max: stop when the highest load that held and the lowest that failed are less than "
                        "R apart, relative to the first (default 0.05: 5%%)")
    g.add_argument("--confidence", metavar="C",
                   help="--find-max: a stage holds when every SLO held with this confidence, and fails as soon as "
                        "one missed with it (default 0.95)")
    g.add_argument("--max-stages", metavar="N", help="--find-max: try at most N stages (default 20)")
    g.add_argument("--max-stage-duration", type=duration_flag(), metavar="D",
                   help="--find-max: a stage whose verdict is not yet sure after --duration sends on, up to D "
                        "(default 3 x --duration)")


def _workload_arguments(g: Any) -> None:
    g.add_argument("--prompt-tokens", default=DEFAULTS["prompt_tokens"], metavar="DIST",
                   help="prompt length in tokens: N, uniform:MIN:MAX, normal:MEAN:STDDEV or file:PATH (a file of "
                        "lengths, one per line; drawn from) (default 128)")
    g.add_argument("--output-tokens", default=DEFAULTS["output_tokens"], metavar="DIST",
                   help="max_tokens of each request, same forms (default 128)")
    g.add_argument("--dataset", metavar="FILE",
                   help="prompts: JSONL of {\"prompt\": ...} or {\"messages\": [...]} (optional \"max_tokens\"), "
                        "or a ShareGPT file (JSON array or JSONL of {\"conversations\": [...]})")
    g.add_argument("--turns", metavar="DIST",
                   help="multi-turn sessions of DIST turns (N, uniform:MIN:MAX, ...): each turn sends the session's "
                        "history (every earlier question and answer) and a new question")
    g.add_argument("--prefix-share", metavar="S",
                   help="share (0 < S < 1) of each synthetic prompt that is a prefix shared with other requests "
                        "(a system prompt: what prefix caching serves)")
    g.add_argument("--prefix-groups", metavar="N", help="--prefix-share: N different shared prefixes (default 1)")
    g.add_argument("--tokenizer", metavar="FILE",
                   help="a local tokenizer.json (Hugging Face tokenizers): count every prompt's tokens here too")
    g.add_argument("--ignore-eos", action="store_true",
                   help="send ignore_eos=true (vLLM, SGLang) so every answer is exactly max_tokens long")


def _cli_arguments(g: Any) -> None:
    g.add_argument("--no-check", dest="check", action="store_false", default=True,
                   help="skip the check request sent before any stage (a wrong model, endpoint, key or port "
                        "otherwise ends the run at once with the server's message)")
    g.add_argument("--server-metrics", default=DEFAULTS["server_metrics"], metavar="auto|off|URL",
                   help="scrape the server's Prometheus metrics every second while running: auto (the target's "
                        "/metrics, if it has one), off, or a URL")
    g.add_argument("--prometheus", metavar="URL",
                   help="read the server's metrics from this Prometheus every second instead of scraping it")
    g.add_argument("--prometheus-selector", metavar="LABELS",
                   help="with --prometheus: the label matchers of the server's series, e.g. 'job=\"vllm\"'")
    g.add_argument("--server-preset", choices=SERVER_PRESETS,
                   help="whose metric names the server exports (default: the spec's preset, else vllm)")
    g.add_argument("--workers", type=int, default=0, metavar="N",
                   help="run a Locust master with N worker processes on this machine (default 0: one process)")
    g.add_argument("--master", action="store_true",
                   help="run the stages as a Locust master that waits for --expect-workers workers started "
                        "elsewhere with 'forge-slo load --worker --master-host HOST'")
    g.add_argument("--expect-workers", type=int, metavar="N", help="--master: workers to wait for (default 1)")
    g.add_argument("--master-bind-host", default="127.0.0.1", metavar="ADDR",
                   help="--master: address to listen on for workers (default 127.0.0.1; 0.0.0.0 for other hosts)")
    g.add_argument("--master-bind-port", type=int, default=LOCUST_MASTER_PORT, metavar="PORT",
                   help=f"--master: port to listen on for workers (default {LOCUST_MASTER_PORT})")
    g.add_argument("--worker-wait", type=duration_flag(), default=DEFAULTS["worker_wait"], metavar="D",
                   help="--master: how long to wait for the workers (default 5m)")
    g.add_argument("--worker", action="store_true",
                   help="be a worker of a 'forge-slo load --master' run (it sends the run's options)")
    g.add_argument("--master-host", metavar="HOST", help="--worker: the master's address")
    g.add_argument("--master-port", type=int, default=LOCUST_MASTER_PORT, metavar="PORT",
                   help=f"--worker: the master's port (default {LOCUST_MASTER_PORT})")
    g.add_argument("--progress", choices=PROGRESS_MODES, default=DEFAULTS["progress"],
                   help="live display: rich on a terminal, plain lines otherwise (default auto)")


def options_from_namespace(ns: argparse.Namespace | Mapping[str, Any], *, host: str | None = None,
                           default_users: int | None = None, require_out: bool = False,
                           locust: bool = False) -> LoadOptions:
    """Check the flags and build the options, once, at the edge; raises UsageError naming the flag.

    ``ns`` is what a parser made of :func:`add_load_arguments` (durations already in seconds), or a mapping
    of flag names to their text. With ``locust``, the namespace is Locust's: its ``--master``, ``--workers``
    and ``--expect-workers`` are Locust's own, not forge-slo's.
    """
    get = (ns.get if isinstance(ns, Mapping) else lambda k, d=None: getattr(ns, k, d))
    target, endpoint, api = _where(get, host)
    model, models = _models(get("model"))
    arrival = _choice("--arrival", get("arrival") or DEFAULTS["arrival"], ARRIVALS)
    duration, warmup = _stage_times(get)
    dataset_path = str(get("dataset")) if get("dataset") else None
    if dataset_path:
        load_dataset(dataset_path, api)  # checked here, so a bad line is exit 2 before anything starts
    if require_out and not get("out"):
        raise UsageError("--out: the directory for records, summary and report is required")
    spec_path = _spec_path(get("spec"))
    prompt_tokens = _length_flag("--prompt-tokens", get("prompt_tokens") or DEFAULTS["prompt_tokens"])
    search = _search(get, duration, spec_path)
    return LoadOptions(
        target=target, endpoint=endpoint, model=model, models=models, api=_api(api),
        stages=() if search is not None else _stages(get("rate"), get("concurrency"), get("sweep"), default_users),
        search=search,
        duration_s=duration, warmup_s=warmup, max_requests=_optional_int("--max-requests", get("max_requests")),
        arrival=_arrival(arrival), burstiness=_burstiness(get("burstiness"), arrival),
        prompt_tokens=prompt_tokens,
        output_tokens=_length_flag("--output-tokens", get("output_tokens") or DEFAULTS["output_tokens"]),
        dataset_path=dataset_path, ignore_eos=bool(get("ignore_eos")),
        turns=_turns(get("turns"), api),
        prefix_share=_prefix_share(get("prefix_share"), dataset_path),
        prefix_groups=_optional_int("--prefix-groups", get("prefix_groups")) or 1,
        tokenizer_path=_tokenizer(get("tokenizer")),
        timeout_s=_seconds("--timeout", get("timeout") or DEFAULTS["timeout"]),
        max_in_flight=_positive_int("--max-in-flight", get("max_in_flight", DEFAULTS["max_in_flight"])),
        seed=_whole("--seed", get("seed", 0)), api_key=_api_key(get("api_key")), spec_path=spec_path,
        service=get("service") or None, out=str(get("out")) if get("out") else None,
        metrics_port=_port(get("metrics_port")), metrics_host=str(get("metrics_host") or DEFAULTS["metrics_host"]),
        stop_on_fail=bool(get("stop_on_fail", True)),
        progress=_choice("--progress", get("progress") or DEFAULTS["progress"], PROGRESS_MODES),
        max_line_bytes=_size("--max-line-size", get("max_line_size") or DEFAULTS["max_line_size"]),
        max_response_bytes=_size("--max-response-size", get("max_response_size") or DEFAULTS["max_response_size"]),
        workers=0 if locust else _workers(get("workers")), check=bool(get("check", True)),
        server_metrics=_server_metrics(get("server_metrics")), prometheus_url=_url("--prometheus", get("prometheus")),
        prometheus_selector=str(get("prometheus_selector") or ""), server_preset=get("server_preset") or None,
        **({} if locust else _master(get)),
    )


def _models(raw: Any) -> tuple[str, tuple[tuple[str, float], ...]]:
    """``--model NAME`` or ``--model A=3,B=1``: the first model, and the mix (empty for one model)."""
    if not raw or not str(raw).strip():
        raise UsageError("--model: a model name is required")
    text = str(raw).strip()
    if "=" not in text:
        return text, ()
    mix: list[tuple[str, float]] = []
    for part in text.split(","):
        name, sep, weight = part.strip().rpartition("=")
        if not sep or not name.strip():
            raise UsageError(f"--model: {part.strip()!r} is not NAME=WEIGHT (in a mix, every model has a weight)")
        if name.strip() in (n for n, _ in mix):
            raise UsageError(f"--model: {name.strip()!r} is given twice")
        mix.append((name.strip(), positive_number("--model", weight)))
    return mix[0][0], tuple(mix)


def _search(get: Callable[..., Any], duration: float, spec_path: str | None) -> SearchOptions | None:
    mode = get("find_max")
    if not mode:
        for flag in ("start", "max_load", "growth", "resolution", "confidence", "max_stages", "max_stage_duration"):
            if get(flag) not in (None, ""):
                raise UsageError(f"--{flag.replace('_', '-')}: only applies to --find-max")
        return None
    mode = _mode(_choice("--find-max", mode, MODES))
    if spec_path is None:
        raise UsageError("--find-max: needs --spec (the SLOs that must hold)")
    start = positive_number("--start", get("start") or 1)
    max_load = positive_number("--max-load", get("max_load") or SEARCH_MAX_LOAD[mode])
    if max_load < start:
        raise UsageError(f"--max-load: {max_load:g} is below --start {start:g}")
    growth = positive_number("--growth", get("growth") or DEFAULTS["growth"])
    if growth <= 1.05:
        raise UsageError(f"--growth: {growth:g} must be above 1.05")
    resolution = positive_number("--resolution", get("resolution") or DEFAULTS["resolution"])
    if resolution >= 1:
        raise UsageError(f"--resolution: {resolution:g} must be below 1 (0.05 is 5%)")
    confidence = positive_number("--confidence", get("confidence") or DEFAULTS["confidence"])
    if not 0.5 <= confidence < 1:
        raise UsageError(f"--confidence: {confidence:g} must be at least 0.5 and below 1 (0.95 is 95%)")
    max_stages = _positive_int("--max-stages", get("max_stages") or DEFAULTS["max_stages"])
    if max_stages > 100:
        raise UsageError("--max-stages: at most 100")
    raw_max = get("max_stage_duration")
    max_stage_s = _seconds("--max-stage-duration", raw_max) if raw_max not in (None, "") else 3 * duration
    if max_stage_s < duration:
        raise UsageError(f"--max-stage-duration: {max_stage_s:g}s is shorter than --duration {duration:g}s")
    if mode == "concurrency" and (start != int(start) or max_load != int(max_load)):
        raise UsageError("--start, --max-load: whole numbers of streams with --find-max concurrency")
    return SearchOptions(mode, start, max_load, growth, resolution, confidence, max_stages, max_stage_s)


def _turns(raw: Any, api: str) -> LengthDist | None:
    if raw in (None, ""):
        return None
    if api == "embeddings":
        raise UsageError("--turns: sessions need --api chat or completions, not embeddings")
    return _length_flag("--turns", raw)


def _prefix_share(raw: Any, dataset: str | None) -> float:
    if raw in (None, ""):
        return 0.0
    share = positive_number("--prefix-share", raw)
    if share >= 1:
        raise UsageError(f"--prefix-share: {share:g} must be below 1 (0.5: half of each prompt is shared)")
    if dataset:
        raise UsageError("--prefix-share: shapes synthetic prompts (--prompt-tokens); a --dataset brings its own")
    return share


def _tokenizer(raw: Any) -> str | None:
    if not raw:
        return None
    from forge_slo.load.requests import load_tokenizer

    load_tokenizer(str(raw))  # a missing package or a bad file is exit 2 now, not in every process later
    return str(raw)


def _server_metrics(raw: Any) -> str:
    text = str(raw or DEFAULTS["server_metrics"]).strip()
    if text in ("auto", "off"):
        return text
    return _url("--server-metrics", text) or "off"


def _url(flag: str, raw: Any) -> str | None:
    if not raw:
        return None
    parts = urlsplit(str(raw).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{flag}: {raw!r} is not an http(s) URL")
    return str(raw).strip().rstrip("/")


def _master(get: Callable[..., Any]) -> dict[str, Any]:
    """The --master flags: remote workers to wait for, where to listen, how long to wait."""
    expect = get("expect_workers")
    if not get("master"):
        if expect not in (None, 0):
            raise UsageError("--expect-workers: only applies to --master")
        return {}
    if get("workers"):
        raise UsageError("--workers: starts workers on this machine; with --master they start elsewhere "
                         "(--expect-workers)")
    count = _whole("--expect-workers", expect if expect is not None else 1)
    if not 1 <= count <= MAX_WORKERS:
        raise UsageError(f"--expect-workers: {count} is not between 1 and {MAX_WORKERS}")
    port = _whole("--master-bind-port", get("master_bind_port", LOCUST_MASTER_PORT))
    if not 0 < port < 65536:
        raise UsageError(f"--master-bind-port: {port} is not a port number")
    return {"expect_workers": count, "master_bind_host": str(get("master_bind_host") or "127.0.0.1"),
            "master_bind_port": port,
            "worker_wait_s": _seconds("--worker-wait", get("worker_wait") or DEFAULTS["worker_wait"])}


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
    raise UsageError("one of --rate, --concurrency, --sweep or --find-max is required")


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
