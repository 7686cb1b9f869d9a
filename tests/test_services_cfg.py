"""The airflow.cfg that setup writes, as Airflow itself reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEFTFLOW = Path(sys.executable).with_name("peftflow")


def _configure(home: Path, *args: str) -> str:
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    env.pop("PEFTFLOW_DB_URL", None)
    subprocess.run([str(PEFTFLOW), "services", "configure", *args], env=env, check=True,
                   capture_output=True, cwd=ROOT)
    return (home / "airflow.cfg").read_text(encoding="utf-8")


def test_sqlite_deployments_wait_30_seconds_for_a_database_lock(tmp_path: Path) -> None:
    _configure(tmp_path)
    # The function Airflow's settings.configure_orm() takes its connect arguments from.
    probe = ("from airflow import settings; "
             "print(settings._get_connect_args('sync'), settings._get_connect_args('async'))")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    for key in [k for k in env if k.startswith("AIRFLOW__")]:
        del env[key]
    out = subprocess.run([sys.executable, "-c", probe], env=env, check=True,
                         capture_output=True, text=True).stdout
    sync, _, async_ = out.strip().partition("} ")
    assert "'timeout': 30.0" in sync and async_ == "{'timeout': 30.0}", out


def test_postgresql_deployments_get_no_sqlite_arguments(tmp_path: Path) -> None:
    cfg = _configure(tmp_path, "--db", "postgresql+psycopg2://u@127.0.0.1:5999/airflow")
    assert "sql_alchemy_conn = postgresql+psycopg2://u@127.0.0.1:5999/airflow" in cfg
    assert "sql_alchemy_connect_args" not in cfg
