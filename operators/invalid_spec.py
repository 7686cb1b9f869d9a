"""InvalidSpecOperator: the one task of the placeholder DAG that stands for a broken spec.

Airflow 3 marks every DAG of a file stale once that file has an import error, so a broken spec
must not become an import error of the loader file (it would stop all the valid DAGs). It
becomes a clearly marked DAG instead (tag `invalid-spec`, its problems in the description and
docs); triggering it fails at once with the same lines `peftflow validate` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator


class InvalidSpecOperator(BaseOperator):
    template_fields: Sequence[str] = ()
    ui_color = "#f8d7da"

    def __init__(self, *, spec_file: str, problems: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec_file = spec_file
        self.problems = problems

    def execute(self, context: Any) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            f"{self.spec_file} is not a valid spec, so no training DAG was built from it:\n"
            f"{self.problems}\nFix the file (run `peftflow validate`); this DAG disappears "
            "once the spec is valid."
        )
