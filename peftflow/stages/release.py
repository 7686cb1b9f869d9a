"""Stage release_adapter: publish a gated adapter into releases/<profile>/<version>/.

Run through scripts/release_adapter.sh. Refuses (exit 7) unless gate_decision.json releases;
verifies every artifact it consumes against its recorded hash (exit 5 on a mismatch) before
anything is copied; releasing the same run twice returns the first release (noop).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from peftflow import entry
from peftflow.errors import ConfigError, GateBlocked, PeftflowError
from peftflow.release import publish
from peftflow.store.status_record import StageRecorder
from peftflow.train import training_profile as profiles

STAGE = "release_adapter"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"release_adapter: {message}; see --help")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="release_adapter.sh", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--profile", required=True, type=Path, help="training profile YAML")
    add("--spec", required=True, type=Path, help="DAG spec YAML the run came from")
    add("--prepare-status", required=True, type=Path, help="prepare_dataset output folder")
    add("--train-status", required=True, type=Path, help="train_adapter output folder")
    add("--eval-status", required=True, type=Path, help="evaluate_adapter output folder")
    add("--gate", required=True, type=Path, help="gate_decision.json of the release gate")
    add("--out", required=True, type=Path, help="this stage's folder (status.json)")
    add("--dag-id", required=True, help="Airflow DAG id")
    add("--run-id", required=True, help="Airflow run id")
    add("--try-number", required=True, type=int, help="Airflow try number")
    add("--version", help="release version (default: next rNNNN of the profile)")
    add("--merged", type=Path, help="merged full model to release beside the adapter")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    recorder = StageRecorder(STAGE, args.out)
    try:
        result = publish.publish(publish.ReleaseRequest(
            profile=profiles.load(args.profile), spec_path=args.spec,
            prepare_status=args.prepare_status, train_status=args.train_status,
            eval_status=args.eval_status, gate_path=args.gate, dag_id=args.dag_id,
            run_id=args.run_id, try_number=args.try_number, version=args.version,
            merged=args.merged,
        ))
    except GateBlocked as exc:
        recorder.write("blocked", str(exc), int(exc.exit_code))
        raise
    except PeftflowError as exc:
        recorder.write("failed", str(exc), int(exc.exit_code))
        raise
    release = result.release
    recorder.inputs.extend(result.consumed)  # already verified; no need to hash them again
    recorder.add_output("release_manifest", release.manifest_path)
    recorder.add_output("report", release.dir / release.doc["files"]["report"])
    recorder.add_output("adapter_release", release.adapter_path)
    recorder.metrics.update({"version": release.version, "release_dir": str(release.dir),
                             "profile": release.profile, "noop": result.noop,
                             "released_by_run": release.run_id})
    verb = "already released as" if result.noop else "released"
    recorder.write("success", f"{release.profile} {verb} {release.version}")
    print(f"[{STAGE}] {release.profile} {verb} {release.version}: {release.dir}", flush=True)
    return 0


if __name__ == "__main__":
    entry.exit_with(main)
