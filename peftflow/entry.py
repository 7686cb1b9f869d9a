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
