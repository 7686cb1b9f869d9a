"""Running one training attempt with each backend; returns this attempt's timing."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from peftflow.errors import ConfigError, PeftflowError
from peftflow.progress import Rate
from peftflow.train import checkpoints, data, plots, resume, rwkv_peft
from peftflow.train.training_profile import PeftMethod, Profile

STAGE = "train_adapter"


def _args_line(prof: Profile, prefix: Path, out: Path, epoch_begin: int) -> str:
    """The arguments line of train_log.txt (RWKV-PEFT writes vars(args) there)."""
    t = prof.training
    args: dict[str, Any] = {
        "backend": prof.backend.value, "profile": str(prof.path),
        "load_model": str(prof.model.base_model_path()), "data_file": str(prefix),
        "proj_dir": str(out), "my_testing": prof.model.architecture,
        "n_layer": prof.model.n_layer, "n_embd": prof.model.n_embd,
        "ctx_len": prof.model.ctx_len, "peft": prof.peft.method.value,
        "train_parts": list(prof.peft.train_parts),
        "lora_config": {"lora_r": prof.peft.lora.r, "lora_alpha": prof.peft.lora.alpha,
                        "lora_dropout": prof.peft.lora.dropout},
        "epoch_begin": epoch_begin, **{k: getattr(t, k) for k in t.__dataclass_fields__},
        "threads": prof.runtime.threads,
    }
    return json.dumps(args)


def run_cpu(prof: Profile, prefix: Path, out: Path,
            last: tuple[int, Path] | None) -> dict[str, Any]:
    """Train the remaining epochs in-process (nothing when the final checkpoint exists)."""
    unsupported = [f"{name}: {value}" for name, value, ok in (
        ("quantization", prof.quantization, "none"),
        ("training.train_type", prof.training.train_type, "none"),
        ("training.loss_mask", prof.training.loss_mask, "pad")) if value != ok]
    if unsupported:
        raise ConfigError(f"{prof.path}: the cpu-reference backend does not implement "
                          f"{', '.join(unsupported)}; use backend: rwkv-peft or the defaults")
    begin = last[0] + 1 if last else 0
    if begin >= prof.training.epoch_count:
        return {"trained_steps": 0, "seconds": 0.0}
    from peftflow.train import cpu_trainer

    dataset = data.open_binidx(prefix)
    data.check_enough(dataset, prof.training.documents_needed, str(prof.path))
    base_sd = checkpoints.load(prof.model.base_model_path())
    result = cpu_trainer.train(prof, dataset, base_sd, out, begin, last[1] if last else None,
                               _args_line(prof, prefix, out, begin))
    return {"trained_steps": result["steps"], "seconds": result["seconds"],
            "target_tokens": result["target_tokens"]}


def run_rwkv_peft(prof: Profile, prefix: Path, out: Path,
                  last: tuple[int, Path] | None) -> dict[str, Any]:
    """Launch RWKV-PEFT's train.py for the remaining epochs and wait for it."""
    t = prof.training
    begin = last[0] + 1 if last else 0
    seconds, trained = 0.0, 0
    if begin < t.epoch_count:
        dataset = data.open_binidx(prefix)
        data.check_enough(dataset, t.documents_needed, str(prof.path))
        plan = resume.plan(prof, out, last, write=True)
        if last:
            resume.keep_history(prof, out, plan.epoch_begin)
        argv = rwkv_peft.build_argv(prof, prefix, out, plan)
        print(f"[{STAGE}] running {json.dumps(argv)}", file=sys.stderr, flush=True)
        todo = (t.epoch_count - begin) * resume.steps_per_epoch(prof)
        t0 = time.monotonic()
        rate = Rate(todo)  # recent pace: model load and kernel compilation are not steps

        def tick() -> None:
            records = plots.read_loss_data(out / "loss_data.jsonl")
            if records:
                rate.update(len(records))
                print(f"[{STAGE}] step {len(records)}/{todo} loss {records[-1]['loss']:.4f} "
                      f"tokens/s {1000 * float(records[-1].get('kt_s', 0)):.0f} "
                      f"ETA {rate.eta()}", file=sys.stderr, flush=True)

        try:
            rwkv_peft.run(argv, prof.rwkv_peft.checkout_path(), tick)
        finally:  # the loadable copies (a whole model for state tuning) are only for launch
            for copy in out.glob("resume-from-rwkv-*.pth"):
                copy.unlink(missing_ok=True)
        seconds = time.monotonic() - t0
        trained = len(plots.read_loss_data(out / "loss_data.jsonl"))
    if prof.peft.method is PeftMethod.PISSA:
        resume.restore_pissa_init(out)
    resume.merge_history(out)
    final = checkpoints.checkpoint_path(out, t.epoch_count - 1)
    if not final.is_file():
        raise PeftflowError(f"RWKV-PEFT finished but wrote no {final.name} in {out}; see "
                            "train_log.txt and the output above")
    return {"trained_steps": trained, "seconds": round(seconds, 3)}
