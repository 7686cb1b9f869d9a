"""train_adapter: profile + base model + binidx data in; adapter checkpoints, logs and status out.

    scripts/train_adapter.sh --profile P --data-prefix PREFIX --out DIR [--resume] [--print-command]

Backends (the profile's `backend`): `rwkv-peft` runs RWKV-PEFT's train.py (pinned in
configs/rwkv_peft.yaml) on a GPU as a child process; `cpu-reference` trains LoRA in-process
with peftflow's PyTorch RWKV-7. Both leave the same files in DIR: `rwkv-N.pth` (adapter-only,
RWKV-PEFT key names), `train_log.txt`, `loss_data.jsonl`, `loss_curve.png` (+ `init_pissa.pth`
for PiSSA) and `status.json`. With --resume (passed on every Airflow retry) a run continues
after its last checkpoint; a run whose status is already success is not repeated.

Exit codes:

| code | meaning                                                                   | retry |
|------|---------------------------------------------------------------------------|-------|
| 0    | trained, or DIR already held the finished run (nothing retrained)         | -     |
| 1    | unexpected failure (a bug, or train.py failed for an unknown reason)      | yes   |
| 2    | bad config: profile or arguments invalid, DIR started with other inputs,  | no    |
|      | checkpoints in DIR without --resume, train.py rejected its arguments      |       |
| 3    | missing input: profile, base model, .bin/.idx, RWKV-PEFT checkout, its    | no    |
|      | Python or a dependency of it (see `peftflow doctor`)                      |       |
| 4    | bad data: unreadable binidx, fewer documents than epoch_steps * micro_bsz | no    |
| 5    | integrity: a checkpoint or a finished run's output is unreadable/changed  | no    |
| 75   | resource: out of (GPU) memory, CUDA/driver/NCCL failure, disk full        | yes   |
| 130  | interrupted (SIGTERM/SIGINT; forwarded to train.py); rerun with --resume  | yes   |
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from peftflow import entry
from peftflow.errors import ConfigError, IntegrityError, MissingInputError, PeftflowError
from peftflow.run import device_lease
from peftflow.store import atomic
from peftflow.store import status_record as status
from peftflow.train import checkpoints, data, rwkv_peft
from peftflow.train import resume as resume_mod
from peftflow.train import training_profile as profile
from peftflow.train.backends import run_cpu, run_rwkv_peft
from peftflow.train.summary import finalize
from peftflow.train.training_profile import Backend, Profile

STAGE = "train_adapter"
RUN_RECORD = "train_run.json"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train_adapter.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", required=True, help="training profile YAML")
    parser.add_argument("--data-prefix", required=True, help="binidx prefix (no .bin/.idx)")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, logs, status)")
    parser.add_argument("--resume", action="store_true",
                        help="continue after the last checkpoint in --out (Airflow retries)")
    parser.add_argument("--print-command", action="store_true",
                        help="print RWKV-PEFT's train.py argv as a JSON array; run nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    prof = profile.load(args.profile)
    out = Path(args.out).expanduser().resolve()
    prefix = data.split_prefix(args.data_prefix)
    if args.print_command:
        if prof.backend is not Backend.RWKV_PEFT:
            raise ConfigError(f"{args.profile}: --print-command shows RWKV-PEFT's command, but "
                              "this profile's backend is cpu-reference (trains in-process)")
        last = checkpoints.last_checkpoint(out) if args.resume else None
        plan = resume_mod.plan(prof, out, last, write=False)
        print(json.dumps(rwkv_peft.build_argv(prof, prefix, out, plan)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out)  # e.g. a checkpoint whose save was killed
    if already_complete(out, prof):
        return 0
    rec = status.StageRecorder(STAGE, out)
    try:
        return train(prof, prefix, out, args.resume, rec)
    except BaseException as exc:
        code = exit_code_of(exc)
        if code != 0:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            try:
                rec.write("failed", message[:2000], code)
            except Exception as write_error:  # never hide the real error behind this one
                print(f"warning: could not write status.json: {write_error}", file=sys.stderr)
        raise


def already_complete(out: Path, prof: Profile) -> bool:
    """True (and nothing to do) when DIR holds this profile's finished, intact run."""
    if not (out / status.STATUS_FILE).is_file():
        return False
    try:
        doc = status.read(out)
    except PeftflowError:
        return False
    if doc.get("stage") != STAGE or doc.get("status") != "success":
        return False
    if doc["metrics"].get("profile_sha256") != prof.sha256:
        raise ConfigError(f"{out} holds a finished run of another profile version "
                          f"(sha256 {str(doc['metrics'].get('profile_sha256'))[:12]}...); use a "
                          "fresh --out for this profile")
    for ref in status.outputs_of(doc).values():
        try:
            ref.verify()
        except PeftflowError as exc:
            raise IntegrityError(f"{exc}; the finished run in {out} was altered: delete the "
                                 "folder and train again") from None
    print(f"[{STAGE}] {out} already holds the finished run (final loss "
          f"{doc['metrics'].get('final_loss')}); nothing retrained", file=sys.stderr)
    print(out / status.STATUS_FILE)
    return True


def train(prof: Profile, prefix: Path, out: Path, resume: bool,
          rec: status.StageRecorder) -> int:
    rec.add_input("profile", prof.path)
    base = prof.model.base_model_path()
    if not base.is_file():
        fix = (f"create it with `peftflow model init-tiny --profile {prof.path}`"
               if prof.model.init_seed is not None else "download it or fix model.base_model; "
               "`peftflow doctor` checks every profile")
        raise MissingInputError(f"{base}: base model not found (profile {prof.path}); {fix}")
    bin_path, idx_path = data.files_of(prefix)
    if prof.backend is Backend.RWKV_PEFT:
        rwkv_peft.preflight(prof)
        rec.tools["rwkv_peft_commit"] = rwkv_peft.load_pin()["commit"]
    refs = [rec.add_input(name, path) for name, path in
            (("base_model", base), ("bin", bin_path), ("idx", idx_path))]
    check_run_record(out, prof, refs)
    last = checkpoints.last_checkpoint(out)
    if last and not resume:
        raise ConfigError(f"{out} already has {last[1].name} from an earlier attempt; pass "
                          "--resume to continue from it, or use a fresh --out")
    if last and last[0] >= prof.training.epoch_count:
        raise ConfigError(f"{out}: {last[1].name} is beyond epoch_count "
                          f"{prof.training.epoch_count}; use a fresh --out")
    if last:
        print(f"[{STAGE}] resuming after {last[1].name} (epoch {last[0]})", file=sys.stderr)
    runner = run_cpu if prof.backend is Backend.CPU_REFERENCE else run_rwkv_peft
    # The GPUs are leased only now: a run with a missing input fails at once, without
    # waiting for a card first.
    with device_lease.for_stage(STAGE, prof.runtime.devices) as lease:
        rec.devices = lease.record()
        timing = runner(prof, prefix, out, last)
        finalize(prof, out, rec, timing, resumed_from=last[0] if last else None)
    print(out / status.STATUS_FILE)
    return 0


def check_run_record(out: Path, prof: Profile, refs: list[status.FileRef]) -> None:
    """DIR belongs to one profile + base model + data; refuse to resume with other inputs."""
    record = {"profile_sha256": prof.sha256, "backend": prof.backend.value,
              **{f"{ref.name}_sha256": ref.sha256 for ref in refs}}
    path = out / RUN_RECORD
    if not path.is_file():
        atomic.write_json(path, record)
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(k for k in record if before.get(k) != record[k])
    if changed:
        raise ConfigError(f"{out} was started with other inputs ({', '.join(changed)} differ "
                          f"from {path}); use a fresh --out, or restore the original inputs")


def exit_code_of(exc: BaseException) -> int:
    """The code entry.run will exit with for `exc` (recorded in the failed status)."""
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    return int(entry.recorded_code(exc))


if __name__ == "__main__":
    entry.exit_with(main)
