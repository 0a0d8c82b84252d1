"""``forge-slo load manifests``: Kubernetes manifests for a run on Locust's own distribution.

A Job runs the master (``forge-slo load --master``, the run's flags, results in a volume), a Service lets the
workers reach it, and a Deployment holds the workers (``forge-slo load --worker``); ``kubectl scale`` changes
how many there are before the run (the master waits for ``--workers`` of them). The run's flags are checked
here as ``forge-slo load`` would check them, so a bad flag fails now rather than in the cluster. The output is
deterministic: the same flags give the same bytes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from forge_slo.errors import UsageError
from forge_slo.load.options import LOCUST_MASTER_PORT, MAX_WORKERS, add_load_arguments, options_from_namespace

RESULTS = "/results"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")
# Flags the manifests set themselves: the run's own are refused so the two cannot disagree.
_OWN_FLAGS = ("--master", "--worker", "--workers", "--expect-workers", "--master-bind-host", "--master-bind-port",
              "--master-host", "--master-port", "--out", "--progress")


def build_manifests_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = ("Write Kubernetes manifests for a distributed load run: a Job for the master "
                          "(forge-slo load --master), a Service, and a Deployment of workers (forge-slo load "
                          "--worker) to scale. The run's flags follow '--' and are checked now.")
    parser.add_argument("--image", required=True, metavar="IMAGE", help="a container image with forge-slo installed")
    parser.add_argument("--workers", dest="k8s_workers", type=int, default=2, metavar="N",
                        help="worker replicas, and how many the master waits for (default 2)")
    parser.add_argument("--name", dest="k8s_name", default="forge-slo-load", metavar="NAME",
                        help="prefix of the objects' names (default forge-slo-load)")
    parser.add_argument("--namespace", dest="k8s_namespace", metavar="NS", help="namespace of every object")
    parser.add_argument("--results-claim", dest="k8s_claim", metavar="CLAIM",
                        help="a PersistentVolumeClaim to keep the results in (default: an emptyDir; the verdict is "
                             "in the master's log either way)")
    parser.add_argument("--out", dest="k8s_out", metavar="FILE", help="write here (default: standard output)")
    parser.add_argument("load_args", nargs=argparse.REMAINDER, metavar="-- FLAGS",
                        help="the run's forge-slo load flags, e.g. -- --target http://vllm:8000 --model m --rate 50")
    return parser


def manifests_from_args(args: argparse.Namespace) -> int:
    flags = list(args.load_args)
    if flags[:1] == ["--"]:
        flags = flags[1:]
    text = manifests(flags, image=str(args.image), workers=int(args.k8s_workers), name=str(args.k8s_name),
                     namespace=args.k8s_namespace, claim=args.k8s_claim)
    if args.k8s_out:
        try:
            Path(args.k8s_out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--out: {args.k8s_out}: {exc.strerror or exc}") from None
        print(f"wrote {args.k8s_out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def check_flags(flags: list[str]) -> None:
    """Parse the run's flags as ``forge-slo load`` does (UsageError naming the flag)."""
    for flag in flags:
        if flag.split("=", 1)[0] in _OWN_FLAGS:
            raise UsageError(f"{flag.split('=', 1)[0]}: set by the manifests (--workers N, results in {RESULTS}); "
                             "leave it out of the run's flags")

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:  # argparse would exit; a UsageError names the flag instead
            raise UsageError(f"the run's flags: {message}")

    parser = _Parser(prog="forge-slo load", add_help=False)
    add_load_arguments(parser)
    ns = parser.parse_args(flags)
    ns.out = RESULTS
    options_from_namespace(ns, require_out=True)


def manifests(flags: list[str], *, image: str, workers: int, name: str = "forge-slo-load",
              namespace: str | None = None, claim: str | None = None) -> str:
    """The YAML of the master Job, its Service and the workers' Deployment."""
    if not _NAME.match(name):
        raise UsageError(f"--name: {name!r} must be a DNS label of lowercase letters, digits and '-'")
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers: {workers} is not between 1 and {MAX_WORKERS}")
    if not image.strip():
        raise UsageError("--image: an image is required")
    check_flags(flags)
    master = f"{name}-master"
    volume: dict[str, Any] = {"persistentVolumeClaim": {"claimName": claim}} if claim else {"emptyDir": {}}
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "forge-slo"}

    def meta(obj: str, role: str) -> dict[str, Any]:
        return {"name": obj, "labels": {**labels, "app.kubernetes.io/component": role},
                **({"namespace": namespace} if namespace else {})}

    port = {"name": "locust", "containerPort": LOCUST_MASTER_PORT}
    master_args = ["load", *flags, "--master", "--expect-workers", str(workers), "--master-bind-host", "0.0.0.0",
                   "--master-bind-port", str(LOCUST_MASTER_PORT), "--out", RESULTS, "--progress", "plain"]
    worker_args = ["load", "--worker", "--master-host", master, "--master-port", str(LOCUST_MASTER_PORT)]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(master, "master"), "spec": {
        "backoffLimit": 0, "template": {"metadata": {"labels": {**labels, "app.kubernetes.io/component": "master"}},
                                        "spec": {"restartPolicy": "Never", "containers": [{
                                            "name": "master", "image": image, "command": ["forge-slo"],
                                            "args": master_args, "ports": [port],
                                            "volumeMounts": [{"name": "results", "mountPath": RESULTS}]}],
                                            "volumes": [{"name": "results", **volume}]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta(master, "master"), "spec": {
        "selector": {**labels, "app.kubernetes.io/component": "master"},
        "ports": [{"name": "locust", "port": LOCUST_MASTER_PORT, "targetPort": LOCUST_MASTER_PORT}]}}
    worker_labels = {**labels, "app.kubernetes.io/component": "worker"}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(f"{name}-worker", "worker"),
                  "spec": {"replicas": workers, "selector": {"matchLabels": worker_labels},
                           "template": {"metadata": {"labels": worker_labels}, "spec": {"containers": [{
                               "name": "worker", "image": image, "command": ["forge-slo"], "args": worker_args}]}}}}
    head = (f"# forge-slo load on Kubernetes: a master Job, its Service, {workers} workers (scale them with\n"
            f"# kubectl scale deployment/{name}-worker --replicas=N before the master starts its first stage).\n"
            f"# The verdict: kubectl logs job/{master}. The files ({RESULTS}): on the results volume\n"
            "# (--results-claim keeps them in a PersistentVolumeClaim).\n")
    return head + yaml.safe_dump_all([job, service, deployment], sort_keys=True, default_flow_style=False)
