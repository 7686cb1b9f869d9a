"""What every stage entry point shares: error-to-exit-code mapping, signals, progress lines."""

from __future__ import annotations

import errno
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

from peftflow.errors import PeftflowError
from peftflow.exitcodes import ExitCode


class Interrupted(BaseException):
    """Raised in the main thread on SIGTERM so that `finally` blocks clean up temp files."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"terminated by signal {signum}")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a stage's main(argv); never show a traceback for a user error."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return main(argv)
    except PeftflowError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return int(exc.exit_code)
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"error: interrupted ({exc or 'SIGINT'}); rerun to resume", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except MemoryError:
        print("error: out of memory; lower micro_bsz/ctx_len or free memory", file=sys.stderr)
        return int(ExitCode.RESOURCE)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: no space left on device: {exc}", file=sys.stderr)
            return int(ExitCode.RESOURCE)
        raise


def exit_with(main: Callable[[Sequence[str] | None], int]) -> None:
    sys.exit(run(main))


class Progress:
    """Prints one progress line at most every `every` seconds (and always on finish)."""

    def __init__(self, label: str, every: float = 5.0, stream=None) -> None:  # type: ignore[no-untyped-def]
        self.label = label
        self.every = every
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self._last = self.t0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def maybe(self, render: Callable[[float], str], force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            print(f"[{self.label}] {render(now - self.t0)}", file=self.stream, flush=True)


def eta(done: float, total: float, elapsed: float) -> str:
    if done <= 0 or total <= 0:
        return "?"
    remaining = elapsed * (total - done) / done
    return f"{remaining:.0f}s"
