"""Cron schedules of specs: valid, firing often enough, and the backlog a catchup would create.

Airflow's own cron parser (croniter) decides, so what validates here is what the scheduler runs.
"""

from __future__ import annotations

import datetime as dt

HORIZON_DAYS = 400  # a schedule that fires less than about yearly is a typo
MAX_CATCHUP_RUNS = 100  # one GPU: a larger backlog would queue for days


def is_valid(expr: str) -> bool:
    from croniter import croniter  # Airflow's own cron parser

    if expr.startswith("@"):
        return expr in {"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually",
                        "@midnight"}
    return len(expr.split()) == 5 and bool(croniter.is_valid(expr))


def fires_within(expr: str, days: int) -> dt.datetime | None:
    """The next fire time within `days` from now, or None (never, or too rarely)."""
    from croniter import CroniterBadDateError, croniter

    now = dt.datetime.now(dt.UTC)
    try:
        nxt = croniter(expr, now, max_years_between_matches=1 + days // 365).get_next(
            dt.datetime)
    except (CroniterBadDateError, ValueError, KeyError):
        return None
    return nxt if nxt - now <= dt.timedelta(days=days) else None


def runs_since(expr: str, start: str, stop_at: int) -> int:
    """How many times `expr` fired from `start` until now, counting at most `stop_at`."""
    from croniter import CroniterBadDateError, croniter

    now = dt.datetime.now(dt.UTC)
    it = croniter(expr, dt.datetime.fromisoformat(start).replace(tzinfo=dt.UTC))
    count = 0
    try:
        while count < stop_at and it.get_next(dt.datetime) <= now:
            count += 1
    except CroniterBadDateError:
        pass  # no further fire time: the count so far is the backlog
    return count
