"""Notifications declared in a spec's `notify:` section, sent through Airflow's notifiers."""
