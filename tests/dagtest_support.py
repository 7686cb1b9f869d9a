"""Helpers for the tests that run whole DAGs with dag.test().

A plain module rather than conftest.py: tests/live has its own conftest.py, and whichever
conftest pytest imports last owns the module name `conftest`, so importing from it is fragile.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def make_dag_bundle(root: Path, specs: dict[str, str], bundle: str) -> pytest.MonkeyPatch:
    """A DAG folder (the loader file + `specs`, name -> YAML text) that dag.test() can use.

    dag.test() serialises the DAG from its configured bundle, so this folder becomes the only
    bundle; undo the returned patch to restore the configuration.
    """
    (root / "dags").mkdir()
    (root / "dag_specs").mkdir()
    shutil.copy(ROOT / "dags" / "peftflow_dags.py", root / "dags")
    for name, text in specs.items():
        (root / "dag_specs" / name).write_text(text)
    patch = pytest.MonkeyPatch()
    patch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([{
        "name": bundle, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
        "kwargs": {"path": str(root / "dags"), "refresh_interval": 0}}]))
    return patch


def run_dag_test(dag_folder: Path, bundle: str, dag_id: str, conf: dict[str, object]) -> object:
    """dag.test(logical_date=None) of one DAG of a bundle made by make_dag_bundle."""
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(str(dag_folder), bundle_path=str(dag_folder), bundle_name=bundle)
    assert bag.import_errors == {}
    return bag.dags[dag_id].test(logical_date=None, run_conf=conf)


def task_context(task_id: str, dag_id: str, run_id: str = "manual__1",
                 params: dict[str, Any] | None = None, try_number: int = 1) -> dict[str, Any]:
    """A stand-in for the Airflow task context, with what StageOperator reads from it."""
    ti = SimpleNamespace(task_id=task_id, try_number=try_number,
                         xcom_pull=lambda task_ids: None)
    dag_run = SimpleNamespace(dag_id=dag_id, run_id=run_id, run_type="manual",
                              triggering_user_name="tester")
    return {"ti": ti, "dag_run": dag_run, "params": params or {}, "triggering_asset_events": {}}
