"""Connection arguments for Airflow's SQLite metadata database (airflow.cfg imports them).

SQLite lets one writer in at a time; Python's default 5 s lock wait made the scheduler, the
api-server and the CLI fail with "database is locked" under a burst of triggers on the small
machines this project targets. Waiting longer is the right trade on a one-user workstation.
Airflow reads these through `[database] sql_alchemy_connect_args` (and `_async`).
"""

from __future__ import annotations

from typing import Any

LOCK_WAIT_S = 30.0

CONNECT_ARGS: dict[str, Any] = {"timeout": LOCK_WAIT_S}
ASYNC_CONNECT_ARGS: dict[str, Any] = {"timeout": LOCK_WAIT_S}
