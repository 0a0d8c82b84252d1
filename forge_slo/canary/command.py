"""``forge-slo canary`` and ``forge-slo gate serve``: flags, parsing at the edge, and the runs.

Importing this module is cheap (no numpy, scipy or aiohttp); the work imports them when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from forge_slo.durations import duration_flag, format_duration
from forge_slo.errors import SourceError, UsageError
from forge_slo.runtime.serving import READ_TIMEOUT_S

if TYPE_CHECKING:
    from forge_slo.canary.model import CanaryVerdict, Direction, JudgeConfig
    from forge_slo.canary.sources import CanarySource
    from forge_slo.sources.records import RequestRecord
    from forge_slo.spec.model import ServiceSpec

CANARY_DESCRIPTION = (
    "Judge a canary against its baseline and against the error budgets of a spec's SLOs: the typical latency "
    "(Hodges-Lehmann / Mann-Whitney), the requests over each latency SLO's threshold and the failed requests "
    "(counted: the canary's burn rate of the budget, and its rate against the baseline's), with tests that "
    "stay valid however often the canary is looked at. Reads Prometheus (histogram buckets and counters per "
    "arm) or load-test records. Exit codes: 0 pass, 1 fail, 2 bad input, 3 inconclusive (too little data, "
    "real doubt, or an unreachable source)."
)
GATE_DESCRIPTION = (
    "Serve the canary judge over HTTP for Argo Rollouts' web metric provider (GET or POST /v1/argo: 200 with "
    "the verdict as JSON) and Flagger webhooks (POST /v1/flagger/rollout and /v1/flagger/confirm-promotion: "
    "200 to proceed, 412 to halt). Every request needs 'Authorization: Bearer TOKEN'. A look that cannot read "
    "Prometheus within --look-timeout is inconclusive."
)
TOKEN_ENV = "FORGE_SLO_GATE_TOKEN"
DEFAULT_WINDOW_S = 1800.0
DEFAULT_INTERVAL_S = 60.0
# Continuous mode judges once per look: a window that needs more looks than this is a mistake (a wrong
# timestamp in the records, or a window of days at an interval of seconds), refused before the first look.
MAX_LOOKS = 10_000
# A records file is held in memory (about three times its size): larger files, or more records of one arm
# and stage than this, are refused before they exhaust it (a canary at 100 requests/s for 30 minutes has
# 180,000).
MAX_RECORDS_FILE_BYTES = 1024 * 1024 * 1024
MAX_RECORDS = 1_000_000


# ------------------------------------------------------------------------------------------------ parsing

def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 0.5 (e.g. 0.01)")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _fraction_text(text: str, flag: str) -> float:
    """``10%`` or ``0.1`` -> 0.1."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a percentage (write e.g. 10% or 0.1)") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{flag}: {text!r} must be a non-negative percentage")
    return value


def add_judge_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``canary`` and ``gate serve``: how the judge judges."""
    g = parser.add_argument_group("judge")
    g.add_argument("--alpha", type=_probability, default=0.01,
                   help="probability that a canary as good as its baseline fails, across all checks and all "
                        "looks (default 0.01)")
    g.add_argument("--allow", action="append", default=[], metavar="NAME=PCT",
                   help="allowed degradation of a check before the canary fails: NAME is a check kind (shift, "
                        "p90, p99, errors), an SLO or SLO.CHECK; PCT a relative change, e.g. ttft.p99=10%% "
                        "(defaults: shift 5%%, p90 10%%, p99 10%%, errors 25%% growth of the error rate)")
    g.add_argument("--advisory", action="append", default=[], metavar="NAME",
                   help="make a check (or an SLO's checks) advisory: failing it lowers the score but does not "
                        "fail the canary alone (default: every check is critical)")
    g.add_argument("--direction", action="append", default=[], metavar="NAME=DIR",
                   help="which change counts as worse: increase (default), decrease or both")
    g.add_argument("--min-samples", type=int, default=100, metavar="N",
                   help="requests each arm needs before a check may decide (default 100)")
    g.add_argument("--min-score", type=float, default=75.0, metavar="SCORE",
                   help="fail when advisory failures bring the score (share of judged checks that did not fail) "
                        "below this (default 75)")
    g.add_argument("--design-samples", type=_positive, default=1000.0, metavar="N",
                   help="sample size per arm at which the confidence sequences are tightest (default 1000)")
    g.add_argument("--burn-factor", type=_positive, default=1.0, metavar="X",
                   help="fail a canary that burns an SLO's error budget faster than X times the rate its "
                        "objective allows, with confidence, unless the baseline burns as fast (default 1)")
    g.add_argument("--errors-floor", type=float, default=0.1, metavar="SHARE",
                   help="a canary worse than its baseline on failed requests or requests over a threshold "
                        "fails only when its rate of them is above this share of the SLO's error budget too "
                        "(default 0.1)")


def judge_config_from_args(args: argparse.Namespace) -> JudgeConfig:
    from forge_slo.canary.model import DIRECTIONS, JudgeConfig, frozen

    allowed: dict[str, float] = {}
    for item in args.allow:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--allow: {item!r} is not NAME=PCT (e.g. ttft.p99=10%)")
        allowed[name.strip()] = _fraction_text(value, f"--allow {name.strip()}")
    directions: dict[str, Direction] = {}
    for item in args.direction:
        name, sep, value = item.partition("=")
        value = value.strip()
        if not sep or not name.strip():
            raise UsageError(f"--direction: {item!r} is not NAME=DIR (e.g. ttft.shift=both)")
        if value not in DIRECTIONS:
            raise UsageError(f"--direction {name.strip()}: {value!r} is not one of {', '.join(DIRECTIONS)}")
        directions[name.strip()] = DIRECTIONS[DIRECTIONS.index(value)]
    if args.min_samples < 1:
        raise UsageError(f"--min-samples: {args.min_samples} must be at least 1")
    if not 0 <= args.min_score <= 100:
        raise UsageError(f"--min-score: {args.min_score:g} must be between 0 and 100")
    if not 0 <= args.errors_floor <= 1:
        raise UsageError(f"--errors-floor: {args.errors_floor:g} must be between 0 and 1")
    return JudgeConfig(alpha=args.alpha, min_samples=args.min_samples, design_samples=args.design_samples,
                       min_score=args.min_score, errors_floor=args.errors_floor, burn_factor=args.burn_factor,
                       allowed=frozen(allowed),
                       advisory=frozenset(a.strip() for a in args.advisory), directions=frozen(directions))


def load_service_specs(paths: Sequence[str]) -> list[ServiceSpec]:
    from forge_slo.spec import load_specs

    for path in paths:
        if not Path(path).exists():
            raise UsageError(f"--spec: {path}: no such file or directory")
    specs = load_specs(list(paths))
    if not specs:
        raise UsageError(f"--spec: {', '.join(paths)} holds no service spec")
    return specs


def pick_service(specs: Sequence[ServiceSpec], name: str | None, flag: str = "--service") -> ServiceSpec:
    if name is None:
        if len(specs) == 1:
            return specs[0]
        raise UsageError(f"{flag}: the specs hold {len(specs)} services ({', '.join(s.service for s in specs)}); "
                         "name one")
    for spec in specs:
        if spec.service == name:
            return spec
    raise UsageError(f"{flag}: no service {name!r} in the specs (have {', '.join(s.service for s in specs)})")


def parse_arm(text: str, flag: str) -> dict[str, str]:
    from forge_slo.canary.selectors import SelectorError, parse_selector

    try:
        return dict(parse_selector(text))
    except SelectorError as exc:
        raise UsageError(f"{flag}: {exc}") from None


# ----------------------------------------------------------------------------------------------- canary

def build_canary_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``forge-slo canary``'s flags to ``parser`` and return it."""
    parser.add_argument("--spec", required=True, action="append", metavar="FILE",
                        help="spec file or directory (repeatable)")
    parser.add_argument("--service", metavar="NAME", help="which service of the specs (needed when they hold several)")
    src = parser.add_argument_group("source (Prometheus, or load-test records)")
    src.add_argument("--prometheus", metavar="URL", help="Prometheus base URL, e.g. http://prometheus:9090")
    src.add_argument("--baseline", metavar="SELECTOR",
                     help="label matchers of the baseline's series, e.g. deployment=baseline,namespace=prod")
    src.add_argument("--canary", metavar="SELECTOR", help="label matchers of the canary's series")
    src.add_argument("--prometheus-timeout", type=duration_flag(), default=10.0, metavar="DURATION",
                     help="timeout of each Prometheus query, e.g. 10s, 2.5s (default 10s)")
    src.add_argument("--baseline-records", metavar="FILE",
                     help="JSONL load-test records of the baseline (records whose arm is set and is not "
                          "'baseline' are left out)")
    src.add_argument("--canary-records", metavar="FILE", help="JSONL load-test records of the canary")
    src.add_argument("--stage", metavar="NAME",
                     help="judge the records of this sweep stage only (e.g. rate=2); needed when the records "
                          "hold several stages")
    run = parser.add_argument_group("analysis")
    run.add_argument("--window", type=duration_flag(), metavar="DURATION",
                     help="analysis window: Prometheus reads the last WINDOW (default 30m); records keep the "
                          "first WINDOW from their first request (default: all)")
    run.add_argument("--interval", type=duration_flag(), metavar="DURATION",
                     help="continuous mode: look every INTERVAL until a verdict or the end of the window "
                          "(Prometheus: from now on; records: replayed by their timestamps)")
    run.add_argument("--json", action="store_true", help="print the verdict as JSON")
    add_judge_flags(parser)
    return parser


def canary_from_args(args: argparse.Namespace) -> int:
    """Run ``forge-slo canary``; returns the exit code (0 pass, 1 fail, 3 inconclusive); bad input raises."""
    from forge_slo.canary.judge import check_config_names

    config = judge_config_from_args(args)
    specs = load_service_specs(args.spec)
    spec = pick_service(specs, args.service)
    check_config_names([spec], config)
    prom = args.prometheus is not None or args.baseline is not None or args.canary is not None
    records = args.baseline_records is not None or args.canary_records is not None
    if prom and args.stage is not None:
        raise UsageError("--stage picks a stage of load-test records; Prometheus has no stages")
    if prom and records:
        raise UsageError("--prometheus/--baseline/--canary and --baseline-records/--canary-records are two "
                         "different sources; use one")
    if not prom and not records:
        raise UsageError("no source: give --prometheus URL --baseline SELECTOR --canary SELECTOR, or "
                         "--baseline-records FILE --canary-records FILE")
    if args.interval is not None and args.window is not None and args.interval > args.window:
        raise UsageError(f"--interval {format_duration(args.interval)} is longer than --window "
                         f"{format_duration(args.window)}")
    emit = _emitter(args.json)
    if prom:
        for flag, value in (("--prometheus", args.prometheus), ("--baseline", args.baseline),
                            ("--canary", args.canary)):
            if value is None:
                raise UsageError(f"{flag} is required with a Prometheus source")
        baseline, canary = parse_arm(args.baseline, "--baseline"), parse_arm(args.canary, "--canary")
        _check_arms(baseline, canary)
        if not args.prometheus.startswith(("http://", "https://")):
            raise UsageError(f"--prometheus: {args.prometheus!r} must start with http:// or https://")
        verdict = _run_prometheus(spec, config, args, baseline, canary, emit)
    else:
        for flag, value in (("--baseline-records", args.baseline_records),
                            ("--canary-records", args.canary_records)):
            if value is None:
                raise UsageError(f"{flag} is required with a records source")
        if args.stage is not None and not args.stage.strip():
            raise UsageError("--stage: the stage name is empty")
        verdict = _run_records(spec, config, args, emit)
    _print_verdict(verdict, args.json)
    return verdict.exit_code


def _check_arms(baseline: dict[str, str], canary: dict[str, str]) -> None:
    from forge_slo.canary.selectors import SelectorError, check_arms

    try:
        check_arms(baseline, canary)
    except SelectorError as exc:
        raise UsageError(f"--canary: {exc}") from None


def _emitter(as_json: bool) -> Callable[[CanaryVerdict], None]:
    def emit(verdict: CanaryVerdict) -> None:
        score = "-" if verdict.score is None else f"{verdict.score:.0f}"
        line = (f"[{format_duration(float(max(round(verdict.elapsed_seconds), 1)))}] {verdict.verdict} "
                f"({verdict.decision}, score {score}): {verdict.reason}")
        print(line, file=sys.stderr if as_json else sys.stdout, flush=True)

    return emit


def _print_verdict(verdict: CanaryVerdict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(verdict.to_json(), indent=2, sort_keys=True))
    else:
        from forge_slo.canary.report import render_table

        print(render_table(verdict), end="")


def _run_prometheus(spec: ServiceSpec, config: JudgeConfig, args: argparse.Namespace, baseline: dict[str, str],
                    canary: dict[str, str], emit: Callable[[CanaryVerdict], None]) -> CanaryVerdict:
    from forge_slo.canary.judge import judge_source
    from forge_slo.canary.sources import PrometheusSource
    from forge_slo.sources.prometheus import PrometheusClient

    window = args.window if args.window is not None else DEFAULT_WINDOW_S
    with PrometheusClient(args.prometheus, timeout_s=args.prometheus_timeout) as client:
        source = PrometheusSource(client, baseline, canary)
        if args.interval is None:
            now = time.time()
            return judge_source(spec, source, config, start=now - window, end=now, complete=True,
                                window_seconds=window)
        looks = _planned_looks(window, args.interval, f"--window {format_duration(window)}")
        return _look_until_decided(spec, source, config, emit, start=time.time(), window=window,
                                   interval=args.interval, looks=looks, wait=True)


def _look_until_decided(spec: ServiceSpec, source: CanarySource, config: JudgeConfig,
                        emit: Callable[[CanaryVerdict], None], *, start: float, window: float, interval: float,
                        looks: int, wait: bool) -> CanaryVerdict:
    """A look every ``interval`` over the data since ``start`` until pass or fail or the end of the window;
    ``wait``: each look waits for its time to come (live data), else they follow at once (records)."""
    from forge_slo.canary.judge import judge_source

    verdict = None
    for k in range(1, looks + 1):
        look_at = min(start + k * interval, start + window)
        if wait:
            time.sleep(max(look_at - time.time(), 0.0))
        verdict = judge_source(spec, source, config, start=start, end=look_at, complete=k == looks,
                               window_seconds=window)
        emit(verdict)
        if verdict.verdict in ("pass", "fail"):
            break
    assert verdict is not None
    return verdict


def _planned_looks(window: float, interval: float, what: str) -> int:
    looks = max(int(math.ceil(window / interval - 1e-9)), 1)
    if looks > MAX_LOOKS:
        raise UsageError(f"--interval {format_duration(interval)} over {what} plans {looks} looks; at most "
                         f"{MAX_LOOKS}: use a longer --interval or a shorter --window")
    return looks


@dataclass(frozen=True)
class _Arm:
    """One arm's records as read from its file (its arm, its stage) and the stage they belong to."""

    records: list[RequestRecord]
    stage: str | None


def _read_arm(path: str, arm: str, flag: str, stage: str | None) -> _Arm:
    """The records of ``arm`` (and of ``stage``, when given) in ``path``, streamed so that a file of other
    arms or stages is never held whole; refuses empty, huge and mixed-stage files with a reason."""
    from forge_slo.sources.records import iter_records_file

    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise UsageError(f"{flag}: {path}: cannot read records: {exc.strerror or exc}") from None
    if size > MAX_RECORDS_FILE_BYTES:
        raise UsageError(f"{flag}: {path} is {size / 2**30:.1f} GiB; records files of at most "
                         f"{MAX_RECORDS_FILE_BYTES / 2**30:g} GiB are judged (split it, e.g. one file per stage)")
    kept: list[RequestRecord] = []
    stages: set[str] = set()
    read = 0
    try:
        for record in iter_records_file(path):
            read += 1
            if record.arm not in ("", arm):
                continue
            stages.add(record.stage)
            if stage is not None and record.stage != stage:
                continue
            kept.append(record)
            if len(kept) > MAX_RECORDS:
                raise UsageError(f"{flag}: {path} holds more than {MAX_RECORDS} records of the {arm}"
                                 f"{f' in stage {stage}' if stage is not None else ''}; at most {MAX_RECORDS} are "
                                 "judged (pick a stage with --stage, or split the file)")
    except SourceError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if not read:
        raise UsageError(f"{flag}: {path} holds no records (an empty file?)")
    if stage is not None and not kept:
        raise UsageError(f"{flag}: {path} has no {arm} records of stage {stage!r} (its stages: "
                         f"{_stage_list(stages)})")
    if stage is None and len(stages) > 1:
        raise UsageError(f"{flag}: {path} holds records of {len(stages)} stages ({_stage_list(stages)}); judging "
                         "them together would mix load levels: pick one with --stage NAME")
    kept_stage = stage if stage is not None else next(iter(stages), None)
    return _Arm(kept, kept_stage or None)


def _stage_list(stages: set[str]) -> str:
    names = sorted(repr(s) if s else "(none)" for s in stages)
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _run_records(spec: ServiceSpec, config: JudgeConfig, args: argparse.Namespace,
                 emit: Callable[[CanaryVerdict], None]) -> CanaryVerdict:
    from forge_slo.canary.judge import judge_source
    from forge_slo.canary.sources import RecordsSource

    base = _read_arm(args.baseline_records, "baseline", "--baseline-records", args.stage)
    can = _read_arm(args.canary_records, "canary", "--canary-records", args.stage)
    if base.stage != can.stage:
        raise UsageError(f"--canary-records: the arms' records come from different stages (baseline "
                         f"{base.stage or '(none)'!r}, canary {can.stage or '(none)'!r}); judge arms of one load "
                         "level")
    records = RecordsSource(base.records, can.records, (args.baseline_records, args.canary_records),
                            stage=base.stage)
    source: CanarySource = records
    if not records.arms["baseline"] or not records.arms["canary"]:
        empty = "--baseline-records" if not records.arms["baseline"] else "--canary-records"
        raise UsageError(f"{empty}: no records of that arm (after leaving out warm-up records and other arms)")
    first, last = records.time_range()
    window = args.window if args.window is not None else max(last - first, 1.0)
    end = min(last, first + window)
    if args.interval is None:
        return judge_source(spec, source, config, start=first, end=end, complete=True, window_seconds=window)
    what = (f"--window {format_duration(window)}" if args.window is not None else
            f"the records' span of {format_duration(window)} (from their first request to their last)")
    looks = _planned_looks(window, args.interval, what)
    return _look_until_decided(spec, source, config, emit, start=first, window=window, interval=args.interval,
                               looks=looks, wait=False)


# ------------------------------------------------------------------------------------------------- gate

def build_gate_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the ``gate`` parser (``forge-slo gate serve ...``) and return it."""
    sub = parser.add_subparsers(dest="gate_command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve the canary judge for Argo Rollouts and Flagger",
                           description=GATE_DESCRIPTION)
    serve.add_argument("--spec", required=True, action="append", metavar="FILE",
                       help="spec file or directory (repeatable); requests name a service of these specs")
    serve.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    serve.add_argument("--prometheus-timeout", type=duration_flag(), default=5.0, metavar="DURATION",
                       help="timeout of each Prometheus query, e.g. 5s, 500ms (default 5s; never more than the "
                            "look's time left)")
    serve.add_argument("--look-timeout", type=duration_flag(), default=None, metavar="DURATION",
                       help="the most one look may spend reading Prometheus before it answers inconclusive "
                            "(default 8s, under the 10 s Argo Rollouts' web provider waits by default)")
    serve.add_argument("--read-timeout", type=duration_flag(), default=READ_TIMEOUT_S, metavar="DURATION",
                       help="close a connection whose request line and headers, or body, do not arrive within "
                            f"this time; also the keep-alive idle limit (default {READ_TIMEOUT_S:g}s)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; 0.0.0.0 in a pod, which needs a token)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    serve.add_argument("--token", metavar="TOKEN",
                       help=f"bearer token clients must send, visible ASCII (also ${TOKEN_ENV})")
    serve.add_argument("--token-file", metavar="FILE", help="read the bearer token from this file")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="serve without a token (only on a loopback address: nobody else can reach it)")
    serve.add_argument("--window", type=duration_flag(), default=DEFAULT_WINDOW_S, metavar="DURATION",
                       help="default analysis window of a request (default 30m)")
    serve.add_argument("--interval", type=duration_flag(), default=DEFAULT_INTERVAL_S, metavar="DURATION",
                       help="default interval between a caller's looks (default 1m); the analysis is complete "
                            "at the first look at or after window - interval")
    serve.add_argument("--ready-file", metavar="FILE",
                       help="write {\"host\", \"port\", \"pid\"} as JSON to FILE once listening")
    add_judge_flags(serve)
    return parser


def gate_from_args(args: argparse.Namespace) -> int:
    """Run ``forge-slo gate serve`` until SIGINT/SIGTERM; bad input raises UsageError."""
    if getattr(args, "gate_command", None) != "serve":
        raise UsageError("gate: name a command: serve")
    from forge_slo.canary.judge import check_config_names

    config = judge_config_from_args(args)
    specs = load_service_specs(args.spec)
    check_config_names(specs, config)
    names = [s.service for s in specs]
    if len(set(names)) != len(names):
        raise UsageError("--spec: two specs describe the same service")
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port: {args.port} is not a port number (0-65535)")
    if args.interval > args.window:
        raise UsageError("--interval is longer than --window")
    if not args.prometheus.startswith(("http://", "https://")):
        raise UsageError(f"--prometheus: {args.prometheus!r} must start with http:// or https://")
    token = _gate_token(args)
    if token is None and not args.insecure_no_auth:
        raise UsageError(f"a bearer token is required: --token, --token-file or ${TOKEN_ENV} "
                         "(or --insecure-no-auth for a gate nobody else can reach)")
    from forge_slo.canary.gate import LOOK_TIMEOUT_S, GateOptions, serve

    options = GateOptions(
        specs={s.service: s for s in specs}, prometheus_url=args.prometheus.rstrip("/"),
        prometheus_timeout_s=args.prometheus_timeout, token=token, window_seconds=args.window,
        interval_seconds=args.interval, config=config, read_timeout_s=args.read_timeout,
        look_timeout_s=args.look_timeout if args.look_timeout is not None else LOOK_TIMEOUT_S,
    )
    return serve(options, host=args.host, port=args.port, ready_file=args.ready_file)


def _gate_token(args: argparse.Namespace) -> str | None:
    """The gate's token from --token, --token-file or $FORGE_SLO_GATE_TOKEN, validated; None when none."""
    from forge_slo.runtime.auth import token_from_flags

    return token_from_flags(args.token, args.token_file, TOKEN_ENV)
