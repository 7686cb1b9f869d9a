"""Which process group runs a stage's folder, so that a retry never runs beside an orphan.

A stage runs in its own session (child.Child), so when the process that watches it dies
(task runner killed, worker or scheduler lost) the stage goes on. Airflow then retries the
task into the same folder, and two trainings would share the GPU and the output files. The
lease file names the running group; the next try stops that group before it starts its own.

A lease names a pid together with its start time (/proc/PID/stat, field 22), so a pid that
the kernel has since given to another program is never signalled.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from peftflow.child import stop_group
from peftflow.store import atomic

LEASE_FILE = ".stage.lease.json"


@dataclass(frozen=True)
class Lease:
    pid: int  # leader of the stage's process group (pgid == pid)
    start_ticks: int  # its start time in clock ticks since boot
    try_number: int


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, or None when the process is gone or /proc is
    missing. The command name (field 2) may hold spaces and parentheses: split after the last
    ')'."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time, or None when it is gone, a zombie, or /proc is missing."""
    fields = proc_stat(pid)
    if fields is None or len(fields) < 20 or fields[0] == "Z":
        return None
    return int(fields[19])


def write(out_dir: Path, pid: int, try_number: int) -> None:
    ticks = start_ticks(pid)
    if ticks is None:  # already gone (or no /proc): nothing a later try could stop
        return
    atomic.write_json(out_dir / LEASE_FILE, {"pid": pid, "start_ticks": ticks,
                                             "try_number": try_number})


def clear(out_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (out_dir / LEASE_FILE).unlink()


def _read(out_dir: Path) -> Lease | None:
    try:
        doc = json.loads((out_dir / LEASE_FILE).read_text(encoding="utf-8"))
        return Lease(int(doc["pid"]), int(doc["start_ticks"]), int(doc["try_number"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: treated as no lease (it is removed by the caller)


def _alive(lease: Lease) -> bool:
    return start_ticks(lease.pid) == lease.start_ticks


def reclaim(out_dir: Path, grace_s: float) -> Lease | None:
    """Stop the group an earlier try left running in `out_dir`; the lease it had, or None.

    With the one stop policy (child.stop_group): SIGTERM first (stages remove their temp files
    on it), SIGKILL after `grace_s`. Alive means the leader with the recorded start time."""
    lease = _read(out_dir)
    clear(out_dir)
    if lease is None or not _alive(lease):
        return None
    stop_group(lease.pid, grace_s, alive=lambda: _alive(lease))
    return lease
