"""JSONL -> binidx in parallel: cut the file into spans, scan them in worker processes, write.

The parent only plans spans of whole lines; each worker reads its own span. At most 2 spans
per worker are in flight (bounded memory), and results are appended in file order to
temporary `.bin`, size and duplicate spools. Nothing is published here: `Staged` holds the
temp files until the caller knows the verdict.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from peftflow.dataset import tokenizer
from peftflow.dataset.binidx import BinIdxWriter
from peftflow.dataset.dedup import DuplicateSpool
from peftflow.dataset.quality import Measurements
from peftflow.dataset.reader import (
    CHUNK_BYTES,
    RECORD_RULES,
    ChunkResult,
    Hits,
    Span,
    plan_spans,
    scan_span,
)
from peftflow.errors import IntegrityError, ResourceError
from peftflow.progress import Progress, Rate
from peftflow.store import atomic


@dataclass(frozen=True)
class Options:
    text_field: str = "text"
    ctx_len: int | None = None  # documents longer than this are counted (no profile: None)
    workers: int = 1
    max_offenders: int = 10
    chunk_bytes: int = CHUNK_BYTES
    progress_every: float = 5.0


class Staged:
    """Output files under temporary names in their final folder; published or discarded."""

    def __init__(self, targets: list[Path]) -> None:
        self.targets = targets
        self.temps: list[Path] = []
        self.handles: list[BinaryIO] = []
        for target in targets:
            fd, tmp = tempfile.mkstemp(prefix=f"{atomic.TMP_PREFIX}{target.name}.",
                                       dir=target.parent)
            self.temps.append(Path(tmp))
            self.handles.append(os.fdopen(fd, "w+b"))

    def publish(self) -> None:
        """fsync and rename every temp file onto its target."""
        mode = 0o666 & ~_umask()
        for handle, tmp, target in zip(self.handles, self.temps, self.targets, strict=True):
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), mode)
            handle.close()
            os.replace(tmp, target)
        self.temps = []

    def discard(self) -> None:
        for handle in self.handles:
            handle.close()
        for tmp in self.temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.temps = []


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@dataclass(frozen=True)
class Result:
    measurements: Measurements
    data_sha256: str
    bytes: int
    seconds: float
    workers: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _worker_init() -> None:
    # Only the parent reacts to Ctrl-C/SIGTERM: it cancels the work, waits for the chunks in
    # flight and removes the temp files. Workers exit when it closes the pool (or dies).
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    tokenizer.fast()


def _start_pool(workers: int) -> ProcessPoolExecutor:
    """Start every worker now, with signals blocked: a signal arriving during fork() would
    otherwise run the parent's handler in the child, or be swallowed by at-fork hooks."""
    # fork: workers share the parent's tokenizer copy-on-write (ours: 0.15 s to build, a few
    # MB; the Rust fallback: 0.3 s, 210 MB) and its imports; the parent has started no
    # threads yet. Elsewhere spawn builds their own.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork":
        tokenizer.fast()
    context = multiprocessing.get_context(method)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init)
        pool.submit(int).result()  # fork-based pools start all workers on the first submit
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return pool


def _scanned(spans: Iterator[Span], opts: Options, workers: int) -> Iterator[ChunkResult]:
    """Scan results in file order, with at most 2 spans per worker in flight."""
    args = (opts.text_field, opts.ctx_len, opts.max_offenders)
    if workers <= 1:
        for span in spans:
            yield scan_span(span, *args)
        return
    with _start_pool(workers) as pool:
        pending: deque[Future[ChunkResult]] = deque()
        try:
            for span in spans:
                pending.append(pool.submit(scan_span, span, *args))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as exc:
            raise ResourceError(f"a tokeniser worker process died ({exc}); out of memory? "
                                "Retry with fewer --workers or more memory") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def effective_workers(requested: int, size: int, chunk_bytes: int) -> int:
    """Worker processes worth starting: none for a file of a few chunks."""
    return max(1, min(requested, math.ceil(size / chunk_bytes) // 2))


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def run(data_path: Path, data_sha256: str, bin_out: BinaryIO, idx_out: BinaryIO,
        opts: Options) -> Result:
    """Scan and tokenise a (verified) file, writing `.bin` and `.idx` to the given handles.

    The caller has just checked the file's sha256; a change of its size, mtime or inode
    during the run is an IntegrityError (re-hashing would cost a second full read)."""
    before = _identity(data_path)
    size = before[2]
    workers = effective_workers(opts.workers, size, opts.chunk_bytes)
    invalid = {rule: Hits() for rule in RECORD_RULES}
    over_ctx = Hits()
    records = done = 0
    shortest, longest, total = math.inf, 0, 0  # text tokens per document
    progress = Progress("prepare_dataset", every=opts.progress_every)
    pace = Rate(size)
    folder = Path(str(bin_out.name)).parent  # spools live beside the output, not in /tmp
    with tempfile.TemporaryFile(dir=folder) as sizes, tempfile.TemporaryFile(dir=folder) as hashes:
        writer = BinIdxWriter(bin_out, sizes)
        spool = DuplicateSpool(hashes)
        spans = plan_spans(str(data_path), size, opts.chunk_bytes)
        for res in _scanned(spans, opts, workers):
            res.shift(records)
            writer.add(res.tokens, res.sizes)
            spool.add(res.digests, res.lines)
            for rule, hits in res.invalid.items():
                invalid[rule].merge(hits, opts.max_offenders)
            over_ctx.merge(res.over_ctx, opts.max_offenders)
            records += res.records
            done += res.nbytes
            if res.sizes.size:
                shortest = min(shortest, int(res.sizes.min()) - 1)
                longest = max(longest, int(res.sizes.max()) - 1)
                total += int(res.sizes.sum()) - int(res.sizes.size)

            pace.update(done)

            def line(_: float, d: int = writer.documents, b: int = done) -> str:
                return (f"{d} documents, {b / 1e6:.1f}/{size / 1e6:.1f} MB, "
                        f"{(pace.per_second() or 0.0) / 1e6:.1f} MB/s, ETA {pace.eta()}")

            progress.maybe(line)
        if _identity(data_path) != before or done != size:
            raise IntegrityError(f"{data_path}: changed while it was being read; rerun once "
                                 "the file is stable")
        duplicates = spool.find(opts.max_offenders)
        writer.finish(idx_out)
    seconds = progress.elapsed()
    docs = writer.documents
    progress.maybe(lambda s: f"{docs} documents, {done / 1e6:.1f} MB in {s:.1f}s "
                   f"({done / 1e6 / max(s, 1e-9):.1f} MB/s, {workers} worker(s))", force=True)
    measurements = Measurements(
        records=records, documents=docs, tokens=writer.tokens, invalid=invalid,
        duplicates=duplicates, length_min=int(shortest) if docs else 0, length_max=longest,
        length_mean=total / docs if docs else 0.0, over_ctx=over_ctx,
    )
    return Result(measurements, data_sha256, size, seconds, workers)
