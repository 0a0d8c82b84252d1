"""Game days on a schedule, where users already schedule things: a Kubernetes CronJob, a systemd timer.

One cron expression (5 fields, UTC) drives both: the CronJob takes it as is (with ``timeZone: UTC``), the
timer gets the same instants as ``OnCalendar=`` (cron's lists, ranges and steps are expanded; a schedule that
restricts both day of month and day of week is refused, since cron ORs them and systemd ANDs them).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml

from forge_slo.errors import UsageError

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_MONTHS = {m: i + 1 for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun",
                                           "jul", "aug", "sep", "oct", "nov", "dec"])}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_SYSTEMD_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")


def parse_cron(expr: str) -> list[list[int] | None]:
    """The five fields as sorted value lists (None for ``*``); UsageError naming the bad field."""
    parts = expr.split()
    if len(parts) != 5:
        raise UsageError(f"--cron {expr!r}: a cron schedule has 5 fields (minute hour day-of-month month "
                         "day-of-week), e.g. '0 3 * * 1' for Mondays at 03:00 UTC")
    out: list[list[int] | None] = []
    for text, (name, low, high) in zip(parts, _FIELDS, strict=True):
        names = _MONTHS if name == "month" else _DAYS if name == "day of week" else {}
        values: set[int] = set()
        if text == "*":
            out.append(None)
            continue
        for item in text.split(","):
            m = re.fullmatch(r"(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/(\d+))?", item.lower())
            if not m:
                raise UsageError(f"--cron {expr!r}: {name} {item!r} is not N, N-M, */S or N-M/S")
            span, step = m.group(1), int(m.group(2) or 1)
            if step < 1:
                raise UsageError(f"--cron {expr!r}: {name} step must be at least 1")
            if span == "*":
                first, last = low, high if name != "day of week" else 6
            else:
                bounds = [names[v] if v in names else _int(v, expr, name) for v in span.split("-")]
                first, last = bounds[0], bounds[-1]
                if m.group(2) and len(bounds) == 1:
                    last = high if name != "day of week" else 6
            if not (low <= first <= high and low <= last <= high and first <= last):
                raise UsageError(f"--cron {expr!r}: {name} {item!r} is outside {low}-{high}")
            values.update(range(first, last + 1, step))
        if name == "day of week":
            values = {0 if v == 7 else v for v in values}
        full = set(range(low, (high if name != "day of week" else 6) + 1))
        out.append(None if values == full else sorted(values))
    if out[2] is not None and out[4] is not None:
        raise UsageError(f"--cron {expr!r}: restrict day of month or day of week, not both (cron runs when "
                         "either matches, systemd only when both do)")
    return out


def _int(text: str, expr: str, name: str) -> int:
    if not text.isdigit():
        raise UsageError(f"--cron {expr!r}: {name} {text!r} is not a number")
    return int(text)


def on_calendar(expr: str) -> str:
    """systemd's ``OnCalendar=`` for a cron expression, e.g. ``'0 3 * * 1'`` -> ``Mon *-*-* 03:00:00 UTC``."""
    minute, hour, dom, month, dow = parse_cron(expr)

    def join(values: list[int] | None, width: int = 2) -> str:
        return "*" if values is None else ",".join(f"{v:0{width}d}" for v in values)

    days = "" if dow is None else ",".join(_SYSTEMD_DAYS[d] for d in dow) + " "
    return f"{days}*-{join(month)}-{join(dom)} {join(hour)}:{join(minute)}:00 UTC"


@dataclass(frozen=True)
class ScheduleOptions:
    paths: tuple[str, ...]
    cron: str
    name: str = "forge-slo-gameday"
    image: str = "forge-slo:latest"
    namespace: str = "default"
    configmap: str = "forge-slo-experiments"
    reports_pvc: str = ""
    service_account: str = ""
    report_dir: str = "/var/lib/forge-slo/gameday"
    working_dir: str = "/var/lib/forge-slo"
    user: str = ""
    executable: str = "forge-slo"  # for the systemd service; the CronJob runs the image's forge-slo
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_hours: float = 2.0


def validate(options: ScheduleOptions) -> None:
    parse_cron(options.cron)
    if not _NAME.match(options.name):
        raise UsageError(f"--name {options.name!r}: lowercase letters, digits and '-' (a Kubernetes and unit name)")
    if not _NAME.match(options.namespace) or not _NAME.match(options.configmap):
        raise UsageError("--namespace and --configmap: lowercase letters, digits and '-'")
    for key in options.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--env {key!r}: not an environment variable name")
    if not options.paths:
        raise UsageError("name the experiments (a directory, files or a game-day file)")
    if not 0 < options.timeout_hours <= 48:
        raise UsageError("--timeout-hours must be above 0 and at most 48")
    for value in (options.report_dir, options.working_dir, options.executable, *options.paths):
        if "\n" in value or "%" in value:
            raise UsageError(f"{value!r}: newlines and '%' cannot go into a unit file")


def cronjob(options: ScheduleOptions) -> dict[str, object]:
    """A batch/v1 CronJob running the game day over the experiments mounted from a ConfigMap."""
    labels = {"app.kubernetes.io/name": options.name, "app.kubernetes.io/managed-by": "forge-slo"}
    reports = ({"persistentVolumeClaim": {"claimName": options.reports_pvc}} if options.reports_pvc
               else {"emptyDir": {}})
    pod: dict[str, object] = {
        "restartPolicy": "Never",
        "containers": [{
            "name": "gameday",
            "image": options.image,
            # The image's forge-slo (on its PATH), not this machine's.
            "command": ["forge-slo", "gameday", "run", "/experiments", "--report", "/reports",
                        "--timestamped"],
            "env": [{"name": k, "value": v} for k, v in sorted(options.env.items())],
            "volumeMounts": [{"name": "experiments", "mountPath": "/experiments", "readOnly": True},
                             {"name": "reports", "mountPath": "/reports"}],
        }],
        "volumes": [{"name": "experiments", "configMap": {"name": options.configmap}},
                    {"name": "reports", **reports}],
    }
    if options.service_account:
        pod["serviceAccountName"] = options.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": options.name, "namespace": options.namespace, "labels": dict(labels)},
        "spec": {
            "schedule": " ".join(options.cron.split()),
            "timeZone": "UTC",
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 5,
            "jobTemplate": {"spec": {
                # A game day is not retried: a deviation is a finding, not a flake.
                "backoffLimit": 0,
                "activeDeadlineSeconds": int(options.timeout_hours * 3600),
                "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
            }},
        },
    }


def _unit_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def service_unit(options: ScheduleOptions) -> str:
    command = [options.executable, "gameday", "run", *options.paths, "--report", options.report_dir, "--timestamped"]
    lines = [
        "# Generated by forge-slo gameday schedule. Install with the .timer next to it:",
        f"#   cp {options.name}.service {options.name}.timer /etc/systemd/system/ && systemctl daemon-reload",
        f"#   systemctl enable --now {options.name}.timer",
        "[Unit]",
        "Description=forge-slo game day: chaos experiments judged against the SLOs",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        f"WorkingDirectory={options.working_dir}",
    ]
    if options.user:
        lines.append(f"User={options.user}")
    lines += [f"Environment={_unit_quote(f'{k}={v}')}" for k, v in sorted(options.env.items())]
    lines += [
        f"ExecStart={shlex.join(command)}",
        f"TimeoutStartSec={int(options.timeout_hours * 3600)}",
        # SIGINT lets the running experiment play its rollbacks before the game day stops.
        "KillSignal=SIGINT",
        "TimeoutStopSec=300",
        "",
    ]
    return "\n".join(lines)


def timer_unit(options: ScheduleOptions) -> str:
    return "\n".join([
        "# Generated by forge-slo gameday schedule.",
        f"# cron {' '.join(options.cron.split())} (UTC)",
        "[Unit]",
        f"Description=Run the forge-slo game day ({' '.join(options.cron.split())} UTC)",
        "",
        "[Timer]",
        f"OnCalendar={on_calendar(options.cron)}",
        "Persistent=true",
        f"Unit={options.name}.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ])


def schedule_files(options: ScheduleOptions) -> dict[str, str]:
    """File name -> content, deterministic."""
    validate(options)
    header = (f"A forge-slo game day on the schedule {' '.join(options.cron.split())} (UTC). The experiments come "
              f"from ConfigMap {options.configmap}:\n  kubectl -n {options.namespace} create configmap "
              f"{options.configmap} --from-file=experiments/")
    return {
        f"{options.name}.cronjob.yaml": "".join(f"# {line}\n" for line in header.splitlines())
        + yaml.safe_dump(cronjob(options), sort_keys=False, default_flow_style=False),
        f"{options.name}.service": service_unit(options),
        f"{options.name}.timer": timer_unit(options),
    }


def write_schedule(options: ScheduleOptions, out_dir: str) -> list[str]:
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in schedule_files(options).items():
        (out / name).write_text(content, encoding="utf-8")
        written.append(str(out / name))
    return written


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {pair!r}: use KEY=VALUE")
        env[key] = value
    return env
