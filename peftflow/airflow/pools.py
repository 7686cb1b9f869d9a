"""Pool `gpu` in the metadata DB: one slot per device of the inventory (spec/inventory.py).

The pool is the admission control (a task with pool_slots=N runs only while N slots are
free); the device lease decides which cards it gets. configs/pools.json keeps the pool's
description; its slot count is the inventory's, set by `peftflow devices sync-pool`, which
setup_airflow.sh runs every time, so a changed inventory resizes the pool.
"""

from __future__ import annotations

import json

from peftflow import settings
from peftflow.errors import ConfigError, ResourceError
from peftflow.spec.model import GPU_POOL


def pool_description() -> tuple[str, bool]:
    """configs/pools.json's description and include_deferred of pool gpu."""
    path = settings.get().project_root / "configs" / "pools.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))[GPU_POOL]
        return str(entry.get("description", "")), bool(entry.get("include_deferred", False))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: cannot read pool {GPU_POOL!r} ({exc}); restore it from "
                          "the repository") from None


def gpu_slots() -> int | None:
    """The slots of pool gpu, or None when it does not exist; ResourceError for a DB that
    cannot be read."""
    settings.use_project_airflow_home()
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with create_session() as session:
            pool = session.scalar(select(Pool).where(Pool.pool == GPU_POOL))
            return None if pool is None else int(pool.slots)
    except SQLAlchemyError as exc:
        raise ResourceError(f"cannot read the metadata DB of {settings.get().airflow_home} "
                            f"({type(exc).__name__})") from None


def sync_gpu_pool(slots: int) -> int | None:
    """Create pool gpu or set its slots; the slots it had before (None: it was created)."""
    before = gpu_slots()
    description, include_deferred = pool_description()
    from airflow.models.pool import Pool

    Pool.create_or_update_pool(GPU_POOL, slots, description, include_deferred=include_deferred)
    return before
