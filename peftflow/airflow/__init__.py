"""Everything that talks to Airflow: the DAG loader, the task runner behind the operators,
the REST client, the generated airflow.cfg and services, triggers and their guard, run
summaries."""
