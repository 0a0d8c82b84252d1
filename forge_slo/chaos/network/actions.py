"""Network faults for collectives over sockets: tc netem delay and loss (or a tbf rate limit) inside a network
namespace the experiment creates.

:func:`create_namespace` makes the namespace (loopback up) and :func:`delete_namespace` removes it (the
rollback); a training job started there (``restart_training_job`` with ``netns``) talks over the
namespace's loopback only, so a fault on it touches nothing else. Faults on the host's own interfaces
(``namespace`` empty) are refused unless ``allow_host_interfaces`` is true. Needs root (CAP_NET_ADMIN) and
iproute2; netem needs the kernel's ``sch_netem``.
"""

import shutil
import subprocess
from typing import Any

from forge_slo.errors import RunnerError, UsageError

__all__ = ["add_network_fault", "create_namespace", "delete_namespace", "remove_network_fault"]

TBF_BURST = "256kb"  # above loopback's 64 KiB MTU, or tbf drops every full-size packet


def _run(cmd: list[str], what: str, *, ok_errors: tuple[str, ...] = ()) -> str:
    if shutil.which(cmd[0]) is None:
        raise RunnerError(f"{what}: {cmd[0]} is not installed (Debian: apt-get install iproute2)")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        if any(e in err for e in ok_errors):
            return err
        if "Operation not permitted" in err or "Permission denied" in err:
            raise RunnerError(f"{what}: not permitted ({err}); network namespaces and tc need root (CAP_NET_ADMIN)")
        if "qdisc kind is unknown" in err:
            raise RunnerError(f"{what}: the kernel has no such queueing discipline ({err}); netem needs the "
                              "sch_netem module (modprobe sch_netem, or a kernel with CONFIG_NET_SCH_NETEM)")
        raise RunnerError(f"{what}: {' '.join(cmd)} failed: {err}")
    return proc.stdout


def _name(namespace: str) -> str:
    from forge_slo.train import check_netns_name

    check_netns_name(namespace)
    return namespace


def create_namespace(namespace: str, reuse: bool = False) -> dict[str, Any]:
    """Create network namespace ``namespace`` with its loopback up. An existing one is refused unless
    ``reuse`` (it may belong to someone else)."""
    name = _name(namespace)
    existing = _run(["ip", "netns", "list"], "list namespaces").split()
    if name in existing:
        if not reuse:
            raise RunnerError(f"network namespace {name!r} already exists; delete it or pass reuse: true")
    else:
        _run(["ip", "netns", "add", name], f"create namespace {name}")
    _run(["ip", "-n", name, "link", "set", "lo", "up"], f"bring up loopback in {name}")
    return {"namespace": name, "created": name not in existing}


def delete_namespace(namespace: str) -> dict[str, Any]:
    """Delete the namespace (the rollback of :func:`create_namespace`); one already gone is not an error."""
    name = _name(namespace)
    out = _run(["ip", "netns", "delete", name], f"delete namespace {name}",
               ok_errors=("No such file", "Cannot remove namespace file"))
    return {"namespace": name, "deleted": not out}


def _target(namespace: str, interface: str, allow_host_interfaces: bool) -> list[str]:
    if not interface or not all(c.isalnum() or c in "-_.@" for c in interface):
        raise UsageError(f"interface: {interface!r} is not an interface name")
    if not namespace:
        if not allow_host_interfaces:
            raise UsageError("refusing to change the host's own interface "
                             f"{interface!r}: give the namespace the experiment created, or set "
                             "allow_host_interfaces: true if you really mean this machine's network")
        return ["tc"]
    return ["ip", "netns", "exec", _name(namespace), "tc"]


def add_network_fault(namespace: str, interface: str = "lo", delay_ms: float = 0, jitter_ms: float = 0,
                      loss_percent: float = 0, rate: str = "", allow_host_interfaces: bool = False) -> dict[str, Any]:
    """Delay (``delay_ms`` ± ``jitter_ms``) and drop (``loss_percent``) packets on ``interface`` inside
    ``namespace`` with tc netem; ``rate`` (e.g. 100mbit) alone limits bandwidth with tbf instead."""
    if float(delay_ms) < 0 or float(jitter_ms) < 0 or not 0 <= float(loss_percent) <= 100:
        raise UsageError("delay_ms and jitter_ms must be zero or more, loss_percent between 0 and 100")
    if rate and not (rate[:1].isdigit() and rate.rstrip("bitpsBkmgKMG").replace(".", "").isdigit()):
        raise UsageError(f"rate: {rate!r} is not a tc rate (e.g. 100mbit, 1gbit)")
    tc = _target(namespace, interface, allow_host_interfaces)
    if delay_ms or loss_percent:
        spec = ["netem"]
        if delay_ms:
            spec += ["delay", f"{float(delay_ms):g}ms"] + ([f"{float(jitter_ms):g}ms"] if jitter_ms else [])
        if loss_percent:
            spec += ["loss", f"{float(loss_percent):g}%"]
        if rate:
            spec += ["rate", rate]
    elif rate:
        spec = ["tbf", "rate", rate, "burst", TBF_BURST, "latency", "1s"]
    else:
        raise UsageError("give delay_ms, loss_percent or rate: a fault that changes nothing is a mistake")
    _run([*tc, "qdisc", "replace", "dev", interface, "root", *spec], f"add {spec[0]} on {interface}")
    return {"namespace": namespace, "interface": interface, "qdisc": " ".join(spec)}


def remove_network_fault(namespace: str, interface: str = "lo", allow_host_interfaces: bool = False) -> dict[str, Any]:
    """Remove the fault (the rollback of :func:`add_network_fault`); none there, or the namespace gone, is
    not an error."""
    tc = _target(namespace, interface, allow_host_interfaces)
    out = _run([*tc, "qdisc", "del", "dev", interface, "root"], f"remove the fault on {interface}",
               ok_errors=("No such file", "Cannot find device", "Cannot delete qdisc with handle of zero",
                          "Cannot open network namespace"))
    return {"namespace": namespace, "interface": interface, "removed": not out}


def netns_support() -> str | None:
    """Why network namespaces cannot be used here, or None when they can (used to skip experiments)."""
    import os

    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


def netem_support() -> str | None:
    """Why tc netem cannot be used here (probed in a scratch namespace), or None when it can."""
    import os

    reason = netns_support()
    if reason:
        return reason
    name = f"forge-slo-probe-{os.getpid()}"
    try:
        create_namespace(name)
        add_network_fault(name, delay_ms=1)
    except RunnerError as exc:
        return str(exc)
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    return None
