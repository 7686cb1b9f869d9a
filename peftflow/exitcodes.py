"""Exit codes shared by every stage script, and what the operator does with each.

Permanent failures (bad configuration, bad data, integrity) fail the Airflow task at once
without burning retries; retryable ones (resources, interruption, unexpected errors) retry
with the spec's policy. The table is documented in README.md ("Exit codes").
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    UNEXPECTED = 1  # an unexpected error (a bug or an unknown failure): retryable
    BAD_CONFIG = 2  # bad arguments, profile, spec or suite: permanent
    MISSING_INPUT = 3  # a declared input does not exist: permanent
    BAD_DATA = 4  # the data breaks the dataset rules or cannot be parsed: permanent
    INTEGRITY = 5  # a hash, size or format does not match what was recorded: permanent
    POLICY = 6  # the orchestration profile forbids running this stage: permanent
    GATE_BLOCKED = 7  # the release gate refused the release: permanent
    RESOURCE = 75  # out of memory, GPU/driver failure, disk full (EX_TEMPFAIL): retryable
    INTERRUPTED = 130  # killed by a signal (SIGINT/SIGTERM): retryable

    @property
    def retryable(self) -> bool:
        return self in RETRYABLE


RETRYABLE = frozenset({ExitCode.UNEXPECTED, ExitCode.RESOURCE, ExitCode.INTERRUPTED})


def classify(returncode: int) -> ExitCode:
    """Map a child's return code (negative = killed by a signal) onto an ExitCode."""
    if returncode < 0 or returncode in (137, 143, 130):
        return ExitCode.INTERRUPTED
    try:
        return ExitCode(returncode)
    except ValueError:
        return ExitCode.UNEXPECTED
