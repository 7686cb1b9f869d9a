"""Turns dag_specs/ into Airflow DAGs; called by the thin file in dags/.

Policy for broken specs: a spec that fails validation never hides the other DAGs and is
never silent. Its problems (the same lines `peftflow validate` prints) become an Airflow
import error of the loader file, visible in the UI and in `airflow dags list-import-errors`,
and are logged by the dag-processor; every valid spec still becomes its DAG.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from peftflow import expand, orchestration, validate
from peftflow.errors import PeftflowError, Problem, SpecError

log = logging.getLogger("peftflow.loader")

REPORT_DAG_ID = "peftflow_invalid_specs"


def _dag_class() -> type:
    from airflow.sdk import DAG

    class InvalidSpecsReport(DAG):  # type: ignore[misc]
        """Never bagged: its validate() raises, which Airflow records as this file's import error."""

        def validate(self) -> None:
            raise SpecError(self.peftflow_problems)

    return InvalidSpecsReport


def _report(problems: list[Problem]) -> Any:
    report = _dag_class()(dag_id=REPORT_DAG_ID, schedule=None)
    report.peftflow_problems = problems
    return report


def _build(config: dict[str, Any], globals_dict: MutableMapping[str, Any]) -> None:
    with warnings.catch_warnings():
        # dag-factory imports deprecated Airflow 2 paths; that noise is not ours to fix.
        warnings.simplefilter("ignore")
        from dagfactory import load_yaml_dags
        from dagfactory.utils import cast_with_type
    load_yaml_dags(globals_dict, config_dict=cast_with_type(config),  # type: ignore[arg-type]
                   defaults_config_dict={"default_args": {}})


def load(spec_dir: Path, globals_dict: MutableMapping[str, Any]) -> list[str]:
    """Build one DAG per valid spec into globals_dict; returns the DAG ids built."""
    try:
        active = orchestration.load().active
    except PeftflowError as exc:
        globals_dict["peftflow_report"] = _report(_as_problems(exc, "configs/orchestration.yaml"))
        return []
    if active is not orchestration.OrchestrationProfile.AIRFLOW:
        problem = Problem("configs/orchestration.yaml", 1, 1, "$.active_profile",
                          f"the active orchestration profile is {active.value!r}: Airflow "
                          "registers no training DAGs (only one profile may run training); "
                          "switch with `./setup_airflow.sh --switch-profile airflow`")
        log.warning("%s", problem)
        globals_dict["peftflow_report"] = _report([problem])
        return []
    result = validate.validate_paths([spec_dir])
    problems = result.problems
    built: list[str] = []
    for spec in result.specs:
        try:
            _build(expand.dag_config(spec), globals_dict)
        except Exception as exc:  # a bug in expansion must not hide the other DAGs
            problems.append(Problem(validate.display_path(spec.path), 1, 1, "$",
                                    f"could not build the DAG: {type(exc).__name__}: {exc}"))
            log.exception("building DAG %s failed", spec.dag_id)
            continue
        built.append(spec.dag_id)
    if problems:
        for problem in problems:
            log.error("invalid spec: %s", problem)
        globals_dict["peftflow_report"] = _report(problems)
    return built


def _as_problems(exc: PeftflowError, file: str) -> list[Problem]:
    if isinstance(exc, SpecError):
        return exc.problems
    return [Problem(file, 1, 1, "$", str(exc))]
