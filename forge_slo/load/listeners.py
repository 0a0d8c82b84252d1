"""forge-slo's hooks into Locust's events, in every process that runs the locustfile.

- Locust's parser gets the load flags (``locust -f`` takes ``--rate``, ``--duration``... like ``forge-slo load``).
- The master (or the only process) parses them once into options and builds the controller; the engine of
  ``forge-slo load`` builds it itself from its plan, before ``init``.
- A worker takes the run's options and stages from the controller's messages, and reports its counters and
  finished records every 0.2 s; a worker that the engine started ends with it (its lifeline).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import gevent  # type: ignore[import-untyped]
import gevent.socket  # type: ignore[import-untyped]
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from forge_slo.errors import ForgeError
from forge_slo.load.controller import CONTROL, setup_controller
from forge_slo.load.judge import judged_spec
from forge_slo.load.lifeline import die_with_parent, lifeline_from_env, watch
from forge_slo.load.messages import REPORT, SETUP, STAGE, StageCommand, WorkerReport, WorkerSetup
from forge_slo.load.options import add_load_arguments, options_from_namespace
from forge_slo.load.sender import SENDER, freeze_heap
from forge_slo.runtime.exits import run

log = logging.getLogger("forge_slo.load")

REPORT_INTERVAL_S = 0.2
_installed: list[bool] = []


class _QuietSpawnRate(logging.Filter):
    """Locust warns about spawn rates over 100/s; forge-slo starts closed-loop streams at once on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "spawn rate is very high" not in record.getMessage()


def install() -> None:
    """Add the listeners to Locust's events (once per process)."""
    if _installed:
        return
    _installed.append(True)
    logging.getLogger("locust.runners").addFilter(_QuietSpawnRate())
    hooks: Any = events  # Locust's event hooks are untyped
    hooks.init_command_line_parser.add_listener(_add_arguments)
    hooks.init.add_listener(_on_init)
    hooks.test_start.add_listener(_on_test_start)
    hooks.test_stop.add_listener(_on_test_stop)
    hooks.quitting.add_listener(_on_quitting)


def _add_arguments(parser: Any) -> None:
    add_load_arguments(parser, locust=True)


# -- the master, or the only process


def _on_init(environment: Environment, **_kw: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        _init_worker(runner)
        return
    if isinstance(runner, MasterRunner):
        runner.register_message(REPORT, _on_report_message)
    if CONTROL.controller is not None or runner is None:
        return
    code = run(lambda: _controller_from_flags(environment))
    if code:
        sys.exit(code)


def _controller_from_flags(env: Environment) -> int:
    """Under plain Locust: the options from Locust's parsed flags, and the controller; ForgeError on bad input."""
    ns = env.parsed_options
    if ns is None:
        raise ForgeError("forge-slo load needs Locust's parsed options")
    options = options_from_namespace(ns, host=env.host, default_users=getattr(ns, "num_users", None), locust=True)
    setup_controller(env, options, judged_spec(options.spec_path, options.service))
    return 0


def _on_report_message(environment: Environment, msg: Any, **_kw: Any) -> None:
    ctl = CONTROL.controller
    if ctl is None:
        return
    try:
        report = WorkerReport.from_dict(msg.data)
    except ForgeError as exc:
        log.error("a bad report from worker %s: %s", msg.node_id, exc)
        return
    ctl.on_worker_report(msg.node_id, report)


# -- a worker


class _WorkerState:
    setup_error: str | None = None  # logged once, not at every repeat of the setup


_WORKER = _WorkerState()


def _init_worker(runner: WorkerRunner) -> None:
    runner.register_message(SETUP, _on_setup_message)
    runner.register_message(STAGE, _on_stage_message)
    _hold_lifeline()
    _start_reports(runner)  # from now on: the controller learns whether this worker has the options


def _on_setup_message(environment: Environment, msg: Any, **_kw: Any) -> None:
    runner = environment.runner
    try:
        setup = WorkerSetup.from_dict(msg.data)
        if SENDER.options != setup.options:
            SENDER.configure(setup.options, int(getattr(runner, "worker_index", 0)), distributed=True)
    except ForgeError as exc:
        if str(exc) != _WORKER.setup_error:
            log.error("forge-slo load: this worker cannot take the run's options: %s", exc)
        _WORKER.setup_error = str(exc)


def _on_stage_message(environment: Environment, msg: Any, **_kw: Any) -> None:
    try:
        SENDER.apply_stage(StageCommand.from_dict(msg.data))
    except ForgeError as exc:
        log.error("forge-slo load: a bad stage command: %s", exc)


def _hold_lifeline() -> None:
    """A worker that forge-slo's engine started ends with the engine: nothing it sends is recorded then."""
    fd = lifeline_from_env()
    if fd is None:
        return
    die_with_parent(signal.SIGKILL)
    gevent.spawn(watch, fd, _engine_gone, gevent.socket.wait_read)


def _engine_gone() -> None:
    log.error("forge-slo load: the engine is gone; this worker stops")
    os._exit(1)


def _start_reports(runner: WorkerRunner) -> None:
    if SENDER.report_greenlet is None:
        SENDER.report_greenlet = gevent.spawn(_worker_reports, runner)


def _worker_reports(runner: WorkerRunner) -> None:
    while True:
        gevent.sleep(REPORT_INTERVAL_S)
        _send_report(runner)


def _send_report(runner: WorkerRunner) -> None:
    report = SENDER.report(with_lines=True)
    try:
        runner.send_message(REPORT, report.to_dict())
    except Exception as exc:  # the master went away; the records of this batch are lost
        log.error("cannot send records to the master: %s", exc)


# -- every process


def _on_test_start(environment: Environment, **_kw: Any) -> None:
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        if environment.shape_class is None and runner is not None and CONTROL.controller is not None:
            # Without the shape nothing would ever start a stage and every user would wait forever.
            print("error: forge-slo load: the locustfile must also import ForgeLoadShape from "
                  "forge_slo.load.user (it runs --rate/--concurrency/--sweep and --duration)", file=sys.stderr)
            gevent.spawn(runner.quit)
        return
    freeze_heap()
    _start_reports(runner)


def _on_test_stop(environment: Environment, **_kw: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        SENDER.group.kill(block=False)
        if SENDER.report_greenlet is not None:
            SENDER.report_greenlet.kill(block=False)
            SENDER.report_greenlet = None
        _send_report(runner)
        return
    ctl = CONTROL.controller
    if ctl is not None:
        ctl.finalize()


def _on_quitting(environment: Environment, **_kw: Any) -> None:
    ctl = CONTROL.controller
    if ctl is not None and not isinstance(environment.runner, WorkerRunner):
        ctl.finalize(interrupted=not ctl.done)
