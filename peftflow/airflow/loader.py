"""Turns dag_specs/ into Airflow DAGs; called by the thin file in dags/.

Policy for broken specs: a spec that fails validation never hides the other DAGs and is
never silent. It becomes a clearly marked placeholder DAG `invalid_spec__<file>` (tag
`invalid-spec`, paused, its problems, the same lines `peftflow validate` prints, in the
description and docs; triggering it fails with them), and the problems are logged by the
dag-processor. Every valid spec still becomes its DAG. Not an import error on purpose: Airflow
3 marks every DAG of a file with an import error stale, which would stop the valid ones too.
An import error is used only when no training DAG may exist at all (mlops-lite active, or an
unreadable orchestration config).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pendulum

from peftflow.airflow import edge, expand
from peftflow.errors import PeftflowError, Problem, SpecError
from peftflow.run import stages
from peftflow.spec import cache as speccache
from peftflow.spec import orchestration, validate
from peftflow.spec.model import GPU_POOL
from peftflow.store import paths

log = logging.getLogger("peftflow.airflow.loader")

REPORT_DAG_ID = "peftflow_not_loaded"
INVALID_PREFIX = validate.RESERVED_PREFIXES[0]  # specs may not take these ids
assert REPORT_DAG_ID in validate.RESERVED_IDS


def _dag_class() -> type:
    from airflow.sdk import DAG

    class InvalidSpecsReport(DAG):
        """Never bagged: validate() raises, which Airflow records as this file's import error."""

        peftflow_problems: list[Problem]

        def validate(self) -> None:
            raise SpecError(self.peftflow_problems)

    return InvalidSpecsReport


def _report(problems: list[Problem]) -> Any:
    report = _dag_class()(dag_id=REPORT_DAG_ID, schedule=None)
    report.peftflow_problems = problems
    return report


def _build(config: dict[str, Any], globals_dict: MutableMapping[str, Any]) -> None:
    """Hand one expanded config to dag-factory's DagBuilder and register the DAG.

    We call DagBuilder rather than load_yaml_dags(config_dict=...): the latter dumps every
    config through PyYAML's pure-Python emitter for the DAG docs (about 20 ms per DAG, most of
    the parse time at 100 specs). We pass the same config as JSON (valid YAML, C-encoded).
    """
    with warnings.catch_warnings():
        # dag-factory imports deprecated Airflow 2 paths; that noise is not ours to fix.
        warnings.simplefilter("ignore")
        from dagfactory.dagbuilder import DagBuilder
        from dagfactory.utils import cast_with_type
    for dag_id, plain in config.items():
        dag_config = cast_with_type(plain)
        dag_config["task_groups"] = {}
        doc = json.dumps(config, indent=1)
        built = DagBuilder(dag_id, dag_config, {}, yml_dag=doc).build()
        globals_dict[built["dag_id"]] = built["dag"]


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
    result = validate.validate_paths([spec_dir], cache=speccache.default())
    problems = result.problems
    built: list[str] = []
    on_edge = edge.enabled()  # the deployment's executor decides where GPU stages run
    for spec in result.specs:
        shown = paths.display_path(spec.path)
        try:
            _build(expand.dag_config(spec, edge=on_edge), globals_dict)
        except Exception as exc:  # a bug in expansion must not hide the other DAGs
            problems.append(Problem(shown, 1, 1, "$",
                                    f"could not build the DAG: {type(exc).__name__}: {exc}"))
            log.exception("building DAG %s failed", spec.dag_id)
            continue
        outside = _gpu_tasks_outside_pool(globals_dict.get(spec.dag_id))
        if outside:
            globals_dict.pop(spec.dag_id, None)
            problems.append(Problem(shown, 1, 1, "$", f"refused: GPU task(s) {outside} would "
                                    f"run outside pool '{GPU_POOL}', where two runs could share "
                                    "one GPU; GPU stages must use pool gpu"))
            continue
        built.append(spec.dag_id)
    by_file: dict[str, list[Problem]] = {}
    for problem in problems:
        log.error("invalid spec: %s", problem)
        by_file.setdefault(problem.file, []).append(problem)
    for file, found in by_file.items():
        placeholder = _invalid_spec_dag(file, found, set(globals_dict))
        globals_dict[placeholder.dag_id] = placeholder
    return built


def _invalid_spec_dag(file: str, problems: list[Problem], taken: set[str]) -> Any:
    from airflow.sdk import DAG

    from operators.invalid_spec import InvalidSpecOperator

    stem = re.sub(r"[^a-z0-9_]", "_", Path(file).stem.lower()) or "spec"
    dag_id, n = f"{INVALID_PREFIX}{stem}", 1
    while dag_id in taken:
        n += 1
        dag_id = f"{INVALID_PREFIX}{stem}_{n}"
    text = "\n".join(str(p) for p in problems)
    # a fence longer than any backtick run in the text: a message cannot close it early
    fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    heading = file.replace("`", "'")
    dag = DAG(
        dag_id=dag_id,
        dag_display_name=f"INVALID SPEC {file}",
        description=f"INVALID SPEC {file}: {problems[0].path}: {problems[0].message}"[:1000],
        doc_md=(f"# Invalid spec `{heading}`\n\nNo training DAG was built from this file. "
                f"Fix these problems (`peftflow validate` prints the same):\n\n{fence}\n"
                f"{text}\n{fence}\n"),
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        is_paused_upon_creation=True,
        tags=["peftflow", "invalid-spec"],
    )
    InvalidSpecOperator(task_id="spec_problems", spec_file=file, problems=text, retries=0,
                        dag=dag)
    return dag


def _gpu_tasks_outside_pool(dag: Any) -> list[str]:
    if dag is None:
        return []
    return sorted(name for name in stages.gpu_names()
                  if getattr(dag.task_dict.get(name), "pool", None) != GPU_POOL)


def _as_problems(exc: PeftflowError, file: str) -> list[Problem]:
    if isinstance(exc, SpecError):
        return exc.problems
    return [Problem(file, 1, 1, "$", str(exc))]
