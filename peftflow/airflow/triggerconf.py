"""The trigger-conf rules that Airflow's own param validation cannot express.

Airflow 3.3 validates each declared param against its own schema and merges undeclared conf
keys unvalidated (`SerializedParamsDict.deep_merge`), so a typo such as `force-rerun` is
ignored silently and no schema can say "override_gate needs override_reason". The same rules
run in two places: the api-server's trigger guard (before a run exists) and the first task of
a run (for runs made by paths the guard does not see, such as the local `airflow dags trigger`).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

OVERRIDE = "override_gate"
REASON = "override_reason"


def conf_problems(dag_id: str, declared: Collection[str], conf: Mapping[str, Any]) -> list[str]:
    """Each problem as a sentence that says how to fix it; empty when the conf is acceptable."""
    problems: list[str] = []
    unknown = sorted(str(key) for key in conf if key not in declared)
    if unknown:
        hints = [f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)
                 for key in unknown
                 for close in [difflib.get_close_matches(key, list(declared), n=1)]]
        problems.append(f"unknown trigger param(s) {', '.join(hints)}; {dag_id} accepts "
                        f"{', '.join(declared)}: fix the conf and trigger again")
    if conf.get(OVERRIDE) is True and not str(conf.get(REASON) or "").strip():
        problems.append(f"{OVERRIDE} is set without an {REASON}; say why the gate is "
                        "overridden (it is audited) and trigger again")
    return problems
