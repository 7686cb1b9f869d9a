"""Running a child process: argv list, output streamed line by line, stopped with one grace policy.

The one place that runs and stops the processes of a task: the stage script (the task runner
gives it its own session, so a kill reaches the whole group: bash, python, and anything they
started, never just bash) and what a stage runs itself (RWKV-PEFT's train.py, which stays in
the stage's group so that a stop of the stage's group reaches it too). The Airflow services
are started detached by airflow/services.py, but stopped here, with stop_group().
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# The grace policy, stated once: SIGTERM first, SIGKILL after the grace. RWKV-PEFT's train.py
# needs the most time, to write the checkpoint it is on: CHILD_GRACE_S. The stage that runs it
# passes SIGTERM on with that grace and then still writes its status.json, so whoever stops a
# stage (the task runner, a retry reclaiming an orphan) waits TERM_GRACE_S, a margin longer:
# train.py is in the stage's group, and a SIGKILL from outside must never land inside its grace.
# Every other stop (the Airflow services) uses TERM_GRACE_S too.
CHILD_GRACE_S = 30.0
TERM_GRACE_S = CHILD_GRACE_S + 10.0
POLL_S = 0.05
KILL_WAIT_S = 5.0  # after SIGKILL: how long to wait for the kernel to take the process away
DRAIN_S = 10.0  # after the child exits: how long to read output its leftovers still hold open


# File descriptors every child of this process keeps open: the device locks of a GPU stage
# (run/device_lease.py). A lock lives as long as any process holds its descriptor, so a child
# that outlives the stage (train.py after a kill -9 of the stage alone) still holds its GPUs.
_KEPT_FDS: set[int] = set()


def keep_open(fd: int) -> None:
    _KEPT_FDS.add(fd)


def forget(fd: int) -> None:
    _KEPT_FDS.discard(fd)


@dataclass(frozen=True)
class Finished:
    returncode: int
    tail: tuple[str, ...]  # the last lines of output, for error messages


def stop_group(pgid: int, grace_s: float = TERM_GRACE_S,
               alive: Callable[[], bool] | None = None) -> bool:
    """SIGTERM process group `pgid`, wait up to `grace_s` until `alive()` is false (default:
    no member is left), then SIGKILL whatever is left; True when it stopped within the grace."""
    still_there = alive or (lambda: _group_alive(pgid))
    _signal_group(pgid, signal.SIGTERM)
    in_time = _wait_gone(still_there, grace_s)
    _signal_group(pgid, signal.SIGKILL)  # what a leader that exited in time left behind
    if not in_time:
        _wait_gone(still_there, KILL_WAIT_S)
    return in_time


def _stop_one(proc: subprocess.Popen[str], grace_s: float) -> bool:
    """The same for one process: SIGTERM, wait up to `grace_s`, SIGKILL; True when in time."""
    _signal(proc, signal.SIGTERM)
    if _wait_gone(lambda: proc.poll() is None, grace_s):
        return True
    _signal(proc, signal.SIGKILL)
    _wait_gone(lambda: proc.poll() is None, KILL_WAIT_S)
    return False


def _signal(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)  # does nothing once the child is reaped: no pid reuse


def _wait_gone(alive: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds the group: it exists
    return True


def _group_alive(pgid: int) -> bool:
    # A leader this process started stays a zombie until reaped, and a zombie still answers
    # killpg(0): reap it, or every stop would wait out the whole grace period.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    return _group_exists(pgid)


class Child:
    """A running child; stop() terminates it (its whole process group when it leads one).

    own_group=False keeps the child in the caller's process group: for a stage's own child, so
    that whoever stops the stage's group stops it too and an orphan cannot outlive the stage.
    env=None passes the caller's environment on.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None, cwd: Path, *,
                 own_group: bool = True) -> None:
        self.own_group = own_group
        self.proc = subprocess.Popen(
            list(argv), env=None if env is None else dict(env), cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=own_group, text=True, encoding="utf-8", errors="replace",
            bufsize=1, pass_fds=tuple(sorted(_KEPT_FDS)),
        )
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, on_line: Callable[[str], None], keep: int = 40,
             on_tick: Callable[[], None] | None = None, tick_s: float = 5.0) -> Finished:
        """Pass each output line, in order, to on_line until the output ends; the exit status.

        With on_tick, a helper thread reads the pipe and on_tick runs every tick_s seconds;
        on_line and on_tick both run in the calling thread, so an exception from either, or
        one a signal handler raises there (SIGTERM), reaches the caller, who calls stop().
        """
        tail: deque[str] = deque(maxlen=keep)
        if on_tick is None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.rstrip("\n")
                tail.append(line)
                on_line(line)
        else:
            self._pump_ticking(on_line, tail, on_tick, tick_s)
        return Finished(self.proc.wait(), tuple(tail))

    def _pump_ticking(self, on_line: Callable[[str], None], tail: deque[str],
                      on_tick: Callable[[], None], tick_s: float) -> None:
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        next_tick = time.monotonic() + tick_s
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if now >= next_tick:
                on_tick()
                next_tick = now + tick_s
            if exited_at is None and self.proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_S:
                break  # something the child started holds its output open: not ours to wait on
            try:
                line = lines.get(timeout=max(0.0, min(next_tick - now, 1.0)))
            except queue.Empty:
                continue
            if line is None:
                break
            tail.append(line)
            on_line(line)
        on_tick()  # the state at the end (the last steps' progress)

    def _read(self, lines: queue.Queue[str | None]) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                lines.put(raw.rstrip("\n"))
        finally:
            lines.put(None)

    def stop(self, grace_s: float = TERM_GRACE_S) -> bool:
        """SIGTERM, then SIGKILL whatever is left after the grace period; True when the child
        exited within the grace. A group leader's whole group is signalled, and what it leaves
        behind when it exits is killed at once."""
        with self._lock:
            if self.proc.poll() is not None:
                if self.own_group:
                    _signal_group(self.pid, signal.SIGKILL)  # stragglers of a finished leader
                return True
            if self.own_group:
                # poll() reaps the leader through Popen, which keeps its return code
                return stop_group(self.pid, grace_s, alive=lambda: self.proc.poll() is None)
            return _stop_one(self.proc, grace_s)
