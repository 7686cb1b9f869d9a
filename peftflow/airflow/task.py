"""What the task logic may use of an operator: typed, so the run path is checked end to end.

The operators (operators/) are thin: they hand themselves to peftflow.airflow.taskrun as one
of these protocols. The stage operator owns the child process of its try (`adopt`), so that
Airflow's `on_kill` stops exactly that process group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from peftflow.child import Child


class TaskLog(Protocol):
    """The part of the task logger we use (Airflow's is structlog-like, logging's fits too)."""

    def info(self, event: str, /, *args: object) -> object: ...

    def warning(self, event: str, /, *args: object) -> object: ...


class LoggingTask(Protocol):
    @property
    def log(self) -> TaskLog: ...


class GateTask(LoggingTask, Protocol):
    spec_file: str


class StageTask(GateTask, Protocol):
    stage: str

    def adopt(self, child: Child | None) -> None:
        """Own `child` (None: the child has finished) for on_kill."""
