"""The peftflow Airflow plugin; airflow.cfg's `plugins_folder` points here (setup writes it).

It adds one thing to the api-server: the trigger guard (peftflow.airflow.triggerguard), so that a
trigger conf that Airflow's per-param validation accepts but no peftflow run could use is
refused before a run exists. Loading it is cheap: the guard imports Airflow's API modules
only when a trigger request arrives.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from peftflow.airflow.triggerguard import TriggerConfGuard


class PeftflowPlugin(AirflowPlugin):
    name = "peftflow"
    fastapi_root_middlewares = [  # noqa: RUF012 (Airflow reads this class attribute)
        {"middleware": TriggerConfGuard, "name": "peftflow trigger guard"},
    ]
