"""The README's instructions are true as written."""

from __future__ import annotations

import json
import re

import yaml

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_ci_runs_the_readme_test_command() -> None:
    assert "bash scripts/test.sh" in README
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert [ln for ln in ci.splitlines() if ln and not ln.startswith(("#", "set ", "cd "))] == ["bash scripts/test.sh"]


def test_provisioning_example_names_paths_that_exist() -> None:
    mounts = dict(re.findall(r'-v "\$PWD/([^:"]+):([^:"]+)(?::ro)?"', README))
    assert mounts, "the README's provisioning example mounts nothing"
    for source in mounts:
        assert (REPO / source).exists(), f"the README mounts {source}, which does not exist"
    provider_file = next(s for s, target in mounts.items() if target.startswith("/etc/grafana/provisioning/"))
    provider = yaml.safe_load((REPO / provider_file).read_text())
    assert provider["apiVersion"] == 1
    [entry] = provider["providers"]
    assert entry["type"] == "file"
    dashboards_dir = next(s for s, target in mounts.items() if target == entry["options"]["path"])
    files = sorted((REPO / dashboards_dir).glob("*.json"))
    assert files, f"{dashboards_dir} holds no dashboards"
    uids = set()
    links = []
    for path in files:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        links += [link["url"] for link in dashboard.get("links", []) if link.get("url", "").startswith("/d/")]
    assert "forge-slo-overview" in uids
    for url in links:
        assert url.removeprefix("/d/").split("?")[0] in uids, f"dashboard link {url} points nowhere"
