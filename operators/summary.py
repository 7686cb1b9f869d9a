"""RunSummaryOperator: the last task of every run, saying what the run did.

A teardown task: it runs after the run's other tasks whatever their outcome (success, a
blocked gate, a failure) and never decides the run's state, so a blocked or failed run stays
failed. Its log and the run's note (visible in the UI) list which stages ran and which were
reused (and from which run), the release version or the gate's reasons, the trigger note
and user. Then it tells the spec's notification channels how the run ended (one message)
and, when tracking is on, logs the run to MLflow. It never fails the run: a note, a message or
a tracker that fails is a warning in its log (and an audit event).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context, TriggerRule


class RunSummaryOperator(BaseOperator):
    template_fields: Sequence[str] = ()
    ui_color = "#eef7ee"

    def __init__(self, *, spec_file: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE_SETUP_SUCCESS)
        super().__init__(**kwargs)
        self.spec_file = spec_file
        self.is_teardown = True

    def execute(self, context: Context) -> dict[str, Any]:
        from peftflow.airflow import runend

        return runend.run_summary(self, context)
