"""Running a stage script: argv list, own process group, output streamed line by line.

The one place that starts and stops child processes. The child gets its own session, so a
kill reaches the whole group (bash, python, and anything they started), never just bash.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TERM_GRACE_S = 10.0


@dataclass(frozen=True)
class Finished:
    returncode: int
    tail: tuple[str, ...]  # the last lines of output, for error messages


class Child:
    """A running stage process; stop() terminates its whole process group."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
        )
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, on_line: Callable[[str], None], keep: int = 40) -> Finished:
        tail: deque[str] = deque(maxlen=keep)
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            on_line(line)
        return Finished(self.proc.wait(), tuple(tail))

    def stop(self, grace_s: float = TERM_GRACE_S) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after the grace period."""
        with self._lock:
            if self.proc.poll() is not None:
                self._kill_group(signal.SIGKILL)  # stragglers of a finished leader
                return
            self._kill_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
            self._kill_group(signal.SIGKILL)

    def _kill_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
