"""The one exception hierarchy of peftflow.

Every error a user can cause is a PeftflowError; its message says what is wrong and how to
fix it, and its exit_code tells the operator whether a retry can help.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftflow.exitcodes import ExitCode


class PeftflowError(Exception):
    """Base of every error peftflow raises on purpose."""

    exit_code: ExitCode = ExitCode.UNEXPECTED


class ConfigError(PeftflowError, ValueError):
    """A profile, spec, suite or argument is wrong."""

    exit_code = ExitCode.BAD_CONFIG


class MissingInputError(PeftflowError, FileNotFoundError):
    """A declared input file does not exist."""

    exit_code = ExitCode.MISSING_INPUT


class DataError(PeftflowError, ValueError):
    """The data itself is unusable (malformed records, too few documents, ...)."""

    exit_code = ExitCode.BAD_DATA


class IntegrityError(PeftflowError, ValueError):
    """A file does not match the hash, size or format recorded for it."""

    exit_code = ExitCode.INTEGRITY


class PolicyError(PeftflowError):
    """The active orchestration profile forbids this action."""

    exit_code = ExitCode.POLICY


class GateBlocked(PeftflowError):
    """The release gate refused a release; the message lists the failed rules."""

    exit_code = ExitCode.GATE_BLOCKED


class ResourceError(PeftflowError):
    """Out of memory, disk full, GPU or driver failure: worth a retry."""

    exit_code = ExitCode.RESOURCE


@dataclass(frozen=True)
class Problem:
    """One validation problem, printed as FILE:LINE:COL: $.path: message."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.path}: {self.message}"


class SpecError(ConfigError):
    """One or more validation problems in a spec, profile, suite or manifest."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
