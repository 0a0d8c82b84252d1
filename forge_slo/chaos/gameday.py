"""Game days: run a list of experiments, each through the real ``chaos run``, and judge them.

Each experiment's journal is kept; the verdict per experiment reads it: the steady-state hypothesis before
and after, the method's activities (a failed one is a failure), rollbacks, the budget guard, and the
expectations in the experiment's ``extensions`` entry named ``forge-slo``::

    "extensions": [{"name": "forge-slo",
                    "requires": ["torch", "netns", "netem"],            # else the experiment is skipped
                    "expect": {"within_s": {"page-fires": 30},           # a probe's output (seconds) at most
                               "outputs": {"page-quiet": false,          # a probe's output equals this
                                           "ratio": {"range": [0, 0.5]}}},
                    "plots": [{"title": "...", "query": "PromQL", "legend": "label"}]}]

The report (:mod:`forge_slo.chaos.report`) adds what Prometheus saw: the SLOs' SLI and burn rates through
each experiment and the share of the error budget it consumed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from forge_slo.chaos.configuration import resolve, substitute
from forge_slo.errors import RunnerError, UsageError
from forge_slo.runtime.process import Child, child_env, python_module, stop_process
from forge_slo.spec.yamlnode import Node, describe, from_data, load_file, read_bytes

EXPERIMENT_SUFFIXES = (".json", ".yaml", ".yml")
EXTENSION_NAME = "forge-slo"
REQUIREMENTS = ("torch", "netns", "netem", "gpu")
OK, DEVIATED, FAILED, SKIPPED, INTERRUPTED = "ok", "deviated", "failed", "skipped", "interrupted"
WAIT_FUNCS = ("wait_for_alert", "wait_for_alert_resolved", "wait_for_training_hang", "wait_for_straggler",
              "wait_for_training_healthy")


@dataclass(frozen=True)
class ProbeCheck:
    name: str
    value: Any
    tolerance: Any
    met: bool | None  # None: the probe itself failed
    error: str = ""


@dataclass(frozen=True)
class ActivityRun:
    name: str
    kind: str  # action | probe
    func: str
    status: str
    output: Any
    start: float
    end: float
    error: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentResult:
    path: Path
    name: str
    title: str
    outcome: str = SKIPPED
    reason: str = ""
    journal_path: Path | None = None
    log_path: Path | None = None
    status: str = ""
    deviated: bool = False
    start: float = 0.0
    end: float = 0.0
    before: list[ProbeCheck] = field(default_factory=list)
    after: list[ProbeCheck] = field(default_factory=list)
    method: list[ActivityRun] = field(default_factory=list)
    rollbacks: list[ActivityRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    guard: list[dict[str, Any]] = field(default_factory=list)
    slos: list[tuple[str, str]] = field(default_factory=list)
    configuration: dict[str, Any] = field(default_factory=dict)
    extension: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, float] = field(default_factory=dict)  # "service/slo" -> share of the period's budget

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end - self.start)

    def hypothesis_text(self, checks: list[ProbeCheck]) -> str:
        if not checks:
            return "not run" if self.outcome != SKIPPED else "-"
        if all(c.met for c in checks):
            return "met"
        failed = [c.name for c in checks if not c.met]
        return "NOT met: " + ", ".join(failed)

    def rollback_text(self) -> str:
        if not self.rollbacks:
            return "-" if self.outcome == SKIPPED else "none ran"
        bad = [r.name for r in self.rollbacks if r.status != "succeeded"]
        return f"{len(self.rollbacks) - len(bad)}/{len(self.rollbacks)} succeeded" + (
            f" (failed: {', '.join(bad)})" if bad else "")

    def detections(self) -> list[ActivityRun]:
        return [a for a in self.method if a.func in WAIT_FUNCS]


@dataclass
class GamedayResult:
    started: float
    ended: float = 0.0
    experiments: list[ExperimentResult] = field(default_factory=list)
    prometheus_url: str = ""
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def deviated(self) -> bool:
        return self.interrupted or any(e.outcome not in (OK, SKIPPED) for e in self.experiments)


# Finding and reading experiments -----------------------------------------------------------------------------

def collect(paths: Sequence[str | Path], *, _within: tuple[Path, ...] = ()) -> tuple[list[Path], dict[str, str]]:
    """Experiment files from files, directories (their ``*.json``/``*.yaml``, not nested, sorted) and game-day
    files (``kind: GameDay``: ``experiments`` relative to the file, optional ``env``); and that env.
    ``_within``: the game-day files being read, so one that lists itself (or a file listing it) is refused."""
    files: list[Path] = []
    env: dict[str, str] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in EXPERIMENT_SUFFIXES)
            if not found:
                raise UsageError(f"{path}: no *.json or *.yaml experiment files in this directory")
            files.extend(found)
        elif path.is_file():
            doc = read_node(path)
            if doc is not None and isinstance(doc.value, dict) and "kind" in doc.value \
                    and doc.value["kind"].value == "GameDay":
                if path.resolve() in _within:
                    chain = " -> ".join(str(p) for p in (*_within[_within.index(path.resolve()):], path.resolve()))
                    raise UsageError(f"{path}: game-day files list each other in a loop: {chain}")
                listed, more_env = _gameday_file(path, doc, (*_within, path.resolve()))
                files.extend(listed)
                env.update(more_env)
            else:
                files.append(path)
        else:
            raise UsageError(f"{path}: no such file or directory")
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values()), env


_GAMEDAY_FIELDS = {"apiVersion", "kind", "name", "description", "experiments", "env"}


def _gameday_file(path: Path, doc: Node, within: tuple[Path, ...]) -> tuple[list[Path], dict[str, str]]:
    items = doc.mapping(_GAMEDAY_FIELDS, required=("experiments",))
    entries = items["experiments"].sequence()
    if not entries:
        items["experiments"].fail("list the experiment files or directories (relative to this file)")
    listed = [entry.string() for entry in entries]
    env: dict[str, str] = {}
    if "env" in items and items["env"].value is not None:
        for key, value in items["env"].items():
            if not isinstance(value.value, str | int | float):
                value.fail(f"env values are strings or numbers, got {describe(value.value)}")
            env[key] = str(value.value)
    files, _ = collect([path.parent / x for x in listed], _within=within)
    return files, env


def read_node(path: Path) -> Node | None:
    """A game-day or experiment file as Nodes (None when empty): YAML with lines through the bounded reader,
    JSON with field paths."""
    if path.suffix != ".json":
        docs = load_file(path)
        if len(docs) > 1:
            docs[1].fail("a second YAML document; a game-day or experiment file holds one")
        return docs[0] if docs else None
    try:
        data = json.loads(read_bytes(path))
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        where = f"{path}:{line}" if line is not None else str(path)
        raise UsageError(f"{where}: not valid JSON: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise UsageError(f"{path}: not valid JSON: nested too deeply") from None
    return from_data(data, str(path))


def read_document(path: Path) -> Any:
    """A game-day or experiment file as plain data."""
    node = read_node(path)
    return node.plain() if node is not None else None


def load_experiment(path: Path) -> dict[str, Any]:
    doc = read_document(path)
    if not isinstance(doc, dict) or "title" not in doc or "method" not in doc:
        raise UsageError(f"{path}: not a Chaos Toolkit experiment (it needs a title and a method)")
    return doc


def extension(experiment: Mapping[str, Any]) -> dict[str, Any]:
    for ext in experiment.get("extensions") or []:
        if isinstance(ext, dict) and ext.get("name") == EXTENSION_NAME:
            return dict(ext)
    return {}


def slos_of(experiment: Mapping[str, Any], configuration: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every (service, slo) an activity or control of the experiment names."""
    found: list[tuple[str, str]] = []
    blocks = list((experiment.get("steady-state-hypothesis") or {}).get("probes") or [])
    blocks += list(experiment.get("method") or []) + list(experiment.get("controls") or [])
    for block in blocks:
        args = substitute((block.get("provider") or {}).get("arguments") or {}, configuration)
        service, slo = args.get("service"), args.get("slo")
        if isinstance(service, str) and isinstance(slo, str) and service and slo and (service, slo) not in found:
            found.append((service, slo))
    return found


# Requirements ---------------------------------------------------------------------------------------------

class Requirements:
    """Whether this machine offers what an experiment needs; each answer computed once."""

    def __init__(self) -> None:
        self._cache: dict[str, str | None] = {}

    def problem(self, requirement: str) -> str | None:
        if requirement not in REQUIREMENTS:
            return f"unknown requirement {requirement!r} (known: {', '.join(REQUIREMENTS)})"
        if requirement not in self._cache:
            self._cache[requirement] = self._check(requirement)
        return self._cache[requirement]

    @staticmethod
    def _check(requirement: str) -> str | None:
        from importlib.util import find_spec

        from forge_slo.chaos.network.actions import netem_support, netns_support

        if requirement == "torch":
            return None if find_spec("torch") else "torch is not installed (pip install 'forge-slo[train]')"
        if requirement == "netns":
            return netns_support()
        if requirement == "netem":
            return netem_support()
        try:
            import importlib

            pynvml: Any = importlib.import_module("pynvml")
            pynvml.nvmlInit()
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception as exc:  # no library, no driver
            return f"no NVIDIA GPU ({type(exc).__name__})"
        return None if count else "no NVIDIA GPU"


# Running --------------------------------------------------------------------------------------------------

def chaos_available() -> None:
    from importlib.util import find_spec

    if find_spec("chaostoolkit") is None or find_spec("chaoslib") is None:
        raise RunnerError("game days run experiments with Chaos Toolkit: pip install 'forge-slo[chaos]' "
                          "(chaostoolkit and chaostoolkit-lib)")


@dataclass(frozen=True)
class RunOptions:
    rollback_strategy: str = "always"
    timeout_s: float = 900.0
    settings: Path | None = None
    grace_s: float = 120.0


def run_chaos(experiment: Path, journal: Path, log: Path, env: Mapping[str, str], options: RunOptions,
              stop_requested: Callable[[], bool] = lambda: False) -> int:
    """``chaos run`` one experiment in its own session; SIGINT on timeout or when ``stop_requested``, so Chaos
    Toolkit interrupts the method and still plays the rollbacks (then SIGTERM and SIGKILL after
    ``grace_s``). Returns its exit code."""
    args = ["--log-file", str(log.with_suffix(".debug.log"))]
    if options.settings is not None:
        args += ["--settings", str(options.settings)]
    args += ["run", "--journal-path", str(journal), "--rollback-strategy", options.rollback_strategy, str(experiment)]
    child = Child("chaos run", python_module("chaostoolkit", *args), log_path=log, env=child_env(base=env),
                  own_session=True)
    child.start()
    assert child.proc is not None
    deadline = time.monotonic() + options.timeout_s
    try:
        while True:
            try:
                return child.proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline or stop_requested():
                child.proc.send_signal(signal.SIGINT)  # Chaos Toolkit: interrupted, rollbacks still play
                try:
                    return child.proc.wait(timeout=options.grace_s)
                except subprocess.TimeoutExpired:
                    return stop_process(child.proc)
    finally:
        if child.running():
            stop_process(child.proc, 10.0, signal.SIGKILL)


def judge(result: ExperimentResult, journal: Mapping[str, Any]) -> None:
    """Fill ``result`` from a Chaos Toolkit journal and the experiment's expectations."""
    result.status = str(journal.get("status", ""))
    result.deviated = bool(journal.get("deviated"))
    result.start = _ts(journal.get("start"))
    result.end = _ts(journal.get("end")) or result.start
    states = journal.get("steady_states") or {}
    result.before = _checks(states.get("before"))
    result.after = _checks(states.get("after"))
    result.method = [_activity(r) for r in journal.get("run") or []]
    result.rollbacks = [_activity(r) for r in journal.get("rollbacks") or []]
    result.guard = [g for g in journal.get("forge_slo_guard") or [] if isinstance(g, dict)]
    problems: list[str] = []
    for check in result.before:
        if not check.met:
            problems.append(f"hypothesis before the method not met: {check.name} = {_short(check.value)}"
                            + (f" ({check.error})" if check.error else ""))
    for check in result.after:
        if not check.met:
            problems.append(f"hypothesis after the method not met: {check.name} = {_short(check.value)}"
                            + (f" ({check.error})" if check.error else ""))
    for run in result.method:
        if run.status != "succeeded":
            problems.append(f"{run.kind} {run.name} {run.status}" + (f": {run.error}" if run.error else ""))
    for guard in result.guard:
        if guard.get("aborted"):
            problems.append(f"budget guard aborted the experiment: {guard.get('reason')}")
    expect = result.extension.get("expect") or {}
    by_name = {r.name: r for r in result.method}
    for name, limit in (expect.get("within_s") or {}).items():
        timed = by_name.get(name)
        if timed is None:
            problems.append(f"expected {name} within {limit}s, but it did not run")
        elif timed.status == "succeeded" and isinstance(timed.output, int | float) and timed.output > float(limit):
            problems.append(f"{name} took {timed.output:g}s, over the stated {limit}s")
    for name, want in (expect.get("outputs") or {}).items():
        observed = by_name.get(name)
        if observed is None or observed.status != "succeeded":
            continue  # reported above
        if not _matches(observed.output, want):
            problems.append(f"{name} returned {_short(observed.output)}, expected {_short(want)}")
    if result.status == "interrupted" and not any("guard" in p for p in problems):
        problems.append("the experiment was interrupted")
    elif result.status not in ("completed", "") and not problems:
        problems.append(f"Chaos Toolkit reports the experiment {result.status}")
    result.problems = problems
    if result.status == "interrupted":
        result.outcome = INTERRUPTED
    elif result.deviated or any(not c.met for c in result.after):
        result.outcome = DEVIATED
    elif problems:
        result.outcome = FAILED
    else:
        result.outcome = OK
    result.reason = "; ".join(problems)


def _matches(value: Any, want: Any) -> bool:
    if isinstance(want, dict) and "range" in want:
        low, high = want["range"]
        return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
    return bool(value == want and type(value) is type(want)) or (
        isinstance(value, int | float) and isinstance(want, int | float) and not isinstance(value, bool)
        and not isinstance(want, bool) and value == want)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _ts(text: Any) -> float:
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _error(run: Mapping[str, Any]) -> str:
    exc = run.get("exception")
    if isinstance(exc, list) and exc:
        return str(exc[-1]).strip().splitlines()[-1] if str(exc[-1]).strip() else ""
    return str(exc or "")


def _checks(state: Any) -> list[ProbeCheck]:
    if not isinstance(state, dict):
        return []
    out = []
    for run in state.get("probes") or []:
        activity = run.get("activity") or {}
        met = run.get("tolerance_met") if run.get("status") == "succeeded" else None
        out.append(ProbeCheck(str(activity.get("name", "?")), run.get("output"), activity.get("tolerance"),
                              bool(met) if met is not None else None, _error(run)))
    return out


def _activity(run: Mapping[str, Any]) -> ActivityRun:
    activity = run.get("activity") or {}
    provider = activity.get("provider") or {}
    return ActivityRun(str(activity.get("name", "?")), str(activity.get("type", "?")), str(provider.get("func", "")),
                       str(run.get("status") or "interrupted"), run.get("output"), _ts(run.get("start")),
                       _ts(run.get("end")), _error(run), dict(provider.get("arguments") or {}))


def safe_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)


def run_gameday(paths: Sequence[str | Path], report_dir: Path, *, env: Mapping[str, str] | None = None,
                options: RunOptions | None = None, prometheus_url: str = "",
                progress: Callable[[str], None] = lambda line: None) -> GamedayResult:
    """Run every experiment in order, keep each journal under ``report_dir/journals`` and judge it.

    SIGINT (Ctrl-C) interrupts the running experiment (its rollbacks still play), skips the rest and returns
    what ran, with ``interrupted`` set.
    """
    chaos_available()
    options = options or RunOptions()
    files, file_env = collect(paths)
    run_env = {**os.environ, **file_env, **(env or {})}
    experiments = [(path, load_experiment(path)) for path in files]
    configurations = resolve([e.get("configuration") or {} for _, e in experiments], run_env)
    for sub in ("journals", "logs"):
        (report_dir / sub).mkdir(parents=True, exist_ok=True)
    result = GamedayResult(time.time(), prometheus_url=prometheus_url or run_env.get("FORGE_SLO_PROMETHEUS_URL", ""))
    requirements = Requirements()
    stop = {"requested": False}

    def on_sigint(signum: int, frame: Any) -> None:
        stop["requested"] = True

    old = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    try:
        for (path, experiment), resolved in zip(experiments, configurations, strict=True):
            name = safe_name(path)
            ext = extension(experiment)
            configuration = resolved if isinstance(resolved, dict) else {}
            if isinstance(resolved, str):
                result.notes.append(f"{name}: its configuration cannot be loaded: {resolved}")
            res = ExperimentResult(path, name, str(experiment.get("title", name)), extension=ext,
                                   configuration=configuration, slos=slos_of(experiment, configuration))
            result.experiments.append(res)
            if stop["requested"]:
                res.reason = "not run: the game day was interrupted"
                continue
            missing = [p for p in (requirements.problem(str(r)) for r in ext.get("requires") or []) if p]
            if missing:
                res.reason = "; ".join(missing)
                progress(f"skip  {name}: {res.reason}")
                continue
            progress(f"run   {name}: {res.title}")
            res.journal_path = report_dir / "journals" / f"{name}.json"
            res.log_path = report_dir / "logs" / f"{name}.log"
            started = time.time()
            code = run_chaos(path, res.journal_path, res.log_path, run_env, options, lambda: stop["requested"])
            try:
                journal = json.loads(res.journal_path.read_text())
            except (OSError, ValueError):
                res.outcome, res.start, res.end = FAILED, started, time.time()
                res.reason = f"chaos run exited with {code} and wrote no journal; see {res.log_path}"
                progress(f"FAIL  {name}: {res.reason}")
                continue
            judge(res, journal)
            progress(f"{res.outcome:<5} {name} ({res.duration_s:.0f}s)" + (f": {res.reason}" if res.reason else ""))
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    result.interrupted = stop["requested"]
    result.ended = time.time()
    measure(result)
    return result


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def measure(result: GamedayResult) -> None:
    """Budget consumed per SLO and experiment, from Prometheus (a note when it cannot be read)."""
    if not result.prometheus_url:
        result.notes.append("no Prometheus URL (FORGE_SLO_PROMETHEUS_URL or --prometheus-url): no budgets or plots")
        return
    from forge_slo.chaos.slo.probes import budget_consumed_between
    from forge_slo.errors import ForgeError
    from forge_slo.sources.prometheus import PrometheusClient

    try:
        with PrometheusClient(result.prometheus_url) as client:
            for res in result.experiments:
                if not res.start or not res.end:
                    continue
                for service, slo in res.slos:
                    with contextlib.suppress(ForgeError):
                        value = budget_consumed_between(client, service, slo, res.start, res.end)
                        if math.isfinite(value):
                            res.budgets[f"{service}/{slo}"] = value
    except ForgeError as exc:
        result.notes.append(f"Prometheus could not be read for budgets: {exc}")
