#!/usr/bin/env bash
# The test command: installs everything the tests need, then runs lint, type checks and the whole suite.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k sim     # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages of the real parts the tests start, installed only when missing: Prometheus and promtool,
# Alertmanager and amtool (the routing test), VictoriaMetrics and vmalert (the second rule engine the compiled
# rules are proven on), chromium (the status page's browser tests; Playwright drives it, it downloads no browser).
packages=()
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  packages+=(prometheus)
fi
if ! command -v amtool >/dev/null 2>&1 || ! command -v prometheus-alertmanager >/dev/null 2>&1; then
  packages+=(prometheus-alertmanager)
fi
if ! command -v vmalert >/dev/null 2>&1 || ! command -v victoria-metrics >/dev/null 2>&1; then
  packages+=(victoria-metrics)
fi
if ! command -v chromium >/dev/null 2>&1; then
  packages+=(chromium)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  echo "== installing Debian's ${packages[*]} (servers and tools the tests start)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

echo "== installing forge-slo with its test dependencies (and Chaos Toolkit)"
python3 -m pip install -q --disable-pip-version-check -e '.[test,chaos]'
if ! python3 -c 'import torch' 2>/dev/null; then
  # The training job needs torch; only a CPU build from this machine's disk, never a multi-GB CUDA download.
  wheel=$(ls /opt/wheels/torch-*+cpu-cp3*-*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$wheel" ]; then
    python3 -m pip install -q --disable-pip-version-check "$wheel"
  else
    echo "== no CPU torch wheel in /opt/wheels: the training tests and experiments will be skipped"
  fi
fi

echo "== ruff"
python3 -m ruff check forge_slo tests benchmarks
echo "== mypy (strict)"
python3 -m mypy
echo "== import-linter (layer contracts in pyproject.toml)"
# The console script beside this python3 (a virtualenv's bin/ need not be on PATH).
"$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/lint-imports" --no-cache
echo "== pytest"
# Two worker processes (FORGE_SLO_TEST_WORKERS to change; 0 runs in this process), each taking a whole test file
# at a time so a file's servers start once: most tests wait on servers, so two halve the time on two cores.
python3 -m pytest -n "${FORGE_SLO_TEST_WORKERS:-2}" --dist loadfile "$@"
