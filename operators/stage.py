"""StageOperator: runs one shell stage of the adapter lifecycle and checks its contract.

Before: the inputs recorded by upstream stages still exist with the same sha256.
Skip: a verified earlier success with the same cache key is reused (recorded as reused).
Run: scripts/<stage>.sh as an argv list in its own process group, output into the task log;
     on_kill/timeout kills the whole group.
After: status.json is schema-valid, says success, and every output exists, is non-empty and
       matches its sha256; exit 0 without that fails the task.
Exit codes: permanent failures (bad config/data, integrity, policy) fail at once without
retries; resource failures and interruptions retry with the spec's policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, Context

if TYPE_CHECKING:
    from peftflow.child import Child


class StageOperator(BaseOperator):
    template_fields: Sequence[str] = ()
    ui_color = "#e8f0fe"

    def __init__(self, *, stage: str, spec_file: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.spec_file = spec_file
        self._child: Child | None = None  # the process group of this try, for on_kill

    def execute(self, context: Context) -> dict[str, Any]:
        from peftflow.airflow import taskrun

        return taskrun.run_stage(self, context)

    def adopt(self, child: Child | None) -> None:
        self._child = child

    def on_kill(self) -> None:
        if self._child is not None:
            self.log.warning("stopping the %s process group (pid %s)", self.stage,
                             self._child.pid)
            self._child.stop()
