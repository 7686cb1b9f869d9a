"""Airflow DAGs generated from the YAML specs in dag_specs/ (see peftflow.airflow.loader)."""

from pathlib import Path

from peftflow.airflow import loader

loader.load(Path(__file__).resolve().parents[1] / "dag_specs", globals())
