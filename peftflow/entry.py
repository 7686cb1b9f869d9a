"""How every entry point (the stages, the CLI, the smoke run) ends: a user error becomes its
exit code and one `error:` line, never a traceback; SIGTERM unwinds `finally` blocks."""

from __future__ import annotations

import errno
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from peftflow.errors import PeftflowError
from peftflow.exitcodes import ExitCode


class Interrupted(BaseException):
    """Raised in the main thread on SIGTERM so that `finally` blocks clean up temp files."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"terminated by signal {signum}")


def exit_code_for(exc: BaseException) -> ExitCode | None:
    """The code a known failure exits with; None for anything else (a bug: let it raise)."""
    if isinstance(exc, PeftflowError):
        return exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        return ExitCode.INTERRUPTED
    if isinstance(exc, MemoryError):
        return ExitCode.RESOURCE
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ExitCode.RESOURCE
    return None


def recorded_code(exc: BaseException) -> ExitCode:
    """The code a stage's failed status.json records: an unknown failure ends the process
    with a traceback and exit code 1, UNEXPECTED."""
    code = exit_code_for(exc)
    return ExitCode.UNEXPECTED if code is None else code


def _message(exc: BaseException) -> str:
    """The `error:` line of a failure that exit_code_for knows."""
    if isinstance(exc, PeftflowError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; lower micro_bsz/ctx_len or free memory"
    if isinstance(exc, OSError):  # ENOSPC or EDQUOT
        return f"no space left on device: {exc}"
    return f"interrupted ({exc or 'SIGINT'}); rerun to resume"


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a stage's main(argv); never show a traceback for a user error."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return main(argv)
    except BaseException as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        print(f"error: {_message(exc)}", file=sys.stderr, flush=True)
        return int(code)


def exit_with(main: Callable[[Sequence[str] | None], int]) -> None:
    sys.exit(run(main))
