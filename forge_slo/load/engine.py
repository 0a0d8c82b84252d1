"""The process that runs Locust for ``forge-slo load`` (``python -m forge_slo.load.engine``, plan on stdin).

The CLI parses the flags, then starts this process and hands it an
:class:`~forge_slo.load.messages.EnginePlan` (the options and the spec's criteria, as JSON) on its standard
input, so Locust's gevent monkey-patching happens only here. With ``--workers N`` it is a Locust master and
starts N ``locust --worker`` processes on the same locustfile, exactly as one would across machines.

The plan is one line. With ``"lifeline": true`` the CLI keeps standard input open for as long as it lives:
its end (the CLI died, even by SIGKILL) ends the run as SIGTERM would, and the workers end with this
process in turn (see :mod:`forge_slo.load.lifeline`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forge_slo.errors import RunnerError
from forge_slo.load.lifeline import LIFELINE_ENV, die_with_parent, watch
from forge_slo.load.messages import EnginePlan
from forge_slo.runtime.exits import run
from forge_slo.runtime.process import LOOPBACK, Child, child_env, free_port, python_module

if TYPE_CHECKING:
    from forge_slo.load.controller import Controller

LOCUSTFILE = Path(__file__).resolve().parent / "_locust" / "locustfile.py"
WORKER_START_S = 60.0
WORKER_EXIT_S = 5.0   # for the workers to quit on the master's word, before they are stopped
ORPHAN_EXIT_S = 30  # once the CLI is gone, the run ends cleanly or the kernel ends it after this (SIGALRM)


def worker_command(master_port: int, master_host: str = LOOPBACK) -> list[str]:
    return python_module("locust", "-f", str(LOCUSTFILE), "--worker", "--master-host", master_host,
                         "--master-port", str(master_port), "--loglevel", "WARNING")


class Stopper:
    """Turns SIGINT, SIGTERM and the end of the CLI into a stop of the run (a third signal ends at once)."""

    def __init__(self, stop: Any) -> None:
        self.stop = stop          # a gevent Event
        self.count = 0
        self.controller: Controller | None = None
        self.parent = os.getppid()

    def on_signal(self) -> None:  # from the first moment: a signal during start-up still ends the run cleanly
        self.count += 1
        if self.controller is not None:
            self.controller.interrupt()
        self.stop.set()
        if self.count >= 3:
            os._exit(130)

    def on_parent_gone(self) -> None:
        signal.alarm(ORPHAN_EXIT_S)  # SIGALRM's default action ends the process: no one is waiting for it
        self.on_signal()

    def on_sigterm(self) -> None:  # also what the kernel sends when the CLI dies (die_with_parent)
        if os.getppid() != self.parent:
            self.on_parent_gone()
        else:
            self.on_signal()

    def attach(self, controller: Controller) -> None:
        self.controller = controller
        if self.stop.is_set():
            controller.interrupt()


def read_plan() -> EnginePlan:
    """The plan on standard input; with a lifeline, this process ends when the CLI does."""
    plan = EnginePlan.from_line(sys.stdin.buffer.readline())
    if plan.lifeline:
        die_with_parent(signal.SIGTERM)
    else:
        sys.stdin.close()
    return plan


def main() -> int:
    return run(_main)


def _main() -> int:
    plan = read_plan()
    import gevent  # type: ignore[import-untyped]
    import gevent.event  # type: ignore[import-untyped]
    import gevent.socket  # type: ignore[import-untyped]

    stopper = Stopper(gevent.event.Event())
    gevent.signal_handler(signal.SIGINT, stopper.on_signal)
    gevent.signal_handler(signal.SIGTERM, stopper.on_sigterm)
    if plan.lifeline:
        gevent.spawn(watch, sys.stdin.fileno(), stopper.on_parent_gone, gevent.socket.wait_read)

    from forge_slo.load.controller import setup_controller

    env, runner = _environment(plan)
    ctl = setup_controller(env, plan.options, plan.spec)
    stopper.attach(ctl)
    events: Any = env.events
    events.init.fire(environment=env, runner=runner, web_ui=None)
    assert plan.options.out is not None
    with _workers(plan.options.workers, runner, Path(plan.options.out), stopper.stop):
        if plan.options.expect_workers:
            _await_remote_workers(plan.options.expect_workers, runner, plan.options, stopper.stop)
        return _drive(runner, ctl, stopper.stop, plan.options.progress)


def _environment(plan: EnginePlan) -> tuple[Any, Any]:
    """Locust's environment and runner (a master with workers, else a local runner)."""
    import locust
    from locust import argument_parser as _argument_parser
    from locust import log as _locust_log
    from locust.env import Environment

    from forge_slo.load import user

    argument_parser: Any = _argument_parser  # untyped parts of Locust
    locust_log: Any = _locust_log
    locust_log.setup_logging("WARNING")
    parser = argument_parser.get_empty_argument_parser(default_config_files=[])
    argument_parser.setup_parser_arguments(parser)
    ns = parser.parse_args(args=[])  # Locust's own settings; forge-slo's options are in the plan
    opts = plan.options
    workers = opts.workers or opts.expect_workers
    ns.headless = True
    ns.host = plan.options.target
    ns.expect_workers = max(workers, 1)
    ns.locustfile = str(LOCUSTFILE)
    shape_class: Any = user.ForgeLoadShape  # Locust's LoadTestShape is untyped
    env = Environment(user_classes=[user.OpenAIUser], shape_class=shape_class(), events=locust.events,
                      host=plan.options.target, parsed_options=ns, stop_timeout=0.0)
    if not workers:
        return env, env.create_local_runner()
    host, port = (opts.master_bind_host, opts.master_bind_port) if opts.expect_workers else (LOOPBACK, free_port())
    try:
        return env, env.create_master_runner(host, port)
    except Exception as exc:  # zmq's error for an address in use, or one this machine does not have
        raise RunnerError(f"--master-bind-host/--master-bind-port: cannot listen on {host}:{port} ({exc})") from None


def _await_remote_workers(count: int, runner: Any, opts: Any, stop: Any) -> None:
    """Wait for ``count`` workers started elsewhere (``forge-slo load --worker``) to connect."""
    import gevent

    host, port = opts.master_bind_host, opts.master_bind_port
    print(f"master listening on {host}:{port}: waiting for {count} worker(s); start each with "
          f"'forge-slo load --worker --master-host {host if host not in ('0.0.0.0', '::') else 'THIS_HOST'} "
          f"--master-port {port}'", flush=True)
    deadline = time.monotonic() + opts.worker_wait_s
    while runner.worker_count < count and not stop.is_set():
        if time.monotonic() > deadline:
            raise RunnerError(f"{runner.worker_count} of {count} workers connected within --worker-wait "
                              f"{opts.worker_wait_s:g}s")
        gevent.sleep(0.1)
    print(f"{runner.worker_count} worker(s) connected", flush=True)


@contextlib.contextmanager
def _workers(count: int, runner: Any, out: Path, stop: Any) -> Iterator[list[Child]]:
    """``count`` Locust workers connected to ``runner``, stopped at the end however the run ends."""
    children: list[Child] = []
    try:
        if count:
            children = _start_workers(count, runner.master_bind_port, out)
            _await_workers(children, runner, out, stop)
        yield children
    finally:
        _end_workers(children)


def _start_workers(count: int, port: int, out: Path) -> list[Child]:
    # The workers' lifeline is their standard input: this process holds the pipe's write end until it exits,
    # however it exits, and the kernel closes it then.
    read_end, _write_end = os.pipe()
    env = child_env({LIFELINE_ENV: "0"})
    children = []
    try:
        for i in range(count):
            child = Child(f"worker-{i}", worker_command(port), log_path=out / f"worker-{i}.log", env=env,
                          own_session=True, stdin=read_end)
            children.append(child.start())
    finally:
        os.close(read_end)
    return children


def _await_workers(children: list[Child], runner: Any, out: Path, stop: Any) -> None:
    import gevent

    deadline = time.monotonic() + WORKER_START_S
    while runner.worker_count < len(children) and not stop.is_set():
        if time.monotonic() > deadline or not all(child.running() for child in children):
            raise RunnerError(f"{runner.worker_count} of {len(children)} Locust workers connected "
                              f"(logs: {out}/worker-*.log)")
        gevent.sleep(0.1)


def _end_workers(children: list[Child]) -> None:
    """Give the workers a moment to quit on the master's word, then stop them."""
    deadline = time.monotonic() + WORKER_EXIT_S
    for child in children:
        if child.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        child.stop(timeout_s=3.0)


def _drive(runner: Any, ctl: Controller, stop: Any, progress: str) -> int:
    """Run the stages until they end or a stop; 0 once the outputs are written."""
    import gevent
    import gevent.event

    from forge_slo.load.progress import run_display

    finished = gevent.event.Event()
    ctl.on_finish.append(finished.set)
    display = gevent.spawn(run_display, ctl, progress, gevent.sleep)
    if not stop.is_set():
        runner.start_shape()
    while not finished.is_set():
        if stop.wait(0.1):
            break
        if runner.state == "stopped" and not finished.is_set():  # stopped outside the shape: finish
            ctl.finalize()
    runner.quit()
    ctl.finalize(interrupted=stop.is_set())
    display.join(timeout=2)
    display.kill(block=False)
    return 0 if ctl.summary is not None else 1


if __name__ == "__main__":
    sys.exit(main())
