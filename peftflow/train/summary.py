"""The end of a training attempt: loss curve, outputs and metrics into status.json."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from peftflow.errors import IntegrityError, PeftflowError
from peftflow.store import status_record as status
from peftflow.train import checkpoints, plots, resume
from peftflow.train.training_profile import PeftMethod, Profile


def loss_window(steps: int) -> int:
    """How many of the last steps final_loss averages over."""
    return max(1, min(10, steps // 5))


def finalize(prof: Profile, out: Path, rec: status.StageRecorder, timing: dict[str, Any],
             resumed_from: int | None) -> None:
    t = prof.training
    found = checkpoints.list_checkpoints(out)
    final_epoch = t.epoch_count - 1
    if final_epoch not in found:
        raise PeftflowError(f"{out}: final checkpoint rwkv-{final_epoch}.pth missing")
    adapter = found[final_epoch]
    if prof.peft.method in (PeftMethod.LORA, PeftMethod.PISSA) and \
            not checkpoints.adapter_keys_ok(checkpoints.load(adapter)):
        raise IntegrityError(f"{adapter}: no RWKV-PEFT LoRA keys (blocks.N.*.lora_A/B)")
    records = plots.read_loss_data(out / "loss_data.jsonl")
    losses = [float(r["loss"]) for r in records]
    per_epoch = resume.steps_per_epoch(prof)
    curve = plots.loss_curve(records, out / "loss_curve.png",
                             f"{prof.name}: {prof.peft.method.value} ({prof.backend.value})",
                             per_epoch)
    rec.add_output("adapter", adapter)
    for path in found.values():
        rec.add_output(f"checkpoint:{path.name}", path)
    rec.add_output("train_log", out / "train_log.txt")
    rec.add_output("loss_data", out / "loss_data.jsonl")
    rec.add_output("loss_curve", curve)
    if prof.peft.method is PeftMethod.PISSA and (out / resume.INIT_PISSA).is_file():
        rec.add_output("init_pissa", out / resume.INIT_PISSA)
    window = loss_window(len(losses))
    tokens_per_step = prof.model.ctx_len * t.micro_bsz * t.accumulate_grad_batches
    seconds = float(timing.get("seconds", 0.0))
    trained = int(timing.get("trained_steps", 0))
    lora_r, lora_alpha = _rank(prof)
    epochs = [sum(losses[i:i + per_epoch]) / len(losses[i:i + per_epoch])
              for i in range(0, len(losses), per_epoch)] if per_epoch else []
    rec.metrics.update({
        # first_loss: the first step's loss, computed before any update (the base model on
        # one batch); final_loss: the mean of the last `loss_window_steps` steps.
        "first_loss": round(losses[0], 6) if losses else None,
        "final_loss": round(sum(losses[-window:]) / window, 6) if losses else None,
        "loss_window_steps": window,
        "epoch_losses": [round(v, 6) for v in epochs],
        "steps": len(losses),
        "tokens": len(losses) * tokens_per_step,
        "trained_steps_this_attempt": trained,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(trained * tokens_per_step / seconds, 1) if seconds > 0 else None,
        "epochs_completed": final_epoch + 1,
        "resumed_from_epoch": resumed_from,
        "backend": prof.backend.value,
        "peft_method": prof.peft.method.value,
        "lora_alpha": lora_alpha,
        "lora_r": lora_r,
        "profile_sha256": prof.sha256,
    })
    if "target_tokens" in timing:
        rec.metrics["target_tokens_this_attempt"] = timing["target_tokens"]
    rec.write("success")
    m = rec.metrics
    print(f"[train_adapter] done: loss {m['first_loss']} -> {m['final_loss']} over {m['steps']} "
          f"steps, {seconds:.1f} s this attempt, {m['tokens_per_s']} tokens/s; adapter {adapter}",
          file=sys.stderr)


def _rank(prof: Profile) -> tuple[int | None, float | None]:
    method = prof.peft.method
    if method is PeftMethod.LORA:
        return prof.peft.lora.r, prof.peft.lora.alpha
    if method is PeftMethod.PISSA:
        return prof.peft.pissa.r, None  # PiSSA applies B@A unscaled
    return None, None
