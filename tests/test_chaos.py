"""forge-slo's Chaos Toolkit extension and game days, against real services on 127.0.0.1.

One lab per module (Prometheus evaluating the rules compiled from experiments/specs every second, the simulator
under bounded traffic, the fake GPU fleet's exporter, the 2-rank training job); ``forge-slo gameday run``
runs every experiment in experiments/ through the real ``chaos run`` once, and each test asserts one
experiment's expected outcome from its journal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prom_fixture import prometheus_available

import forge_slo
from forge_slo import conventions as cv
from forge_slo.chaos import ACTION_MODULES, PROBE_MODULES, discover
from forge_slo.chaos.gameday import OK, ExperimentResult, GamedayResult, collect, judge
from forge_slo.chaos.gpu import actions as gpu_actions
from forge_slo.chaos.gpu.control import NvmlGpuControl
from forge_slo.chaos.lab import Lab, start_lab
from forge_slo.chaos.network import actions as net_actions
from forge_slo.chaos.network.actions import netem_support, netns_support
from forge_slo.chaos.process import actions as proc_actions
from forge_slo.chaos.report import Line, Plot, plot_svg, render_markdown
from forge_slo.chaos.schedule import ScheduleOptions, on_calendar, parse_cron, schedule_files
from forge_slo.chaos.slo import probes as slo_probes
from forge_slo.errors import RunnerError, SourceError, UsageError

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
HAS_TORCH = find_spec("torch") is not None
needs_prometheus = pytest.mark.skipif(not prometheus_available(), reason="no Prometheus server binary "
                                      "(scripts/test.sh installs Debian's prometheus package)")


def run_module(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
               cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forge_slo.chaos", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env, stdin=subprocess.DEVNULL)


# The lab and one game day over experiments/ ------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not prometheus_available():
        pytest.skip("no Prometheus server binary (scripts/test.sh installs Debian's prometheus package)")
    started = start_lab(tmp_path_factory.mktemp("lab"), specs=[EXPERIMENTS / "specs"],
                        fleet=EXPERIMENTS / "fleets" / "chaos-xid79.yaml", max_duration_s=600)
    try:
        yield started
    finally:
        started.stop()


def lab_env(lab: Lab) -> dict[str, str]:
    return {**os.environ, **lab.env()}


@pytest.fixture(scope="module")
def gameday(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    report = tmp_path_factory.mktemp("gameday")
    proc = run_module("gameday", "run", "experiments/", "--report", str(report), "--timeout", "3m",
                      env=lab_env(lab), timeout=600)
    summary = json.loads((report / "summary.json").read_text()) if (report / "summary.json").exists() else {}
    return SimpleNamespace(proc=proc, report=report, summary=summary,
                           experiments={e["name"]: e for e in summary.get("experiments", [])})


def journal_of(gameday: SimpleNamespace, name: str) -> dict[str, Any]:
    entry = gameday.experiments.get(name)
    assert entry is not None, f"{name} is not in the game day:\n{gameday.proc.stdout}\n{gameday.proc.stderr}"
    if entry["outcome"] == "skipped":
        pytest.skip(f"the game day skipped {name}: {entry['reason']}")
    journal: dict[str, Any] = json.loads(Path(entry["journal"]).read_text())
    return journal


def outputs(journal: dict[str, Any]) -> dict[str, Any]:
    return {r["activity"]["name"]: r.get("output") for r in journal["run"]}


def assert_passed(gameday: SimpleNamespace, name: str, journal: dict[str, Any]) -> None:
    entry = gameday.experiments[name]
    log = (gameday.report / "logs" / f"{name}.log")
    assert entry["outcome"] == OK, f"{name}: {entry['reason']}\n{log.read_text()[-3000:] if log.exists() else ''}"
    assert journal["status"] == "completed" and journal["deviated"] is False
    assert all(r["status"] == "succeeded" for r in journal["run"]), [r["activity"]["name"] for r in journal["run"]]
    for when in ("before", "after"):
        assert journal["steady_states"][when]["steady_state_met"] is True
    assert journal["rollbacks"] and all(r["status"] == "succeeded" for r in journal["rollbacks"])


@needs_prometheus
def test_gameday_runs_every_experiment_and_writes_the_report(gameday: SimpleNamespace) -> None:
    proc = gameday.proc
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    names = {p.stem for p in EXPERIMENTS.glob("*.json")}
    assert set(gameday.experiments) == names
    md = (gameday.report / "report.md").read_text()
    assert "| Experiment | Result | Hypothesis before | Hypothesis after | Budget consumed |" in md
    page = (gameday.report / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http://" not in page.split("<body>")[0]
    ran = [n for n, e in gameday.experiments.items() if e["outcome"] != "skipped"]
    assert page.count("<svg") >= 2 * len(ran)
    for name in names:
        assert f'id="{name}"' in page and f"| {name} |" in md
    for svg in (gameday.report / "plots").glob("*.svg"):
        ET.fromstring(svg.read_text())  # well-formed, stand-alone SVG
    for name in ran:
        assert (gameday.report / "journals" / f"{name}.json").is_file()
    assert not (gameday.report / "lab").exists()  # the lab belonged to the test, not to --lab


@needs_prometheus
def test_ttft_spike_opens_a_ticket_not_a_page_and_stays_within_budget(gameday: SimpleNamespace) -> None:
    journal = journal_of(gameday, "inference-ttft-spike")
    assert_passed(gameday, "inference-ttft-spike", journal)
    out = outputs(journal)
    assert 0 < out["ttft-ticket-fires"] <= 60
    assert out["ttft-page-stays-quiet"] is False
    assert out["ttft-p90-during-spike"] > 0.5  # the stall shows in the histogram the SLI reads
    assert 0 < out["ttft-ticket-resolves"] <= 60
    budget = gameday.experiments["inference-ttft-spike"]["budget_consumed"]["chaos-chat/ttft"]
    assert 0 < budget < 0.01
    guard = journal["forge_slo_guard"][0]
    assert guard["aborted"] is False and guard["checks"] > 0 and guard["peak_burn_rate"] > 2


@needs_prometheus
def test_outage_pages_within_30s_and_recovers(gameday: SimpleNamespace) -> None:
    journal = journal_of(gameday, "inference-outage")
    assert_passed(gameday, "inference-outage", journal)
    out = outputs(journal)
    assert 0 < out["availability-page-fires"] <= 30
    assert out["availability-page-resolves"] <= 60
    after = {p["activity"]["name"]: p["output"] for p in journal["steady_states"]["after"]["probes"]}
    assert after["availability-page-quiet"] is False and after["availability-burn-rate"] <= 1
    assert 0 < gameday.experiments["inference-outage"]["budget_consumed"]["chaos-chat/availability"] < 0.05


@needs_prometheus
def test_xid79_marks_one_gpu_pages_and_the_other_keeps_serving(gameday: SimpleNamespace) -> None:
    journal = journal_of(gameday, "gpu-xid79")
    assert_passed(gameday, "gpu-xid79", journal)
    out = outputs(journal)
    assert out["gpu1-xid79-count"] >= 1 and out["gpu1-marked-unhealthy"] is False
    assert out["xid-alert-fires"] <= 30 and out["unhealthy-alert-fires"] <= 30
    assert out["gpu0-no-alert"] is False and out["gpu0-keeps-serving"] is True


@needs_prometheus
def test_thermal_throttling_fires_and_clears(gameday: SimpleNamespace) -> None:
    journal = journal_of(gameday, "gpu-thermal")
    assert_passed(gameday, "gpu-thermal", journal)
    out = outputs(journal)
    assert out["gpu0-throttled"] is True and out["gpu0-temperature"] >= 92
    assert out["thermal-alert-fires"] <= 30 and out["thermal-alert-resolves"] <= 30


@needs_prometheus
@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install 'forge-slo[train]')")
def test_rank_kill_is_detected_within_the_watchdog_timeout(gameday: SimpleNamespace) -> None:
    journal = journal_of(gameday, "nccl-rank-kill")
    assert_passed(gameday, "nccl-rank-kill", journal)
    out = outputs(journal)
    assert out["kill-rank-1"]["pids"] and out["watchdog-detects-hang"] <= 15
    assert out["restart-the-job"]["ready_after_s"] > 0


@needs_prometheus
@pytest.mark.parametrize("name", ["nccl-network-throttle", "nccl-network-delay"])
def test_network_fault_drops_bandwidth_and_flags_stragglers(gameday: SimpleNamespace, name: str) -> None:
    entry = gameday.experiments[name]
    if name == "nccl-network-delay" and (netem := netem_support()) is not None:
        # Not run here: the game day must have skipped it and said why.
        assert entry["outcome"] == "skipped" and entry["reason"] == netem
        pytest.skip(f"{name} needs tc netem: {netem}")
    journal = journal_of(gameday, name)
    assert_passed(gameday, name, journal)
    out = outputs(journal)
    assert out["job-into-namespace"]["netns"] and out["bandwidth-before"] > 0
    assert out["straggler-detected"] <= 30 and out["bandwidth-ratio-under-fault"] < 0.5
    assert out["job-back-to-host"]["netns"] is None
    namespace = out["create-namespace"]["namespace"]
    assert namespace not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


# Safeguards: rollbacks after an abort, after Ctrl-C; exit code on deviation ------------------------------------

def write_experiment(path: Path, method: list[dict[str, Any]], rollbacks: list[dict[str, Any]],
                     hypothesis: list[dict[str, Any]] | None = None,
                     controls: list[dict[str, Any]] | None = None) -> Path:
    doc: dict[str, Any] = {
        "version": "1.0.0", "title": path.stem, "description": "test", "tags": ["test"],
        "configuration": {
            "prometheus_url": {"type": "env", "key": "FORGE_SLO_PROMETHEUS_URL"},
            "sim_url": {"type": "env", "key": "FORGE_SLO_SIM_URL"},
        },
        "runtime": {"rollbacks": {"strategy": "always"}},
        "method": method, "rollbacks": rollbacks,
    }
    if hypothesis:
        doc["steady-state-hypothesis"] = {"title": "steady", "probes": hypothesis}
    if controls:
        doc["controls"] = controls
    path.write_text(json.dumps(doc, indent=1))
    return path


def py(activity_type: str, name: str, module: str, func: str, **arguments: Any) -> dict[str, Any]:
    return {"type": activity_type, "name": name, "provider": {"type": "python", "module": f"forge_slo.chaos.{module}",
                                                      "func": func, "arguments": arguments}}


def sim_fault(fault_id: str, **fields: Any) -> dict[str, Any]:
    return py("action", f"inject-{fault_id}", "inference.actions", "inject_sim_fault", sim_url="${sim_url}",
              fault_id=fault_id, duration_s=90, **fields)


def remove(fault_id: str) -> dict[str, Any]:
    return py("action", f"remove-{fault_id}", "inference.actions", "remove_sim_fault", sim_url="${sim_url}",
              fault_id=fault_id)


def never_fires(timeout_s: float) -> dict[str, Any]:
    return py("probe", "wait-for-an-alert-that-never-fires", "slo.probes", "wait_for_alert",
              prometheus_url="${prometheus_url}", alert="ForgeSloTestNeverFires", timeout_s=timeout_s)


def active_faults(lab: Lab) -> list[Any]:
    faults: list[Any] = httpx.get(f"{lab.sim_url}/admin/faults", timeout=5).json()["faults"]
    return faults


@needs_prometheus
def test_budget_guard_aborts_mid_activity_and_rollbacks_run(lab: Lab, gameday: SimpleNamespace,
                                                             tmp_path: Path) -> None:
    guard = {"name": "guard", "provider": {"type": "python", "module": "forge_slo.chaos.control", "arguments": {
        "prometheus_url": "${prometheus_url}", "service": "chaos-chat", "slo": "availability",
        "max_burn_rate": 2, "interval_s": 0.5}}}
    experiment = write_experiment(tmp_path / "guarded-outage.json", [sim_fault("guarded", kind="outage"),
                                                                     never_fires(60)],
                                  [remove("guarded")], controls=[guard])
    started = time.monotonic()
    proc = run_module("gameday", "run", str(experiment), "--report", str(tmp_path / "report"), env=lab_env(lab),
                      timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    journal = json.loads((tmp_path / "report" / "journals" / "guarded-outage.json").read_text())
    assert journal["status"] == "interrupted"
    assert elapsed < 45, "the guard should abort long before the 60 s probe times out"
    assert journal["forge_slo_guard"][0]["aborted"] is True
    assert "over the guard's limit" in journal["forge_slo_guard"][0]["reason"]
    assert [r["status"] for r in journal["rollbacks"]] == ["succeeded"]
    assert active_faults(lab) == []
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["experiments"][0]["outcome"] == "interrupted"
    assert "budget guard aborted" in summary["experiments"][0]["reason"]
    # The report's figures are the guard's own: its peak is the highest reading it judged, drawn on the chart.
    guard_record = journal["forge_slo_guard"][0]
    readings = [r[1] for r in guard_record["readings"] if r[1] is not None]
    assert readings and max(readings) == pytest.approx(guard_record["peak_burn_rate"], rel=1e-3)
    assert max(readings) > 2, readings
    report_md = (tmp_path / "report" / "report.md").read_text()
    assert f"burn rate over the shortest alert window: peak {max(readings):.1f}x (limit 2x)" in report_md
    assert "budget consumed" not in report_md.split("Budget guard", 1)[1].split("\n", 1)[0]  # not watched
    report_html = (tmp_path / "report" / "report.html").read_text()
    assert "guard&#x27;s reading</text>" in report_html  # its own line on the burn-rate chart


@needs_prometheus
def test_sigint_interrupts_the_experiment_and_rollbacks_still_run(lab: Lab, gameday: SimpleNamespace,
                                                                   tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path / "interrupted.json",
                                  [sim_fault("sigint", kind="latency", itl_add_s=0.001), never_fires(90)],
                                  [remove("sigint")])
    report = tmp_path / "report"
    proc = subprocess.Popen([sys.executable, "-m", "forge_slo.chaos", "gameday", "run", str(experiment),
                             "--report", str(report)], cwd=REPO, env=lab_env(lab), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(f.get("id") == "sigint" for f in active_faults(lab)):
            assert proc.poll() is None and time.monotonic() < deadline, "the fault was never injected"
            time.sleep(0.2)
        time.sleep(1.0)  # inside the long probe now
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    journal = json.loads((report / "journals" / "interrupted.json").read_text())
    assert journal["status"] == "interrupted"
    assert [r["status"] for r in journal["rollbacks"]] == ["succeeded"]
    assert active_faults(lab) == []
    assert (report / "report.html").is_file()


@needs_prometheus
def test_a_deviated_hypothesis_fails_the_gameday_and_still_rolls_back(lab: Lab, gameday: SimpleNamespace,
                                                                      tmp_path: Path) -> None:
    ttft_p50 = py("probe", "ttft-p50", "slo.probes", "latency_percentile", prometheus_url="${prometheus_url}",
                  metric="vllm:time_to_first_token_seconds", quantile=0.5, window="5s")
    ttft_p50["tolerance"] = {"type": "range", "range": [0, 0.5]}
    slow = sim_fault("slow", kind="latency", ttft_add_s=1.0)
    slow["pauses"] = {"after": 7}
    experiment = write_experiment(tmp_path / "deviates.json", [slow], [remove("slow")], hypothesis=[ttft_p50])
    proc = run_module("gameday", "run", str(experiment), "--report", str(tmp_path / "report"), env=lab_env(lab),
                      timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    entry = summary["experiments"][0]
    assert entry["outcome"] == "deviated" and entry["hypothesis_after"][0]["met"] is False
    assert entry["rollbacks"] == {"remove-slow": "succeeded"}
    assert active_faults(lab) == []
    assert "DEVIATED" in (tmp_path / "report" / "report.md").read_text()


# The extension contract -------------------------------------------------------------------------------------

def test_discovery_lists_every_exported_activity_with_portable_types() -> None:
    import importlib

    found = discover(discover_system=False)
    assert found["extension"]["name"] == "forge-slo" and found["system"] is None
    by_name = {a["name"]: a for a in found["activities"]}
    for module_name in (*ACTION_MODULES, *PROBE_MODULES):
        module = importlib.import_module(module_name)
        kind = "action" if module_name.endswith("actions") else "probe"
        for name in module.__all__:
            assert by_name[name]["type"] == kind and by_name[name]["mod"] == module_name
            assert by_name[name]["doc"], f"{name} has no docstring"
    # Tolerances need plain numbers and booleans: the discovered return types say so.
    for name in ("burn_rate", "error_budget_remaining", "error_budget_consumed", "sli_value", "latency_percentile",
                 "bus_bandwidth_gbps", "gpu_temperature", "wait_for_alert"):
        assert by_name[name]["return_type"] == "number", name
    for name in ("alert_firing", "gpu_healthy", "gpu_throttled", "training_hung", "straggler_detected"):
        assert by_name[name]["return_type"] == "boolean", name
    assert by_name["gpu_xid_errors"]["return_type"] == "integer"
    assert {"inject_sim_fault", "kill_process", "pause_process", "set_gpu_power_limit", "lock_gpu_clocks",
            "inject_gpu_fault", "add_network_fault", "kill_rank"} <= set(by_name)


def test_chaos_discover_lists_the_extension(tmp_path: Path) -> None:
    if not callable(getattr(forge_slo, "discover", None)):
        pytest.skip("forge_slo.discover (the entry point 'chaos discover forge-slo' imports) is not wired yet")
    out = tmp_path / "discovery.json"
    proc = subprocess.run([sys.executable, "-m", "chaostoolkit", "--log-file", str(tmp_path / "chaos.log"),
                           "discover", "--no-install", "--no-system-info", "--discovery-path", str(out), "forge-slo"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {a["name"] for a in json.loads(out.read_text())["activities"]}
    assert {"burn_rate", "inject_sim_fault", "wait_for_training_hang"} <= names


def test_every_experiment_is_valid_for_chaos_toolkit(tmp_path: Path) -> None:
    files, _ = collect([EXPERIMENTS])
    assert {f.stem for f in files} >= {"inference-ttft-spike", "inference-outage", "gpu-xid79", "gpu-thermal",
                                      "nccl-rank-kill", "nccl-network-delay"}
    gpu_alerts = {cv.GPU_XID_ALERT, cv.GPU_UNHEALTHY_ALERT, cv.GPU_ECC_ALERT, cv.GPU_THERMAL_ALERT}
    for path in files + sorted((EXPERIMENTS / "kubernetes").glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc["runtime"]["rollbacks"]["strategy"] == "always", path
        for activity in doc["method"]:  # alert names come from the conventions the compiler uses
            alert = activity["provider"].get("arguments", {}).get("alert")
            assert alert is None or alert in gpu_alerts, (path, alert)
        for key, value in doc.get("configuration", {}).items():
            if isinstance(value, dict):
                assert value["type"] == "env" and value["key"].startswith(("FORGE_SLO_", "K8S_")), (path, key)
        if path.parent.name == "kubernetes" and find_spec("chaosk8s") is None:
            continue  # validation imports the activities' modules; chaostoolkit-kubernetes is not installed
        proc = subprocess.run([sys.executable, "-m", "chaostoolkit", "--log-file", str(tmp_path / "v.log"),
                               "validate", str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, f"{path}: {proc.stdout}{proc.stderr}"


# Bad input: clear messages, no tracebacks ---------------------------------------------------------------------

def test_gameday_bad_input(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"title": "x",\n "method": [}')
    not_experiment = tmp_path / "plain.json"
    not_experiment.write_text('{"hello": 1}')
    gameday_file = tmp_path / "day.yaml"
    gameday_file.write_text("kind: GameDay\nexperiments: [nope.json]\nextra: 1\n")
    cases = [
        (["gameday", "run", str(tmp_path / "missing"), "--report", str(tmp_path / "r")], "no such file"),
        (["gameday", "run", str(bad_json), "--report", str(tmp_path / "r")], "bad.json:2: not valid JSON"),
        (["gameday", "run", str(not_experiment), "--report", str(tmp_path / "r")], "not a Chaos Toolkit experiment"),
        (["gameday", "run", str(gameday_file), "--report", str(tmp_path / "r")], "day.yaml:3: extra: unknown field"),
        (["gameday", "run", str(EXPERIMENTS), "--report", str(tmp_path / "r"), "--timeout", "soon"], "--timeout"),
        (["gameday", "run", str(EXPERIMENTS), "--report", str(tmp_path / "r"), "--env", "NOEQUALS"], "KEY=VALUE"),
        (["gameday", "run", str(EXPERIMENTS), "--report", str(tmp_path / "r"), "--lab", "--lab-specs",
          str(tmp_path / "nospecs")], "no specs"),
        (["gameday", "schedule", str(EXPERIMENTS), "--out", str(tmp_path / "s"), "--cron", "61 * * * *"], "minute"),
        (["gameday", "schedule", str(EXPERIMENTS), "--out", str(tmp_path / "s"), "--cron", "0 3 1 * 1"],
         "not both"),
        (["gameday"], "choose a subcommand"),
    ]
    for args, message in cases:
        proc = run_module(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_gameday_env_sets_the_configuration_chaos_toolkit_loads(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A game-day file's env, and --env over it, reach the experiments' configuration: the game day reads it
    with Chaos Toolkit's own loader (env_var_type included) and ``chaos run`` sees the same values."""
    from forge_slo.chaos.gameday import run_gameday

    for key in ("FORGE_SLO_TEST_SERVICE", "FORGE_SLO_TEST_REPLICAS", "FORGE_SLO_TEST_UNSET"):
        monkeypatch.delenv(key, raising=False)
    echo = tmp_path / "echo-args"
    echo.write_text('#!/bin/sh\necho "$@"\n')
    echo.chmod(0o755)
    configuration = {"service": {"type": "env", "key": "FORGE_SLO_TEST_SERVICE", "default": "default-svc"},
                     "replicas": {"type": "env", "key": "FORGE_SLO_TEST_REPLICAS", "env_var_type": "int"},
                     "label": "static"}
    probe = {"type": "probe", "name": "echo", "provider": {
        "type": "process", "path": str(echo), "arguments": {"service": "${service}", "slo": "availability"}}}
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    for name, config in (("configured", configuration),
                         ("unset", {"needed": {"type": "env", "key": "FORGE_SLO_TEST_UNSET"}})):
        (experiments / f"{name}.json").write_text(json.dumps(
            {"version": "1.0.0", "title": name, "description": "test", "configuration": config, "method": [probe]}))
    day = tmp_path / "day.yaml"
    day.write_text("kind: GameDay\nexperiments: [experiments/]\n"
                   "env: {FORGE_SLO_TEST_SERVICE: from-file, FORGE_SLO_TEST_REPLICAS: 2}\n")
    result = run_gameday([day], tmp_path / "report", env={"FORGE_SLO_TEST_REPLICAS": "3"})
    configured, unset = sorted(result.experiments, key=lambda e: e.name)
    assert configured.configuration == {"service": "from-file", "replicas": 3, "label": "static"}
    assert configured.slos == [("from-file", "availability")]
    assert configured.outcome == OK, configured.reason
    assert "from-file" in configured.method[0].output["stdout"].split()  # what chaos run substituted
    assert unset.outcome == "failed"
    assert any(n.startswith("unset: ") and "FORGE_SLO_TEST_UNSET" in n for n in result.notes), result.notes


HOSTILE_GAMEDAYS = [
    ("lists itself", "day.yaml", b"kind: GameDay\nexperiments: [day.yaml]\n",
     "game-day files list each other in a loop"),
    ("deep nesting", "day.yaml", b"kind: GameDay\nexperiments: " + b"[" * 600 + b"]" * 600 + b"\n",
     "day.yaml:2: values nest deeper than 64 levels"),
    ("deep JSON", "day.json", b'{"kind": "GameDay", "experiments": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "day.json: not valid JSON: nested too deeply"),
    ("NUL byte", "day.yaml", b"kind: GameDay\nexperiments: [a\x00.json]\n", "day.yaml:2: holds a NUL byte"),
    ("non-UTF-8", "day.yaml", b"kind: GameDay\nname: caf\xe9\nexperiments: [x.json]\n",
     "day.yaml:2: is not UTF-8 text"),
    ("env not a mapping", "day.yaml", b"kind: GameDay\nexperiments: [x.json]\nenv: [A]\n",
     "day.yaml:3: env: must be a mapping"),
    ("experiments not a list", "day.yaml", b"kind: GameDay\nexperiments: x.json\n",
     "day.yaml:2: experiments: must be a list"),
]


@pytest.mark.parametrize(("case", "name", "data", "message"), HOSTILE_GAMEDAYS, ids=[c[0] for c in HOSTILE_GAMEDAYS])
def test_hostile_gameday_file_exits_2_naming_its_line(tmp_path: Path, case: str, name: str, data: bytes,
                                                      message: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    proc = run_module("gameday", "run", str(path), "--report", str(tmp_path / "r"), timeout=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_activities_refuse_bad_or_dangerous_input(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="refusing to change the host's own interface"):
        net_actions.add_network_fault("", delay_ms=10)
    with pytest.raises(UsageError, match="not a tc rate"):
        net_actions.add_network_fault("forge-slo-x", rate="fast")
    with pytest.raises(UsageError, match="changes nothing"):
        net_actions.add_network_fault("forge-slo-x")
    with pytest.raises(UsageError, match="namespace name"):
        net_actions.create_namespace("../etc")
    with pytest.raises(RunnerError, match="refusing to signal"):
        proc_actions.kill_process(pid=os.getpid())
    with pytest.raises(RunnerError, match="refusing to signal"):
        proc_actions.kill_process(pid=1)
    with pytest.raises(UsageError, match="exactly one of"):
        proc_actions.kill_process()
    with pytest.raises(UsageError, match="not a signal name"):
        proc_actions.kill_process(pid=123456, signal="SIGNOPE")
    seconds = f"30.{os.getpid()}"  # a command line no other process on the machine has
    sleepers = [subprocess.Popen(["sleep", seconds]) for _ in range(2)]
    for p in sleepers:  # Popen returns before the child has exec'd sleep
        deadline = time.monotonic() + 5
        while Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")[:2] != [b"sleep", seconds.encode()]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    pattern = rf"^sleep {re.escape(seconds)}$"
    try:
        with pytest.raises(RunnerError, match="2 processes match"):
            proc_actions.kill_process(name=pattern)
        paused = proc_actions.pause_process(pid=sleepers[0].pid)
        assert paused["paused"] == [sleepers[0].pid]
        assert proc_actions.resume_process(pid=sleepers[0].pid)["resumed"] == [sleepers[0].pid]
        assert proc_actions.kill_process(name=pattern, max_processes=2)["pids"] == sorted(
            p.pid for p in sleepers)
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
    with pytest.raises(UsageError, match="kind"):
        gpu_actions.inject_gpu_fault("http://127.0.0.1:9", 0, "meltdown")
    with pytest.raises(UsageError, match="service and slo are required"):
        slo_probes.burn_rate("http://127.0.0.1:9", "", "")
    with pytest.raises(UsageError, match="quantile"):
        slo_probes.latency_percentile("http://127.0.0.1:9", "m", quantile=99)
    with pytest.raises(SourceError, match="Prometheus is unreachable"):
        slo_probes.burn_rate("http://127.0.0.1:9", "svc", "slo")


class _NvmlStub:
    """pynvml as far as the GPU control uses it; one 700 W H100."""

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.limit_mw = 700_000
        self.clocks: tuple[int, int] | None = None

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        return f"gpu{index}"

    def nvmlDeviceGetPowerManagementLimit(self, handle: str) -> int:  # noqa: N802
        return self.limit_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: str) -> tuple[int, int]:  # noqa: N802
        return 200_000, 700_000

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: str) -> int:  # noqa: N802
        return 700_000

    def nvmlDeviceSetPowerManagementLimit(self, handle: str, mw: int) -> None:  # noqa: N802
        self.limit_mw = mw

    def nvmlDeviceSetGpuLockedClocks(self, handle: str, low: int, high: int) -> None:  # noqa: N802
        self.clocks = (low, high)

    def nvmlDeviceResetGpuLockedClocks(self, handle: str) -> None:  # noqa: N802
        self.clocks = None


def test_gpu_degradations_restore_what_was_there_and_need_a_gpu_or_the_fake(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    state = str(tmp_path / "gpu-state.json")
    assert gpu_actions.set_gpu_power_limit(0, 300, backend="fake", state_file=state)["previous_w"] == 700
    assert gpu_actions.set_gpu_power_limit(0, 250, backend="fake", state_file=state)["previous_w"] == 300
    assert gpu_actions.reset_gpu_power_limit(0, backend="fake", state_file=state) == {
        "gpu": 0, "power_limit_w": 700.0, "restored": True}
    with pytest.raises(UsageError, match="accepts 100 to 700 W"):
        gpu_actions.set_gpu_power_limit(0, 5000, backend="fake", state_file=state)
    assert gpu_actions.lock_gpu_clocks(1, 800, 900, backend="fake", state_file=state)["locked_mhz"] == [800, 900]
    assert gpu_actions.reset_gpu_clocks(1, backend="fake", state_file=state)["locked_mhz"] is None

    # NVML: refused without a GPU, with the way out in the message.
    with pytest.raises(RunnerError, match="backend to 'fake'"):
        NvmlGpuControl(_NvmlStub(fail_init=True))
    stub = _NvmlStub()
    monkeypatch.setattr("forge_slo.chaos.gpu.control.NvmlGpuControl.__init__",
                        lambda self, nvml=None: setattr(self, "nvml", stub))
    assert gpu_actions.set_gpu_power_limit(0, 450, backend="nvml", state_file=state)["previous_w"] == 700
    assert stub.limit_mw == 450_000
    gpu_actions.reset_gpu_power_limit(0, backend="nvml", state_file=state)
    assert stub.limit_mw == 700_000
    gpu_actions.lock_gpu_clocks(0, 1000, 1200, backend="nvml", state_file=state)
    assert stub.clocks == (1000, 1200)
    gpu_actions.reset_gpu_clocks(0, backend="nvml", state_file=state)
    assert stub.clocks is None
    with pytest.raises(UsageError, match="this machine has 1 GPUs"):
        gpu_actions.set_gpu_power_limit(3, 450, backend="nvml", state_file=state)


def test_netns_is_usable_here_or_says_why() -> None:
    reason = netns_support()
    if os.geteuid() == 0 and shutil.which("ip") and shutil.which("tc"):
        assert reason is None
    else:
        assert reason


# Judging journals, reports, schedules -------------------------------------------------------------------------

def fake_journal(wait_output: float) -> dict[str, Any]:
    def run(name: str, func: str, output: Any, kind: str = "probe", status: str = "succeeded") -> dict[str, Any]:
        return {"activity": {"name": name, "type": kind, "provider": {"func": func, "arguments": {}}},
                "status": status, "output": output, "start": "2026-01-01T00:00:01+00:00",
                "end": "2026-01-01T00:00:02+00:00"}

    probe = {"activity": {"name": "quiet", "tolerance": False}, "status": "succeeded", "output": False,
             "tolerance_met": True}
    return {"status": "completed", "deviated": False, "start": "2026-01-01T00:00:00+00:00",
            "end": "2026-01-01T00:00:30+00:00",
            "steady_states": {"before": {"probes": [probe]}, "after": {"probes": [probe]}},
            "run": [run("fault", "inject_sim_fault", {}, kind="action"), run("page", "wait_for_alert", wait_output),
                    run("quiet-page", "alert_firing", True)],
            "rollbacks": [run("undo", "remove_sim_fault", {}, kind="action")]}


def test_judge_reads_expectations_from_the_extension() -> None:
    ext = {"expect": {"within_s": {"page": 30}, "outputs": {"quiet-page": True}}}
    ok = ExperimentResult(Path("x.json"), "x", "x", extension=ext)
    judge(ok, fake_journal(12.0))
    assert ok.outcome == OK and ok.duration_s == 30 and ok.rollback_text() == "1/1 succeeded"
    slow = ExperimentResult(Path("x.json"), "x", "x", extension={"expect": {"within_s": {"page": 10}}})
    judge(slow, fake_journal(12.0))
    assert slow.outcome == "failed" and "took 12s, over the stated 10s" in slow.reason
    wrong = ExperimentResult(Path("x.json"), "x", "x", extension={"expect": {"outputs": {"quiet-page": False}}})
    judge(wrong, fake_journal(1.0))
    assert wrong.outcome == "failed" and "expected false" in wrong.reason
    result = GamedayResult(0.0, 31.0, [ok, slow])
    assert result.deviated
    md = render_markdown(result, {})
    assert "| x | ok | met | met | - | page 12.0s | 1/1 succeeded | 30s |" in md and "FAILED" in md


def test_plot_svg_is_standalone_svg() -> None:
    plot = Plot("burn <rate>", (Line("5s", ((0, 0), (1, 20.0), (2, 3.5))), Line("empty", ())), ((0.5, "outage"),))
    root = ET.fromstring(plot_svg(plot))
    assert root.tag.endswith("svg") and root.get("viewBox")
    ns = "{http://www.w3.org/2000/svg}"
    text = "".join(root.itertext())
    assert len(root.findall(f"{ns}polyline")) == 1 and "burn <rate>" in text
    assert "outage" in text and "empty (no data)" in text  # the action is marked; an empty series is named
    assert "no data" in "".join(ET.fromstring(plot_svg(Plot("nothing", ()))).itertext())


@pytest.mark.parametrize(("cron", "calendar"), [
    ("0 3 * * 1", "Mon *-*-* 03:00:00 UTC"),
    ("*/15 9-17 * * mon-fri", "Mon,Tue,Wed,Thu,Fri *-*-* 09,10,11,12,13,14,15,16,17:00,15,30,45:00 UTC"),
    ("30 2 1,15 * *", "*-*-01,15 02:30:00 UTC"),
    ("0 0 * 1-6/2 0", "Sun *-01,03,05-* 00:00:00 UTC"),
    ("5 4 * * 7", "Sun *-*-* 04:05:00 UTC"),
])
def test_cron_becomes_the_same_oncalendar(cron: str, calendar: str) -> None:
    assert on_calendar(cron) == calendar
    analyze = shutil.which("systemd-analyze")
    if analyze:
        proc = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr


def test_bad_cron_is_refused_with_the_field() -> None:
    for cron, message in [("* * *", "5 fields"), ("0 25 * * *", "hour"), ("0 0 0 * *", "day of month"),
                          ("x * * * *", "minute"), ("0 0 1 * mon", "not both")]:
        with pytest.raises(UsageError, match=message):
            parse_cron(cron)


def test_schedule_writes_a_cronjob_and_a_verified_systemd_timer(tmp_path: Path) -> None:
    import yaml

    out = tmp_path / "sched"
    executable = shutil.which("forge-slo") or sys.executable
    proc = run_module("gameday", "schedule", str(EXPERIMENTS), "--cron", "0 3 * * 1", "--out", str(out),
                      "--env", "FORGE_SLO_PROMETHEUS_URL=http://prometheus:9090", "--reports-pvc", "gameday-reports",
                      "--exec", executable, "--working-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    job = yaml.safe_load((out / "forge-slo-gameday.cronjob.yaml").read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "CronJob"
    spec = job["spec"]
    assert spec["schedule"] == "0 3 * * 1" and spec["timeZone"] == "UTC" and spec["concurrencyPolicy"] == "Forbid"
    parse_cron(spec["schedule"])
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure") and spec["jobTemplate"]["spec"]["backoffLimit"] == 0
    container = pod["containers"][0]
    assert container["command"][:3] == ["forge-slo", "gameday", "run"] and "--report" in container["command"]
    assert {"name": "FORGE_SLO_PROMETHEUS_URL", "value": "http://prometheus:9090"} in container["env"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(volumes) == {"experiments", "reports"}
    assert volumes["reports"]["persistentVolumeClaim"]["claimName"] == "gameday-reports"
    assert container["command"][3] == mounts["experiments"]

    service = (out / "forge-slo-gameday.service").read_text()
    timer = (out / "forge-slo-gameday.timer").read_text()
    assert f"ExecStart={executable} gameday run {EXPERIMENTS}" in service and "Type=oneshot" in service
    assert "OnCalendar=Mon *-*-* 03:00:00 UTC" in timer and "Unit=forge-slo-gameday.service" in timer
    assert 'Environment="FORGE_SLO_PROMETHEUS_URL=http://prometheus:9090"' in service
    analyze = shutil.which("systemd-analyze")
    if analyze:
        check = subprocess.run([analyze, "verify", "forge-slo-gameday.service", "forge-slo-gameday.timer"],
                               capture_output=True, text=True, timeout=60, cwd=out)
        assert check.returncode == 0, check.stdout + check.stderr
    else:  # parse the units: every line a section, a comment or Key=Value in a known section
        import configparser

        for text in (service, timer):
            parser = configparser.ConfigParser(strict=True, interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            parser.read_string(text)
            assert set(parser.sections()) <= {"Unit", "Service", "Timer", "Install"}
    # Deterministic: the same options give the same bytes.
    options = ScheduleOptions(("/x",), "0 3 * * 1")
    assert schedule_files(options) == schedule_files(options)


def test_the_headline_counts_skipped_experiments() -> None:
    from forge_slo.chaos.gameday import DEVIATED, OK, SKIPPED, ExperimentResult, GamedayResult
    from forge_slo.chaos.report import headline, render_html, render_markdown

    def experiments(*outcomes: str) -> GamedayResult:
        return GamedayResult(started=1.0, ended=71.0, experiments=[
            ExperimentResult(Path(f"e{i}.json"), f"e{i}", "t", outcome=o, reason="no netem" if o == SKIPPED else "")
            for i, o in enumerate(outcomes)])

    result = experiments(OK, OK, SKIPPED, OK, SKIPPED, OK, SKIPPED)
    assert headline(result) == "7 experiments; 4 ran and every hypothesis held; 3 skipped (not judged)"
    assert "every hypothesis held;" not in headline(experiments(OK, DEVIATED, SKIPPED))
    assert headline(experiments(OK, DEVIATED, SKIPPED)) == \
        "3 experiments; 2 ran: 1 held, 1 deviated; 1 skipped (not judged)"
    assert headline(experiments(SKIPPED, SKIPPED)) == "2 experiments; none ran; 2 skipped (not judged)"
    assert headline(result) in render_markdown(result, {}) and headline(result) in render_html(result, {})
