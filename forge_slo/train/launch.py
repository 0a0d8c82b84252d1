"""Start and stop the all-reduce job: torchrun on loopback with N ranks, optionally inside a network namespace.

A job lives in a state directory: ``job.json`` (the launcher's pid, ports, namespace and the arguments to start
it again), ``rank-<r>.json`` (each worker's pid) and ``job.log``. Chaos actions and the watchdog find the job
through it, so they need no handle on the process that started it.

Inside a namespace, the ranks' ``/metrics`` ports exist only on the namespace's loopback; the launcher relays
``127.0.0.1:PORT+r`` of the host to them (one thread per connection enters the namespace with ``setns``), so
Prometheus and the probes read the job the same way wherever it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from forge_slo.errors import RunnerError, UsageError
from forge_slo.runtime.process import child_env, free_port, python_module, stop_process

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
# Jobs this process started detached: kept so they are reaped (and not reported as leaked) when they end.
_DETACHED: dict[int, subprocess.Popen[bytes]] = {}
JOB_FILE = "job.json"
LOG_FILE = "job.log"


@dataclass(frozen=True)
class JobOptions:
    """What :func:`run_job` starts; ``worker_args`` go to every rank unchanged."""

    state_dir: Path
    nproc: int = 2
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 29600
    netns: str | None = None
    worker_args: tuple[str, ...] = ()

    def launch_argv(self) -> list[str]:
        """``python -m forge_slo.train launch ...`` arguments that start this job again."""
        argv = ["launch", "--nproc", str(self.nproc), "--metrics-host", self.metrics_host,
                "--metrics-port", str(self.metrics_port), "--state-dir", str(self.state_dir)]
        if self.netns:
            argv += ["--netns", self.netns]
        return [*argv, "--", *self.worker_args] if self.worker_args else argv


@dataclass(frozen=True)
class JobInfo:
    """``job.json``: a started job."""

    pid: int
    nproc: int
    metrics_host: str
    metrics_port: int
    netns: str | None
    worker_args: tuple[str, ...]
    started_at: float

    def metrics_urls(self) -> list[str]:
        return [f"http://{self.metrics_host}:{self.metrics_port + r}/metrics" for r in range(self.nproc)]

    def options(self, state_dir: Path, netns: str | None | bool = False) -> JobOptions:
        """The same job; ``netns`` False keeps the namespace, None or a name replaces it."""
        ns = self.netns if netns is False else (netns or None)
        assert ns is None or isinstance(ns, str)
        return JobOptions(state_dir, self.nproc, self.metrics_host, self.metrics_port, ns, self.worker_args)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"worker arguments: {message}")


def check_worker_args(worker_args: Sequence[str]) -> None:
    """Refuse worker flags the ranks would refuse, before anything starts."""
    from forge_slo.train.worker import build_parser, check_args

    args = build_parser(_Parser(prog="forge_slo.train.worker", add_help=False)).parse_args(list(worker_args))
    if args.metrics_port or args.state_dir or args.metrics_host != "127.0.0.1":
        raise UsageError("worker arguments: --metrics-port, --metrics-host and --state-dir are the launcher's flags")
    problem = check_args(args)
    if problem:
        raise UsageError(f"worker arguments: {problem}")


def validate(options: JobOptions) -> None:
    check_worker_args(options.worker_args)
    if not 1 <= options.nproc <= 64:
        raise UsageError(f"--nproc: {options.nproc} ranks; use 1 to 64")
    if not 0 < options.metrics_port < 65536 - options.nproc:
        raise UsageError(f"--metrics-port: {options.metrics_port} is not a port number (rank r uses PORT+r)")
    if options.netns is not None:
        check_netns_name(options.netns)
        if not (NETNS_DIR / options.netns).exists():
            raise RunnerError(f"--netns: there is no network namespace {options.netns!r} "
                              f"(create it first: ip netns add {options.netns})")
    if not options.metrics_host.startswith("127.") and options.metrics_host not in ("localhost", "::1"):
        raise UsageError(f"--metrics-host: {options.metrics_host!r}; the job serves metrics on loopback only")


def check_netns_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise UsageError(f"{name!r} is not a usable network namespace name (letters, digits, '-', '_', '.')")


def read_job(state_dir: str | Path) -> JobInfo:
    path = Path(state_dir) / JOB_FILE
    try:
        data = json.loads(path.read_text())
        return JobInfo(int(data["pid"]), int(data["nproc"]), str(data["metrics_host"]), int(data["metrics_port"]),
                       data.get("netns") or None, tuple(str(a) for a in data.get("worker_args", ())),
                       float(data.get("started_at", 0.0)))
    except FileNotFoundError:
        raise RunnerError(f"{path}: no training job was started with this state directory") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunnerError(f"{path}: unreadable job file ({exc})") from None


def rank_pid(state_dir: str | Path, rank: int) -> int:
    """The pid of one rank's worker process, from ``rank-<r>.json``."""
    path = Path(state_dir) / f"rank-{rank}.json"
    try:
        return int(json.loads(path.read_text())["pid"])
    except FileNotFoundError:
        raise RunnerError(f"{path}: rank {rank} has not started (or the job has fewer ranks)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunnerError(f"{path}: unreadable rank file ({exc})") from None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def torchrun_command(options: JobOptions, master_port: int) -> list[str]:
    worker = ["--metrics-host", options.metrics_host, "--metrics-port", str(options.metrics_port),
              "--state-dir", str(options.state_dir), *options.worker_args]
    cmd = python_module("torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(options.nproc),
                        "--master-addr", "127.0.0.1", "--master-port", str(master_port), "--max-restarts", "0",
                        "--module", "forge_slo.train.worker", *worker)
    if options.netns:
        cmd = ["ip", "netns", "exec", options.netns, *cmd]
    return cmd


# Defaults the caller's environment may override. Collectives over loopback only: gloo and NCCL's bootstrap
# would otherwise pick the host's first interface; no *_created samples on the ranks' /metrics.
_JOB_ENV_DEFAULTS = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
                     "PROMETHEUS_DISABLE_CREATED_SERIES": "True"}


def job_env() -> dict[str, str]:
    """The environment of the launcher, torchrun and the ranks."""
    env = child_env()
    for key, value in _JOB_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def run_job(options: JobOptions) -> int:
    """Run the job in the foreground until it ends or SIGINT/SIGTERM; returns torchrun's exit code."""
    validate(options)
    if importlib.util.find_spec("torch") is None:
        raise RunnerError("the training job needs torch: pip install 'forge-slo[train]' "
                          "(a CPU wheel is enough; gloo runs the collectives)")
    state = options.state_dir
    state.mkdir(parents=True, exist_ok=True)
    for old in state.glob("rank-*.json"):
        old.unlink()
    relays = [_Relay(options.metrics_host, options.metrics_port + r, options.netns)
              for r in range(options.nproc)] if options.netns else []
    proc = subprocess.Popen(torchrun_command(options, free_port()), env=job_env(), stdin=subprocess.DEVNULL)
    info = {"pid": os.getpid(), "torchrun_pid": proc.pid, "nproc": options.nproc,
            "metrics_host": options.metrics_host, "metrics_port": options.metrics_port, "netns": options.netns,
            "worker_args": list(options.worker_args), "started_at": time.time()}
    tmp = state / (JOB_FILE + ".tmp")
    tmp.write_text(json.dumps(info, sort_keys=True))
    tmp.replace(state / JOB_FILE)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_process(proc, timeout_s=10)
        for relay in relays:
            relay.close()


def start_detached(options: JobOptions, *, wait_s: float = 20.0) -> JobInfo:
    """Start the job in its own session (it outlives the caller); returns once ``job.json`` names it."""
    validate(options)
    options.state_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (options.state_dir / JOB_FILE).unlink()
    log = open(options.state_dir / LOG_FILE, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(python_module("forge_slo.train", *options.launch_argv()), env=job_env(),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()
    _DETACHED[proc.pid] = proc
    _reap()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise RunnerError(f"the training job exited at once with code {code}:\n{tail(options.state_dir)}")
        with contextlib.suppress(RunnerError):
            info = read_job(options.state_dir)
            if info.pid == proc.pid:
                return info
        time.sleep(0.05)
    raise RunnerError(f"the training job did not start within {wait_s:g}s:\n{tail(options.state_dir)}")


def stop_job(state_dir: str | Path, *, grace_s: float = 10.0) -> bool:
    """Stop a job started with :func:`start_detached` (its whole session); False when it was not running."""
    try:
        info = read_job(state_dir)
    except RunnerError:
        return False
    if not alive(info.pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(info.pid):
        time.sleep(0.05)
    # The launcher leads its own session: its process group holds torchrun and every rank.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(info.pid, signal.SIGKILL)
    for r in range(info.nproc):
        with contextlib.suppress(RunnerError, ProcessLookupError, PermissionError):
            pid = rank_pid(state_dir, r)
            if alive(pid):
                os.kill(pid, signal.SIGCONT)  # a paused rank cannot act on SIGTERM
                os.kill(pid, signal.SIGKILL)
    proc = _DETACHED.pop(info.pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    _reap()
    return True


def _reap() -> None:
    for pid, proc in list(_DETACHED.items()):
        if proc.poll() is not None:
            del _DETACHED[pid]


def tail(state_dir: Path, lines: int = 20) -> str:
    try:
        return "\n".join((state_dir / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Relay:
    """Accepts on the host's ``host:port`` and connects to the same address inside ``netns``."""

    def __init__(self, host: str, port: int, netns: str) -> None:
        self.host, self.port, self.netns = host, port, netns
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.settimeout(0.5)
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name=f"relay-{port}").start()

    def close(self) -> None:
        self._closed.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            enter_netns(self.netns)  # this thread only: the listening socket stays in the host's namespace
            upstream = socket.create_connection((self.host, self.port), timeout=5)
        except OSError:
            conn.close()
            return
        threading.Thread(target=_pump, args=(upstream, conn), daemon=True).start()
        _pump(conn, upstream)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (needs CAP_SYS_ADMIN)."""
    libc: Any = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def main_launch(nproc: int, metrics_host: str, metrics_port: int, state_dir: str, netns: str | None,
                worker_args: Sequence[str], detach: bool) -> int:
    options = JobOptions(Path(state_dir), nproc, metrics_host, metrics_port, netns, tuple(worker_args))
    if detach:
        info = start_detached(options)
        print(f"started training job (launcher pid {info.pid}); metrics: {' '.join(info.metrics_urls())}")
        return 0
    return run_job(options)
