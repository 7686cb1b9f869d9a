"""The stage lease: a retry stops the process group an earlier try left running, and only it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from peftflow.run import lease

# A leader that starts a grandchild in its group, prints the grandchild's pid, then waits.
TREE = ("import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "print(c.pid, flush=True); time.sleep(120)")


def _group() -> tuple[subprocess.Popen[str], int]:
    leader = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert leader.stdout is not None
    return leader, int(leader.stdout.readline())


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while lease.start_ticks(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_reclaim_stops_the_leader_and_its_grandchildren(tmp_path: Path) -> None:
    leader, grandchild = _group()
    try:
        lease.write(tmp_path, leader.pid, try_number=1)
        stopped = lease.reclaim(tmp_path, grace_s=5)
        assert stopped is not None and stopped.pid == leader.pid and stopped.try_number == 1
        assert leader.wait(timeout=10) < 0  # died of a signal
        assert _gone(grandchild)
        assert not (tmp_path / lease.LEASE_FILE).exists()
    finally:
        leader.kill()


def test_a_leader_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ready"
        lease.write(tmp_path, stubborn.pid, try_number=2)
        t0 = time.monotonic()
        assert lease.reclaim(tmp_path, grace_s=0.5) is not None
        assert stubborn.wait(timeout=10) == -9 and time.monotonic() - t0 >= 0.5
    finally:
        stubborn.kill()


def test_a_pid_now_owned_by_another_program_is_left_alone(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             start_new_session=True)
    try:
        ticks = lease.start_ticks(other.pid)
        assert ticks is not None
        (tmp_path / lease.LEASE_FILE).write_text(
            f'{{"pid": {other.pid}, "start_ticks": {ticks - 1}, "try_number": 1}}')
        assert lease.reclaim(tmp_path, grace_s=1) is None
        assert other.poll() is None
        assert not (tmp_path / lease.LEASE_FILE).exists()
    finally:
        other.kill()
        other.wait()


def test_no_lease_or_an_unreadable_one_stops_nothing(tmp_path: Path) -> None:
    assert lease.reclaim(tmp_path, grace_s=1) is None
    (tmp_path / lease.LEASE_FILE).write_text("{not json")
    assert lease.reclaim(tmp_path, grace_s=1) is None
    assert not (tmp_path / lease.LEASE_FILE).exists()
