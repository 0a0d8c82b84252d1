"""Shared helpers: the repo's paths, the CLI as a user runs it, and promtool."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

# When a Hypothesis property fails, its pytest plugin imports libcst to suggest a patch; that import warns
# (mypy_extensions.TypedDict is deprecated) and, with warnings as errors, the INTERNALERROR hides the failing
# example. Imported once here with that warning silenced, the plugin finds it loaded.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import libcst  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "slo_specs"
GOLDEN = EXAMPLES / "_gen"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``forge-slo ARGS`` in a fresh interpreter, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "forge_slo", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: the README's test command installs Debian's 'prometheus' package")
    return path


def run_promtool_tests(promtool: str, rules: dict | list, tests: list[dict], tmp_path: Path,
                       name: str = "case", evaluation_interval: str = "1m") -> subprocess.CompletedProcess[str]:
    """Write a rule file and a promtool unit-test file, run ``promtool test rules`` on them."""
    rules_path = tmp_path / f"{name}.rules.yaml"
    if isinstance(rules, dict):
        rules_path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    else:
        shutil.copy(rules[0], rules_path)
    test_path = tmp_path / f"{name}.test.yaml"
    test_path.write_text(yaml.safe_dump({"rule_files": [rules_path.name], "evaluation_interval": evaluation_interval,
                                         "tests": tests}, sort_keys=False), encoding="utf-8")
    return subprocess.run([promtool, "test", "rules", test_path.name], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
