"""Experiments' ``configuration`` as Chaos Toolkit loads it, and ``${name}`` substitution, through chaoslib.

chaoslib's loader reads ``os.environ``. A game day resolves with the environment its ``chaos run`` children
get (the game-day file's ``env`` and ``--env`` over its own), which it must not write into its own
environment (other threads read it), so the loader runs in a short child process:
``python -m forge_slo.chaos.configuration`` reads a JSON list of ``configuration`` mappings on stdin and
writes, for each, ``{"configuration": {...}}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from forge_slo.errors import RunnerError
from forge_slo.runtime.process import child_env, python_module

TIMEOUT_S = 60.0


def substitute(value: Any, configuration: Mapping[str, Any]) -> Any:
    """``value`` with ``${name}`` replaced from ``configuration``, as Chaos Toolkit does to activities."""
    chaoslib: Any = importlib.import_module("chaoslib")  # untyped: Any
    return chaoslib.substitute(value, dict(configuration), None)


def resolve(configurations: Sequence[Mapping[str, Any]], env: Mapping[str, str]) -> list[dict[str, Any] | str]:
    """Each configuration loaded by chaoslib in environment ``env``: a mapping, or the reason it cannot load
    (e.g. an ``env`` entry without a default whose variable is unset)."""
    if not configurations:
        return []
    payload = json.dumps([dict(c) for c in configurations], default=str)
    try:
        proc = subprocess.run(python_module(__name__), input=payload, capture_output=True, text=True,
                              env=child_env(base=env), timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise RunnerError(f"loading the experiments' configuration took over {TIMEOUT_S:g}s") from None
    try:
        answers = json.loads(proc.stdout)
    except ValueError:
        raise RunnerError(f"loading the experiments' configuration failed (exit {proc.returncode}):\n"
                          f"{proc.stderr[-2000:]}") from None
    return [a["configuration"] if "configuration" in a else str(a["error"]) for a in answers]


def _load_each(configurations: list[Any]) -> list[dict[str, Any]]:
    loader: Any = importlib.import_module("chaoslib.configuration")
    exceptions: Any = importlib.import_module("chaoslib.exceptions")
    answers: list[dict[str, Any]] = []
    for config in configurations:
        try:
            answers.append({"configuration": loader.load_configuration(config if isinstance(config, dict) else {})})
        # InvalidExperiment (an unset variable without a default), or a malformed entry
        except (exceptions.ChaosException, KeyError, TypeError, ValueError) as exc:
            answers.append({"error": str(exc) or type(exc).__name__})
    return answers


def main() -> int:
    json.dump(_load_each(json.load(sys.stdin)), sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
