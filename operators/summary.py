"""RunSummaryOperator: the last task of every run, saying what the run did.

A teardown task: it runs after the run's other tasks whatever their outcome (success, a
blocked gate, a failure) and never decides the run's state, so a blocked or failed run stays
failed. Its log and the run's note (visible in the UI) list which stages ran and which were
reused (and from which run), the release version or the gate's reasons, the trigger note
and user. It never fails the run: a note that cannot be set is a warning in its log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context, TriggerRule


class RunSummaryOperator(BaseOperator):
    template_fields: Sequence[str] = ()
    ui_color = "#eef7ee"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE_SETUP_SUCCESS)
        super().__init__(**kwargs)
        self.is_teardown = True

    def execute(self, context: Context) -> dict[str, Any]:
        from peftflow.airflow import taskrun

        return taskrun.run_summary(self, context)
