"""evaluate_adapter stage: score base vs adapted model on eval suites; write metrics and verdict.

Usage: scripts/evaluate_adapter.sh --profile P --adapter CKPT --suite S [--suite S ...] --out DIR
[--min-domain-improvement F] [--max-retention-increase F] [--baseline-metrics FILE
[--baseline-tolerance F]] [--write-merged PATH] [--threads N] [--pissa-init PATH]

A fail verdict is a successful stage (exit 0): the release gate reads verdict.json. Bad inputs
(missing or corrupt adapter, suite hash mismatch, architecture mismatch) fail the stage with
their exit code, and then no metrics.json / verdict.json is left in DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from peftflow import entry
from peftflow.errors import ConfigError, PeftflowError
from peftflow.evaluate import pipeline, verdict
from peftflow.run import device_lease
from peftflow.store import atomic
from peftflow.store import status_record as status
from peftflow.train import training_profile

STAGE = "evaluate_adapter"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate_adapter.sh",
        description="Merge an adapter into its base model, score both on eval suites "
        "(per-token cross-entropy with the rwkv package) and write metrics.json, "
        "verdict.json, eval_chart.png and status.json into --out.",
    )
    parser.add_argument("--profile", required=True, type=Path,
                        help="training profile the adapter was trained with (alpha/r, base model)")
    parser.add_argument("--adapter", required=True, type=Path,
                        help="adapter checkpoint rwkv-N.pth (train_adapter output 'adapter')")
    parser.add_argument("--suite", required=True, action="append", type=Path, dest="suites",
                        metavar="SUITE", help="eval suite YAML (configs/eval/*.yaml); repeatable")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--min-domain-improvement", type=float,
                        default=verdict.DEFAULT_MIN_DOMAIN_IMPROVEMENT, metavar="F",
                        help="least relative loss improvement (base-adapted)/base on every "
                        "domain suite (default %(default)s)")
    parser.add_argument("--max-retention-increase", type=float,
                        default=verdict.DEFAULT_MAX_RETENTION_INCREASE, metavar="F",
                        help="largest relative loss increase (adapted-base)/base on every "
                        "retention suite (default %(default)s)")
    parser.add_argument("--baseline-metrics", type=Path, metavar="FILE",
                        help="metrics.json of the released adapter: adds rule "
                        "no_regression_vs_release for every suite scored on the same tokens")
    parser.add_argument("--baseline-tolerance", type=float, metavar="F",
                        help="with --baseline-metrics: allowed relative increase of adapted "
                        "loss over the released adapter's (default 0.0)")
    parser.add_argument("--write-merged", type=Path, metavar="PATH",
                        help="also write the merged model .pth (atomically) for release")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for scoring (default: the profile's runtime.threads; "
                        "0 = torch's default). On a shared machine 1 is often fastest")
    parser.add_argument("--pissa-init", type=Path, metavar="PATH",
                        help="PiSSA only: init_pissa.pth of the run (default: beside --adapter)")
    return parser


def _request(args: argparse.Namespace) -> pipeline.Request:
    if args.baseline_tolerance is not None and args.baseline_metrics is None:
        raise ConfigError("--baseline-tolerance needs --baseline-metrics FILE (the released "
                          "adapter's metrics.json)")
    if args.threads is not None and args.threads < 0:
        raise ConfigError(f"--threads {args.threads}: use 0 (torch's default) or more")
    tolerance = None
    if args.baseline_metrics is not None:
        tolerance = 0.0 if args.baseline_tolerance is None else args.baseline_tolerance
    thresholds = verdict.Thresholds(args.min_domain_improvement, args.max_retention_increase,
                                    tolerance)
    return pipeline.Request(
        profile=args.profile, adapter=args.adapter.resolve(),
        suites=tuple(args.suites), out=args.out.resolve(), thresholds=thresholds,
        baseline_metrics=args.baseline_metrics, write_merged=_abs(args.write_merged),
        pissa_init=_abs(args.pissa_init), threads=args.threads,
    )


def _abs(path: Path | None) -> Path | None:
    return path.resolve() if path is not None else None


def _discard_outputs(out: Path, merged: Path | None = None) -> None:
    """Remove outputs of this (or an earlier) run so a failure leaves nothing to take for good."""
    paths = [out / n for n in (*pipeline.OUTPUT_FILES, status.STATUS_FILE)]
    if merged is not None:
        paths.append(merged)
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out)
    _discard_outputs(out)
    rec = status.StageRecorder(STAGE, out)
    new_merged = None  # a --write-merged file this run creates; removed again on failure
    try:
        req = _request(args)
        if req.write_merged is not None and not req.write_merged.exists():
            new_merged = req.write_merged
        with device_lease.for_stage(STAGE, _eval_devices(req.profile)) as lease:
            rec.devices = lease.record()
            doc = pipeline.evaluate(req, rec)
    except (Exception, KeyboardInterrupt, entry.Interrupted) as exc:
        _fail(rec, out, new_merged, _failure(exc), int(entry.recorded_code(exc)))
        raise
    rec.write("success")
    print(f"verdict: {doc['verdict']}" + "".join(f"\n  - {r}" for r in doc["reasons"]),
          flush=True)
    for suite, values in rec.metrics["suites"].items():
        print(f"  {suite}: base {values['base_loss']:.4f} adapted {values['adapted_loss']:.4f} "
              f"({values['relative_change']:+.2%})", flush=True)
    print(f"eval throughput: {rec.metrics['tokens_per_s']} tokens/s", file=sys.stderr, flush=True)
    return 0


def _eval_devices(profile_path: Path) -> int:
    """How many GPUs to lease: the profile's runtime.eval_devices (a missing profile is
    reported by the evaluation's own input checks, with the same lease as the default)."""
    if not profile_path.is_file():
        return 1
    return training_profile.load(profile_path).runtime.eval_devices


def _failure(exc: BaseException) -> str:
    """What the failed status.json says of `exc`."""
    if isinstance(exc, PeftflowError):
        return str(exc)
    if isinstance(exc, (KeyboardInterrupt, entry.Interrupted)):
        return f"interrupted ({exc or 'SIGINT'})"
    if isinstance(exc, MemoryError):
        return "out of memory"
    return f"unexpected error: {exc!r}"


def _fail(rec: status.StageRecorder, out: Path, new_merged: Path | None, message: str,
          code: int) -> None:
    _discard_outputs(out, new_merged)
    rec.outputs.clear()
    with contextlib.suppress(PeftflowError, OSError):
        rec.write("failed", message, code)


if __name__ == "__main__":
    entry.exit_with(main)
