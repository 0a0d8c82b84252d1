"""`forge-slo report` on a simulated month: 64 days of request counters with incidents of known lengths,
backfilled into a real Prometheus (promtool), the compiled recording rules backfilled from them by promtool,
and the report read as a user would (the CLI), in its three formats."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from prom_fixture import PrometheusHandle, prometheus_available, start_prometheus

from forge_slo.compile.rules import rules_document
from forge_slo.spec import load_specs
from tests.conftest import run_cli

SPEC = """\
apiVersion: forge-slo/v1
kind: ServiceSLO
service: month
period: 30d
alerting:
  page:
    windows: [{long: 1h, short: 5m, factor: 14.4}]
  ticket:
    windows: [{long: 1d, short: 2h, factor: 3}]
slos:
  - name: availability
    objective: 99.9
    sli:
      ratio:
        errors: sum(rate(app_requests_failed_total[{{window}}]))
        total: sum(rate(app_requests_total[{{window}}]))
"""
DAY = 1440  # minutes
DAYS = 64  # the report's month, the month before it, and four days for the longest window to fill
BUDGET = 0.001
BACKGROUND_ERROR_RATIO = 0.00005


@dataclass(frozen=True)
class Incident:
    day: int  # days before the end of the data
    minute: int  # minute of that day
    minutes: int
    error_ratio: float

    def start_index(self) -> int:
        return (DAYS - self.day) * DAY + self.minute


# Two incidents in the reported month (A spends more budget than B), one in the month before.
A = Incident(day=22, minute=3 * 60, minutes=15, error_ratio=1.0)
B = Incident(day=9, minute=14 * 60 + 30, minutes=40, error_ratio=0.25)
C = Incident(day=45, minute=10 * 60, minutes=30, error_ratio=1.0)


@dataclass(frozen=True)
class Month:
    prometheus: PrometheusHandle
    spec: Path
    end: int
    requests: np.ndarray
    failures: np.ndarray

    def truth(self, months_back: int) -> float:
        """Budget consumed in a 30-day period ending ``months_back`` periods before the end: failures over the
        budget's share of the requests, counted exactly from the generated data."""
        stop = len(self.requests) - 30 * DAY * months_back
        window = slice(stop - 30 * DAY, stop)
        return float(self.failures[window].sum() / (BUDGET * self.requests[window].sum()))


def generate() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(17)
    minutes = DAYS * DAY
    requests = rng.poisson(100, size=minutes).astype(np.int64)
    ratio = np.full(minutes, BACKGROUND_ERROR_RATIO)
    for incident in (A, B, C):
        ratio[incident.start_index():incident.start_index() + incident.minutes] = incident.error_ratio
    return requests, rng.binomial(requests, ratio)


def write_openmetrics(path: Path, requests: np.ndarray, failures: np.ndarray, end: int) -> None:
    stamps = end - 60 * (len(requests) - 1 - np.arange(len(requests)))
    with path.open("w") as out:
        for name, counts in (("app_requests", requests), ("app_requests_failed", failures)):
            out.write(f"# TYPE {name} counter\n")
            out.writelines(f"{name}_total {v} {s}\n" for v, s in zip(np.cumsum(counts).tolist(), stamps.tolist(),
                                                                     strict=True))
        out.write("# EOF\n")


def promtool(*args: str) -> None:
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


RETENTION = ["--storage.tsdb.retention.time=400d"]


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Month]:
    if not prometheus_available() or shutil.which("promtool") is None:
        pytest.fail("prometheus and promtool are needed: scripts/test.sh installs Debian's prometheus package")
    tmp = tmp_path_factory.mktemp("month")
    spec_path = tmp / "month.yaml"
    spec_path.write_text(SPEC)
    [spec] = load_specs([spec_path])
    requests, failures = generate()
    end = (int(time.time()) // 3600 - 3) * 3600  # a whole hour, safely before anything Prometheus holds in memory
    start = end - 60 * (len(requests) - 1)
    data = tmp / "data"
    data.mkdir()
    raw = tmp / "raw.om"
    write_openmetrics(raw, requests, failures, end)
    # One block per 10 days (the default 2h blocks would have promtool reread the file 770 times).
    promtool("tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=240h", "-q", str(raw), str(data))
    # The recordings the report reads, computed by Prometheus from the raw series, every minute as a server would.
    recordings = [r for r in rules_document(spec)["groups"][0]["rules"]
                  if str(r.get("record", "")).startswith("forge_slo:sli_")]
    rules = tmp / "sli.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "sli", "interval": "1m", "rules": recordings}]}))
    prom = start_prometheus(tmp, [], data_dir=data, extra_args=RETENTION)
    try:
        # At most 11,000 points per query: a week of minutes per block.
        promtool("tsdb", "create-blocks-from", "rules", "--max-block-duration=168h", f"--start={start}",
                 f"--end={end}", f"--url={prom.url}", "--eval-interval=60s", f"--output-dir={tmp / 'rule-blocks'}",
                 "-q", str(rules))
    finally:
        prom.stop()
    for block in (tmp / "rule-blocks").iterdir():
        shutil.move(str(block), data / block.name)
    prom = start_prometheus(tmp, [], data_dir=data, extra_args=RETENTION)
    try:
        yield Month(prom, spec_path, end, requests, failures)
    finally:
        prom.stop()


def report(month: Month, out: Path) -> dict:
    result = run_cli("report", str(month.spec), "--prometheus", month.prometheus.url, "--end", str(month.end),
                     "--period", "30d", "--out", str(out), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((out / "report.json").read_text())


def test_month_report_lists_the_incidents_with_their_durations_and_the_budget_they_consumed(
        month: Month, tmp_path: Path) -> None:
    data = report(month, tmp_path)
    [slo] = data["slos"]
    [group] = slo["groups"]
    # Budget consumed over the month, within 1% of what the generated requests and failures say.
    assert group["budget_consumed"] == pytest.approx(month.truth(0), rel=0.01)
    assert group["attainment"] == pytest.approx(1 - BUDGET * month.truth(0), rel=1e-4)
    assert group["previous"]["budget_consumed"] == pytest.approx(month.truth(1), rel=0.01)
    assert 0.4 < month.truth(0) < month.truth(1) < 1  # the month was better than the one before

    # One page per incident in the month, each as long as the incident within the 5m short window: a page
    # fires once both windows burn 14.4x, holds 2m (`for`), and ends once the 5m window is clean again.
    end = month.end
    pages = slo["pages"]
    assert len(pages) == 2, pages
    for page, incident in zip(pages, (A, B), strict=True):
        started = end - 60 * (len(month.requests) - 1 - incident.start_index())
        assert started <= page["start"] <= started + 10 * 60, (page, incident)
        assert page["duration_seconds"] == pytest.approx(incident.minutes * 60, abs=5 * 60), (page, incident)
        assert page["windows"] == ["1h/5m"] and not page["ongoing"]
    # A ticket (3x over 1d and 2h, held 10m) follows each once the day has seen 0.3% errors (B, at 25%, takes
    # 17 minutes), and lasts until the incident leaves its 2h short window.
    tickets = slo["tickets"]
    assert len(tickets) == 2, tickets
    for ticket, incident in zip(tickets, (A, B), strict=True):
        started = end - 60 * (len(month.requests) - 1 - incident.start_index())
        assert started + 10 * 60 <= ticket["start"] <= started + 30 * 60, (ticket, incident)
        assert started + 2 * 3600 <= ticket["end"] <= started + incident.minutes * 60 + 2 * 3600 + 5 * 60
    assert slo["previous"] == {"pages": 1, "tickets": 1}

    # The worst days are the incidents' days, the longer full outage first.
    worst = group["worst"]
    day_of = [time.strftime("%Y-%m-%d", time.gmtime(end - 60 * (len(month.requests) - 1 - i.start_index())))
              for i in (A, B)]
    assert [w["label"] for w in worst[:2]] == day_of
    assert worst[0]["budget_consumed"] == pytest.approx(
        month.failures[A.start_index():A.start_index() + A.minutes].sum()
        / (BUDGET * month.requests[-30 * DAY:].sum()), rel=0.05)
    assert all(w["budget_consumed"] < 0.05 for w in worst[2:])

    # The same in Markdown and HTML, with charts, for the review.
    markdown = (tmp_path / "report.md").read_text()
    assert "## month / availability (objective 99.9%)" in markdown
    assert f"| all | {(1 - BUDGET * group['budget_consumed']) * 100:.3f}% | {group['budget_consumed'] * 100:.1f}% |" \
        in markdown
    assert "Pages: 2 (previous period 1). Tickets: 2 (previous period 1)." in markdown
    assert day_of[0] in markdown and "### Worst days" in markdown
    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") == 2 and "<script" not in html
    assert "Budget consumed per day" in html and 'class="pages"' in html


def test_report_of_an_unreachable_prometheus_exits_3_and_writes_nothing(month: Month, tmp_path: Path) -> None:
    from prom_fixture import free_port

    out = tmp_path / "out"
    result = run_cli("report", str(month.spec), "--prometheus", f"http://127.0.0.1:{free_port()}", "--out", str(out))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Prometheus is unreachable" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_report_into_a_file_instead_of_a_folder_exits_2(month: Month, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("mine")
    result = run_cli("report", str(month.spec), "--prometheus", month.prometheus.url, "--end", str(month.end),
                     "--out", str(taken), timeout=240)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--out {taken}: cannot write the report" in result.stderr and "Traceback" not in result.stderr
    assert taken.read_text() == "mine"


@pytest.mark.parametrize(("flags", "message"), [
    (["--end", "yesterday"], "--end: 'yesterday' is neither Unix seconds nor an RFC 3339 time"),
    (["--end", "2999-01-01T00:00:00Z"], "is in the future"),
    (["--period", "30"], "argument --period: '30' is not a duration (add a unit"),
    (["--prometheus", "localhost:9090"], "must start with http:// or https://"),
])
def test_report_refuses_bad_flags_with_exit_2(tmp_path: Path, flags: list[str], message: str) -> None:
    spec = tmp_path / "month.yaml"
    spec.write_text(SPEC)
    result = run_cli("report", str(spec), "--prometheus", "http://127.0.0.1:9", *flags)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
