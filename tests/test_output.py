"""`forge-slo compile` writes only what it generated: the user's files are never replaced or deleted,
output folders never overlap, and what it writes is readable like any other tool's output."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.prom_fixture import prometheus_available, start_prometheus
from tests.test_spec import GOOD, write


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), links shown as their target."""
    out: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    return write(tmp_path, GOOD)


def test_files_the_user_keeps_in_an_output_folder_survive(spec: Path, tmp_path: Path) -> None:
    out, grafana = tmp_path / "out", tmp_path / "provisioning"
    grafana.mkdir()
    (grafana / "team-other.json").write_text('{"title": "another team"}')
    (grafana / "README").write_text("our dashboards")
    (out / "prometheus").mkdir(parents=True)
    (out / "prometheus" / "hand-written.rules.yaml").write_text("groups: []\n")
    for _ in range(2):  # the second run replaces forge-slo's own files and still leaves the user's alone
        result = run_cli("compile", str(spec), "--out", str(out), "--grafana-out", str(grafana))
        assert result.returncode == 0, result.stderr
    assert (grafana / "team-other.json").read_text() == '{"title": "another team"}'
    assert (grafana / "README").read_text() == "our dashboards"
    assert (out / "prometheus" / "hand-written.rules.yaml").read_text() == "groups: []\n"
    assert (grafana / "chat.json").is_file() and (out / "prometheus" / "chat.rules.yaml").is_file()


def test_only_forge_slos_own_stale_files_are_removed(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = write(tmp_path, GOOD.replace("service: chat", "service: old"), "old.yaml")
    assert run_cli("compile", str(spec), str(old), "--out", str(out)).returncode == 0
    (out / "prometheus" / "mine.rules.yaml").write_text("groups: []\n")
    result = run_cli("compile", str(spec), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "prometheus").iterdir()) == [
        ".forge-slo-manifest", "chat.rules.yaml", "mine.rules.yaml"]
    assert f"removed {out / 'prometheus' / 'old.rules.yaml'}" in result.stdout


def test_a_users_file_in_the_way_stops_the_run_before_anything_is_written(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "grafana").mkdir(parents=True)
    (out / "grafana" / "chat.json").write_text('{"title": "my own chat dashboard"}')
    before = _tree(tmp_path)
    result = run_cli("compile", str(spec), "--out", str(out))
    assert result.returncode == 2
    assert f"{out / 'grafana' / 'chat.json'} exists and forge-slo did not write it" in result.stderr
    assert "Traceback" not in result.stderr
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("case", ["grafana-out encloses out", "grafana-out is out", "grafana-out is a rules folder",
                                  "grafana-out is the working directory"])
def test_overlapping_output_folders_are_refused_and_nothing_is_touched(spec: Path, tmp_path: Path, case: str) -> None:
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "src" / "app.py").write_text("print('hi')\n")
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "out" / "prometheus").mkdir(parents=True)
    (project / "out" / "prometheus" / "mine.rules.yaml").write_text("groups: []\n")
    grafana = {"grafana-out encloses out": "proj", "grafana-out is out": "proj/out",
               "grafana-out is a rules folder": "proj/out/prometheus", "grafana-out is the working directory": "."}
    before = _tree(tmp_path)
    result = run_cli("compile", str(spec), "--out", "proj/out", "--grafana-out", grafana[case], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "output folder" in result.stderr and "Traceback" not in result.stderr
    assert _tree(tmp_path) == before


def test_a_symlinked_output_folder_is_followed_and_keeps_working(spec: Path, tmp_path: Path) -> None:
    real = tmp_path / "shared-rules"
    real.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "prometheus").symlink_to(real, target_is_directory=True)
    for _ in range(3):
        result = run_cli("compile", str(spec), "--out", str(tmp_path / "out"))
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "prometheus").is_symlink()
    assert (real / "chat.rules.yaml").is_file()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no debris beside it


def test_a_symlinked_file_is_not_written_through(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("compile", str(spec), "--out", str(out)).returncode == 0
    elsewhere = tmp_path / "important.txt"
    elsewhere.write_text("keep me")
    rules = out / "prometheus" / "chat.rules.yaml"
    rules.unlink()
    rules.symlink_to(elsewhere)
    result = run_cli("compile", str(spec), "--out", str(out))
    assert result.returncode == 2 and "is a symbolic link" in result.stderr
    assert elsewhere.read_text() == "keep me"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_gets_the_users_umask(spec: Path, tmp_path: Path, umask: int) -> None:
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        assert run_cli("compile", str(spec), "--out", str(out)).returncode == 0
    finally:
        os.umask(old)
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == expected, f"{path}: {oct(mode)} != {oct(expected)}"


def test_check_names_stale_files_but_ignores_the_users(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = write(tmp_path, GOOD.replace("service: chat", "service: old"), "old.yaml")
    assert run_cli("compile", str(spec), str(old), "--out", str(out)).returncode == 0
    (out / "prometheus" / "mine.rules.yaml").write_text("groups: []\n")
    assert run_cli("compile", str(spec), str(old), "--out", str(out), "--check").returncode == 0
    result = run_cli("compile", str(spec), "--out", str(out), "--check")
    assert result.returncode == 1
    assert f"{out / 'prometheus' / 'old.rules.yaml'}: no longer produced" in result.stderr
    assert "mine.rules.yaml" not in result.stderr


@pytest.mark.skipif(not prometheus_available(), reason="Prometheus is not installed")
def test_a_prometheus_running_as_another_user_loads_the_compiled_rules(spec: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("starting Prometheus as another user needs root (CI runs the suite as root)")
    # A project folder as a user has one (0755), outside pytest's private (0700) temporary folder.
    project = Path(tempfile.mkdtemp(prefix="forge-slo-perm-"))
    try:
        project.chmod(0o755)
        old = os.umask(0o022)
        try:
            result = run_cli("compile", str(spec), "--out", str(project / "out"))
        finally:
            os.umask(old)
        assert result.returncode == 0, result.stderr
        prom = start_prometheus(project, [], rule_files=[project / "out" / "prometheus" / "*.rules.yaml"],
                                run_as="nobody")
        try:
            groups = prom.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            assert len(rules) > 0, f"Prometheus (running as nobody) loaded no rules:\n{prom.log()}"
            assert {g["file"] for g in groups} == {str(project / "out" / "prometheus" / "chat.rules.yaml")}
        finally:
            prom.stop()
    finally:
        shutil.rmtree(project, ignore_errors=True)
