"""prepare_dataset: a registered JSONL version -> RWKV binidx + quality.json + status.json.

Order of events, and what each failure leaves behind:
1. arguments, manifest and profile are read; --out is refused (exit 2) when it is a device
   or a file, lies under /proc or /sys, or is or holds an input (data, manifest, profile)
   that its outputs or their cleanup would replace or delete; the data file is checked
   against the manifest (size + sha256). Any failure here writes nothing, except that an
   earlier run's status.json saying success is rewritten as failed (no stage may trust it).
2. --out is created and must be writable (exit 2 otherwise); status.json, stale temp files
   and the previous run's outputs are removed, then the file is streamed, checked and
   tokenised into temp files (a failure or signal removes them).
3. quality.json is written; on a fail verdict (or warn with --no-allow-warn) status.json says
   failed, no .bin/.idx exist, exit 4. Otherwise .bin/.idx are renamed into place and
   status.json (success) is written last: a later stage trusts only what it lists.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftflow import entry
from peftflow.dataset import pipeline, tokenizer
from peftflow.dataset.defaults import DEFAULT_MAX_DUPLICATE_FRACTION
from peftflow.dataset.manifest import Manifest, load_manifest
from peftflow.dataset.quality import (
    ProfileLimits,
    Report,
    Thresholds,
    evaluate,
)
from peftflow.errors import ConfigError, DataError, PeftflowError
from peftflow.outcome import Outcome
from peftflow.store import atomic, schemas
from peftflow.store.status_record import FileRef, StageRecorder, utc_now

STAGE = "prepare_dataset"
PREFIX = "train_text_document"  # json2binidx's naming: <prefix>.bin / <prefix>.idx
QUALITY_FILE = "quality.json"
STATUS_FILE = "status.json"
OUTPUTS = (STATUS_FILE, f"{PREFIX}.bin", f"{PREFIX}.idx", QUALITY_FILE)  # status.json first
PSEUDO_FS = (Path("/proc"), Path("/sys"))  # devices elsewhere are refused by their file type


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_dataset.sh",
        description="Check a registered JSONL dataset version, tokenise it with the RWKV World "
        "tokenizer and write OUT/train_text_document.{bin,idx} (binidx, uint16), "
        "OUT/quality.json and OUT/status.json. Exit 4 when the quality verdict fails.",
    )
    p.add_argument("--manifest", required=True, help="dataset manifest (*.manifest.json)")
    p.add_argument("--out", required=True, help="output folder of this stage")
    p.add_argument("--profile", help="training profile YAML: enables the ctx_len and "
                   "document-count checks (skipped without it)")
    p.add_argument("--max-invalid-records", type=count, default=0,
                   help="invalid records tolerated, then left out of the binidx (default 0)")
    p.add_argument("--max-duplicate-fraction", type=fraction,
                   default=DEFAULT_MAX_DUPLICATE_FRACTION,
                   help="largest fraction of exact-duplicate documents (default %(default)s)")
    p.add_argument("--max-over-ctx-fraction", type=fraction, default=0.5,
                   help="fraction of documents longer than ctx_len above which it warns "
                   "(default 0.5)")
    p.add_argument("--allow-warn", action=argparse.BooleanOptionalAction, default=True,
                   help="whether a warn verdict still succeeds (default yes)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="tokeniser processes (default: the usable CPU cores)")
    p.add_argument("--max-offenders", type=count, default=10,
                   help="offending line numbers listed per rule (default 10)")
    return p


def _limits(path: str | None) -> tuple[ProfileLimits | None, Any]:
    if not path:
        return None, None
    from peftflow.train import training_profile as profile

    prof = profile.load(path)
    return ProfileLimits(prof.name, prof.model.ctx_len, prof.training.epoch_steps,
                         prof.training.micro_bsz), prof


def _clear_previous(out_dir: Path) -> None:
    """A rerun must not leave the last run's outputs beside a new failure. status.json goes
    first: if a later removal fails, no success record is left pointing at half a run."""
    for name in OUTPUTS:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    atomic.remove_stale_temps(out_dir)


_OUT_FIX = "pass an empty folder of its own, e.g. artifacts/<dag_id>/<run_id>/prepare_dataset"


def _check_out(given: str, out_dir: Path, inputs: dict[str, Path]) -> None:
    """Refuse an --out that cannot hold the outputs, or whose outputs (or their cleanup)
    would replace or delete an input; nothing is written yet."""
    for pseudo in PSEUDO_FS:
        if out_dir.is_relative_to(pseudo):
            raise ConfigError(f"--out {given}: resolves to {out_dir}, under {pseudo}, a "
                              f"kernel pseudo-filesystem that cannot hold files; {_OUT_FIX}")
    for role, path in inputs.items():
        if path == out_dir or path.is_relative_to(out_dir):
            where = "is" if path == out_dir else "holds"
            raise ConfigError(
                f"--out {given}: {out_dir} {where} the {role} {path}; this stage deletes and "
                f"rewrites {', '.join(OUTPUTS)} in --out, which must never touch an input: "
                f"{_OUT_FIX}")
        for name in OUTPUTS:  # a symlink in --out that leads to an input
            if (out_dir / name).resolve() == path:
                raise ConfigError(f"--out {given}: {out_dir / name} leads to the {role} "
                                  f"{path}; writing {name} would replace it: {_OUT_FIX}")
    try:
        mode = out_dir.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # creating it will tell
    except OSError as exc:
        raise ConfigError(f"--out {given}: cannot be inspected ({exc.strerror}); "
                          f"{_OUT_FIX}") from None
    if not stat.S_ISDIR(mode):
        kind = "a regular file" if stat.S_ISREG(mode) else "a device or other special file"
        raise ConfigError(f"--out {given}: {out_dir} is {kind}, not a folder; {_OUT_FIX}")


def _make_out(given: str, out_dir: Path) -> None:
    """Create --out and prove it takes a file; a clear error instead of a traceback."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=atomic.TMP_PREFIX + "probe.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"--out {given}: cannot write to {out_dir} ({reason}); give a "
                          f"folder this user can create and write, {_OUT_FIX}") from None


def _earlier_success(out_dir: Path, inputs: dict[str, Path]) -> Path | None:
    """The status.json an earlier successful run left in --out, if there is one (and it is
    not, by some accident of naming, one of this run's inputs)."""
    path = out_dir / STATUS_FILE
    try:
        if not path.is_file() or path.resolve() in inputs.values():
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(doc, dict) and doc.get("stage") == STAGE
    return path if ours and doc.get("status") == "success" else None


def _withdraw_earlier_success(out_dir: Path, inputs: dict[str, Path],
                              exc: BaseException) -> None:
    """This run failed: an earlier run's success record in --out must not outlive it."""
    path = _earlier_success(out_dir, inputs)
    if path is None:
        return
    code = int(entry.recorded_code(exc))
    rec = StageRecorder(STAGE, out_dir)
    message = (f"{type(exc).__name__}: {exc} (this run stopped before replacing the earlier "
               "run's outputs in this folder; they must not be used)")
    try:
        rec.write("failed", message, code)
        return
    except (OSError, PeftflowError):
        pass
    # A folder we cannot rename into: overwrite in place. A torn write is invalid JSON,
    # which no later stage trusts either.
    try:
        with open(path, "r+b") as handle:
            handle.truncate(0)
            handle.write(json.dumps(rec.document("failed", message, code)).encode("utf-8"))
        return
    except OSError as err:
        reason = err.strerror
    print(f"warning: {path} from an earlier run still says success and could not be "
          f"changed ({reason}); delete it before any later stage reads this folder",
          file=sys.stderr, flush=True)


def _quality_doc(manifest: Manifest, result: pipeline.Result, report: Report, th: Thresholds,
                 limits: ProfileLimits | None, prof: Any, allowed: bool) -> dict[str, Any]:
    m = result.measurements
    return {
        "schema_version": 1,
        "dataset": {"name": manifest.name, "version": manifest.version,
                    "manifest_path": str(manifest.path), "manifest_sha256": manifest.sha256,
                    "data_sha256": result.data_sha256},
        "profile": None if limits is None else {
            "name": limits.name, "path": str(prof.path), "sha256": prof.sha256,
            "ctx_len": limits.ctx_len, "documents_needed": limits.documents_needed},
        "verdict": str(report.verdict),
        "allowed": allowed,
        "records": m.records, "documents": m.documents, "tokens": m.tokens,
        "invalid_records": m.invalid_records,
        "thresholds": {"max_invalid_records": th.max_invalid_records,
                       "max_duplicate_fraction": th.max_duplicate_fraction,
                       "max_over_ctx_fraction": th.max_over_ctx_fraction,
                       "max_offenders": th.max_offenders, "allow_warn": th.allow_warn},
        "rules": [r.as_dict() for r in report.rules],
        "reasons": report.reasons,
        "created_at": utc_now(),
    }


def _metrics(manifest: Manifest, out_dir: Path, result: pipeline.Result,
             report: Report) -> dict[str, Any]:
    m = result.measurements
    rule = {r.rule: r for r in report.rules}
    return {
        "data_prefix": str(out_dir / PREFIX),
        "dataset_name": manifest.name, "dataset_version": manifest.version,
        "verdict": str(report.verdict), "records": m.records, "documents": m.documents,
        "tokens": m.tokens, "invalid_records": m.invalid_records,
        "duplicate_fraction": rule["duplicate_fraction"].value,
        "over_ctx_fraction": rule["doc_length_tokens"].value,
        "doc_tokens_min": m.length_min, "doc_tokens_max": m.length_max,
        "doc_tokens_mean": round(m.length_mean, 2),
        "throughput_mb_s": round(result.mb_per_s, 2), "seconds": round(result.seconds, 3),
        "workers": result.workers,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out).expanduser().resolve()
    # What this run reads; --out must never hold one of them.
    inputs = {"manifest": Path(args.manifest).expanduser().resolve()}
    if args.profile:
        inputs["profile"] = Path(args.profile).expanduser().resolve()
    try:
        return _prepare(args, out_dir, inputs)
    except BaseException as exc:
        _withdraw_earlier_success(out_dir, inputs, exc)
        raise


def _prepare(args: argparse.Namespace, out_dir: Path, inputs: dict[str, Path]) -> int:
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: use 1 or more")
    th = Thresholds(args.max_invalid_records, args.max_duplicate_fraction,
                    args.max_over_ctx_fraction, args.max_offenders, args.allow_warn)
    manifest = load_manifest(args.manifest)
    limits, prof = _limits(args.profile)
    data_path, data_file = manifest.data_paths()[0], manifest.files[0]
    data = {f"data file {i}" if i else "data file": p
            for i, p in enumerate(manifest.data_paths())}
    inputs.update(data)
    _check_out(args.out, out_dir, {**data, **inputs})  # the data first: the likeliest victim
    manifest.verify()  # before anything is written
    _make_out(args.out, out_dir)
    _clear_previous(out_dir)

    rec = StageRecorder(STAGE, out_dir)
    rec.add_input("manifest", manifest.path)
    # verified against the manifest
    rec.inputs.append(FileRef("data", str(data_path), data_file.sha256, data_file.bytes))
    if prof is not None:
        rec.add_input("profile", prof.path)
    rec.tools.update(tokenizer.versions(), numpy=importlib.metadata.version("numpy"),
                     msgspec=importlib.metadata.version("msgspec"))
    prefix = out_dir / PREFIX
    staged = pipeline.Staged([Path(f"{prefix}.bin"), Path(f"{prefix}.idx")])
    try:
        opts = pipeline.Options(manifest.text_field, limits.ctx_len if limits else None,
                                args.workers, th.max_offenders)
        result = pipeline.run(data_path, data_file.sha256, staged.handles[0],
                              staged.handles[1], opts)
        report = evaluate(result.measurements, th, limits)
        allowed = report.verdict == Outcome.PASS or (report.verdict == Outcome.WARN
                                                    and th.allow_warn)
        doc = _quality_doc(manifest, result, report, th, limits, prof, allowed)
        schemas.check(doc, "quality", str(out_dir / QUALITY_FILE))
        rec.metrics.update(_metrics(manifest, out_dir, result, report))
        if not allowed:
            staged.discard()
            atomic.write_json(out_dir / QUALITY_FILE, doc)
            summary = _failure_summary(manifest, report)
            rec.write("failed", summary, int(DataError.exit_code))
            raise DataError(summary)
        staged.publish()
        atomic.write_json(out_dir / QUALITY_FILE, doc)
    except DataError:
        raise
    except (PeftflowError, KeyboardInterrupt, entry.Interrupted) as exc:
        staged.discard()
        rec.write("failed", f"{type(exc).__name__}: {exc}", int(entry.recorded_code(exc)))
        raise
    finally:
        staged.discard()
    for name, suffix in (("bin", ".bin"), ("idx", ".idx")):
        rec.add_output(name, f"{prefix}{suffix}")
    rec.add_output("quality", out_dir / QUALITY_FILE)
    m = result.measurements
    rec.write("success", f"{manifest.label}: {m.documents} documents, {m.tokens} tokens, "
              f"verdict {report.verdict}")
    print(prefix)  # the data prefix, for shells that chain stages
    return 0


def _failure_summary(manifest: Manifest, report: Report) -> str:
    head = (f"{manifest.label} failed the dataset quality rules"
            if report.verdict == Outcome.FAIL
            else f"{manifest.label} has quality warnings and --no-allow-warn was given")
    return head + ":\n  " + "\n  ".join(report.reasons)


if __name__ == "__main__":
    entry.exit_with(main)
