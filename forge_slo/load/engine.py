"""The process that runs Locust for ``forge-slo load`` (``python -m forge_slo.load.engine``, plan on stdin).

The CLI validates the flags, then starts this process and hands it the flags as JSON on its standard input,
so Locust's gevent monkey-patching happens only here. With ``--workers N`` it is a Locust master and starts
N ``locust --worker`` processes on the same locustfile, exactly as one would across machines.

The plan is one line. With ``"lifeline": true`` the CLI keeps standard input open for as long as it lives:
its end (the CLI died, even by SIGKILL) ends the run as SIGTERM would, and the workers end with this
process in turn (see :mod:`forge_slo.load.lifeline`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from forge_slo.load.lifeline import LIFELINE_ENV, die_with_parent, watch

LOCUSTFILE = Path(__file__).resolve().parent / "_locust" / "locustfile.py"
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
WORKER_START_S = 60.0
ORPHAN_EXIT_S = 30  # once the CLI is gone, the run ends cleanly or the kernel ends it after this (SIGALRM)


def worker_command(master_port: int) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1",
            "--master-port", str(master_port), "--loglevel", "WARNING"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop(LIFELINE_ENV, None)  # a lifeline is meant for one child only: whoever passes it sets it
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> int:
    plan: dict[str, Any] = json.loads(sys.stdin.buffer.readline())
    parent = os.getppid()
    lifeline = bool(plan.get("lifeline"))
    if lifeline:
        die_with_parent(signal.SIGTERM)
    else:
        sys.stdin.close()

    import gevent  # type: ignore[import-untyped]
    import gevent.event  # type: ignore[import-untyped]
    import gevent.socket  # type: ignore[import-untyped]
    import locust
    from locust import argument_parser as _argument_parser
    from locust import log as _locust_log
    from locust.env import Environment

    from forge_slo.errors import ForgeError
    from forge_slo.load import user as lu
    from forge_slo.load.progress import run_display

    stop = gevent.event.Event()
    signals: dict[str, Any] = {"count": 0, "controller": None}

    def on_signal() -> None:  # from the first moment: a signal during start-up still ends the run cleanly
        signals["count"] += 1
        if signals["controller"] is not None:
            signals["controller"].interrupt()
        stop.set()
        if signals["count"] >= 3:
            os._exit(130)

    def on_parent_gone() -> None:
        signal.alarm(ORPHAN_EXIT_S)  # SIGALRM's default action ends the process: no one is waiting for it
        on_signal()

    def on_sigterm() -> None:  # also what the kernel sends when the CLI dies (die_with_parent)
        if os.getppid() != parent:
            on_parent_gone()
        else:
            on_signal()

    gevent.signal_handler(signal.SIGINT, on_signal)
    gevent.signal_handler(signal.SIGTERM, on_sigterm)
    if lifeline:
        gevent.spawn(watch, sys.stdin.fileno(), on_parent_gone, gevent.socket.wait_read)
    argument_parser: Any = _argument_parser  # untyped parts of Locust
    locust_log: Any = _locust_log
    shape_class: Any = lu.ForgeLoadShape
    locust_log.setup_logging("WARNING")
    flags: dict[str, Any] = plan["flags"]
    workers = int(plan.get("workers") or 0)
    parser = argument_parser.get_empty_argument_parser(default_config_files=[])
    argument_parser.setup_parser_arguments(parser)
    ns = parser.parse_args(args=[])
    vars(ns).update(flags)
    ns.headless = True
    ns.host = flags["target"]
    ns.expect_workers = max(workers, 1)
    ns.locustfile = str(LOCUSTFILE)
    env = Environment(user_classes=[lu.OpenAIUser], shape_class=shape_class(), events=locust.events,
                      host=flags["target"], parsed_options=ns, stop_timeout=0.0)
    port = free_port() if workers else 0
    runner = env.create_master_runner("127.0.0.1", port) if workers else env.create_local_runner()
    try:
        ctl = lu.setup_controller(env)
    except ForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    signals["controller"] = ctl
    if stop.is_set():
        ctl.interrupt()
    events: Any = env.events
    events.init.fire(environment=env, runner=runner, web_ui=None)

    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    out = Path(flags["out"])
    try:
        if workers:
            # The workers' lifeline: this process holds the write end until it exits, however it exits.
            read_end, _write_end = os.pipe()
            worker_env = {**child_env(), LIFELINE_ENV: str(read_end)}
            for i in range(workers):
                log = open(out / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed below
                logs.append(log)
                procs.append(subprocess.Popen(worker_command(port), stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=worker_env, start_new_session=True,
                                              pass_fds=(read_end,)))
            os.close(read_end)
            deadline = time.monotonic() + WORKER_START_S
            while runner.worker_count < workers and not stop.is_set():
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    print(f"error: {runner.worker_count} of {workers} Locust workers connected "
                          f"(logs: {out}/worker-*.log)", file=sys.stderr)
                    return 1
                gevent.sleep(0.1)

        finished = gevent.event.Event()
        ctl.on_finish.append(finished.set)
        display = gevent.spawn(run_display, ctl, str(plan.get("progress") or "auto"), gevent.sleep)
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
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log in logs:
            log.close()


if __name__ == "__main__":
    sys.exit(main())
