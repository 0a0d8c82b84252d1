"""One exception tree for the whole project.

The CLI maps :class:`ForgeError` subclasses to exit codes and prints their message; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class ForgeError(Exception):
    """Base of every error forge-slo reports to a user."""

    exit_code = 1


class SpecError(ForgeError):
    """A spec file is wrong: carries the file, the line where known, the field path and the reason."""

    exit_code = 2

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None, field: str = "") -> None:
        self.reason = reason
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.render())

    def render(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.reason}"


class SpecErrors(ForgeError):
    """Several spec errors found in one run (one per document at most)."""

    exit_code = 2

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        super().__init__("\n".join(e.render() for e in errors))


class UsageError(ForgeError):
    """A command-line flag or argument is wrong."""

    exit_code = 2


class SourceError(ForgeError):
    """A data source (Prometheus, a records file) could not be read."""

    exit_code = 3


class RunnerError(ForgeError):
    """A runner (simulator, load, canary, chaos) could not do its job."""

    exit_code = 1
