"""ReleaseGateOperator: the blocking gate between evaluation and release.

Reads the evaluation verdict and the dataset quality status of this run; passes only when
both pass. Otherwise it fails the run with the reasons (rule, threshold, measured value),
release_adapter does not run, and a blocked record is written. A trigger parameter can
override it only when the spec allows overrides, with a reason, and the override is audited.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context


class ReleaseGateOperator(BaseOperator):
    template_fields: Sequence[str] = ()
    ui_color = "#fde8e8"

    def __init__(self, *, spec_file: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec_file = spec_file

    def execute(self, context: Context) -> dict[str, Any]:
        from peftflow.airflow import taskrun

        return taskrun.run_gate(self, context)
