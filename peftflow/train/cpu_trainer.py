"""The cpu-reference backend: RWKV-7 LoRA training on CPU with RWKV-PEFT's semantics.

Same data sampling (pad loader), loss (cross-entropy on the document's tokens plus RWKV's
L2Wrap logit penalty), LR schedules, gradient clipping (1.0), Adam, checkpoint cadence and
file formats as RWKV-PEFT at the pinned commit, so later stages cannot tell the backends apart.
Like RWKV-PEFT, a resumed run restarts Adam's moments; the sample order and dropout of each
epoch are seeded by (random_seed, epoch), so a resumed epoch sees the same batches.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftflow.errors import ConfigError
from peftflow.progress import Progress, Rate
from peftflow.store import atomic
from peftflow.train import checkpoints
from peftflow.train.data import BinIdx, check_enough
from peftflow.train.training_profile import Profile


def lr_at(step: int, total: int, t: Any) -> float:
    """RWKV-PEFT's learning rate at optimizer step `step` of `total` (trick/lrs.py semantics).

    cos: lr_final + (lr_init - lr_final) * (1 + cos(pi * step / total)) / 2, no warm-up
    (warmup_steps only applies to wsd); wsd: linear warm-up from 0 (100 steps when
    warmup_steps <= 0), then the same cosine towards `final=0`, as upstream passes it.
    """
    if t.lr_final == t.lr_init or total <= 0:
        return float(t.lr_init)
    if t.lr_schedule == "wsd":
        warm = t.warmup_steps if t.warmup_steps > 0 else 100
        if step < warm:
            return float(t.lr_init) * step / max(1, warm)
        done, span, final = step - warm, total - warm, 0.0
    else:
        done, span, final = step, total, float(t.lr_final)
    if done >= span:
        return final
    return final + 0.5 * (float(t.lr_init) - final) * (1 + math.cos(math.pi * done / span))


@dataclass
class RunLog:
    """train_log.txt and loss_data.jsonl of a run folder, rewritten atomically as they grow."""

    out_dir: Path
    log_text: str = ""
    loss_lines: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, out_dir: Path, keep_steps: int) -> RunLog:
        log_path, loss_path = out_dir / "train_log.txt", out_dir / "loss_data.jsonl"
        text = log_path.read_text(encoding="utf-8") if log_path.is_file() else ""
        lines = []
        if loss_path.is_file():  # a torn last line (killed writer of another tool) is dropped
            for line in loss_path.read_text(encoding="utf-8").splitlines()[:keep_steps]:
                try:
                    json.loads(line)
                    lines.append(line)
                except json.JSONDecodeError:
                    break
        return cls(out_dir, text, lines)

    def log(self, line: str) -> None:
        self.log_text += line if line.endswith("\n") else line + "\n"
        atomic.write_text(self.out_dir / "train_log.txt", self.log_text)

    def step(self, record: dict[str, Any]) -> None:
        self.loss_lines.append(json.dumps(record))

    def flush_steps(self) -> None:
        atomic.write_text(self.out_dir / "loss_data.jsonl",
                          "".join(line + "\n" for line in self.loss_lines))


def _l2wrap() -> Any:
    import torch

    class L2Wrap(torch.autograd.Function):
        """Identity on the loss; in backward nudges each position's largest logit towards 0."""

        @staticmethod
        def forward(ctx, loss, logits):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(logits)
            return loss

        @staticmethod
        def backward(ctx, grad):  # type: ignore[no-untyped-def]
            (logits,) = ctx.saved_tensors
            factor = 1e-4 / (logits.shape[0] * logits.shape[1])
            top, ids = torch.max(logits, -1, keepdim=True)
            extra = torch.zeros_like(logits).scatter_(-1, ids, top * factor)
            return grad, extra

    return L2Wrap


def train(prof: Profile, data: BinIdx, base_sd: dict[str, Any], out_dir: Path, epoch_begin: int,
          resume_from: Path | None, args_line: str,
          on_checkpoint: Callable[[int, Path], None] | None = None) -> dict[str, Any]:
    """Train epochs epoch_begin..epoch_count-1; return metrics. Writes checkpoints and logs."""
    import numpy as np
    import torch
    from torch.nn import functional as F

    from peftflow.train.cpu_model import RWKV7

    t, lora = prof.training, prof.peft.lora
    torch.set_num_threads(prof.runtime.threads or os.cpu_count() or 1)
    check_enough(data, t.documents_needed, "this profile")
    if t.epoch_steps % t.accumulate_grad_batches:
        raise ConfigError(f"epoch_steps {t.epoch_steps} is not a multiple of "
                          f"accumulate_grad_batches {t.accumulate_grad_batches}")
    torch.manual_seed(t.random_seed)  # LoRA A init, identical on every (re)start
    model = RWKV7(base_sd, lora.r, lora.alpha, lora.dropout)
    model.train_parts(prof.peft.train_parts)
    if resume_from is not None:
        _load_adapter(model, resume_from)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2] if t.weight_decay > 0 else []
    groups = [{"params": [p for p in params if all(p is not d for d in decay)],
               "weight_decay": 0.0}]
    if decay:
        groups.append({"params": decay, "weight_decay": t.weight_decay})
    optim_cls = torch.optim.AdamW if decay else torch.optim.Adam
    opt = optim_cls(groups, lr=t.lr_init, betas=(t.beta1, t.beta2), eps=t.adam_eps)
    l2wrap = _l2wrap()

    acc, ctx = t.accumulate_grad_batches, prof.model.ctx_len
    per_epoch = t.epoch_steps // acc  # optimizer steps (= loss_data lines) per epoch
    total = t.epoch_steps * t.epoch_count // acc
    log = RunLog.open(out_dir, keep_steps=epoch_begin * per_epoch)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    log.log(f"NEW RUN {stamp}\n{args_line}")
    if resume_from is not None:
        log.log(f"resumed from {resume_from.name}: epoch_begin {epoch_begin}, "
                f"{len(log.loss_lines)} earlier steps kept in loss_data.jsonl")
    log.flush_steps()
    progress = Progress("train_adapter", every=5.0)
    todo = (t.epoch_count - epoch_begin) * per_epoch
    pace = Rate(todo)
    tokens_per_step = ctx * t.micro_bsz * acc
    steps = target_tokens = 0
    flushed = time.monotonic()
    epoch_losses: list[float] = []
    model.train()
    for epoch in range(epoch_begin, t.epoch_count):
        gen = torch.Generator().manual_seed(t.random_seed * 100003 + epoch)
        order = torch.randperm(t.documents_needed, generator=gen) if t.data_shuffle \
            else torch.arange(t.documents_needed)
        torch.manual_seed(t.random_seed * 100003 + epoch)  # dropout of this epoch
        loss_sum, lr = 0.0, t.lr_init
        for opt_step in range(per_epoch):
            t0 = time.monotonic()
            real_step = epoch * per_epoch + opt_step
            lr = lr_at(real_step, total, t)
            for group in opt.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for micro in range(acc):
                first = (opt_step * acc + micro) * t.micro_bsz
                batch = order[first:first + t.micro_bsz].tolist()
                pairs = [data.pad_sample(i, ctx) for i in batch]
                x = torch.from_numpy(np.stack([p[0] for p in pairs]))
                y = torch.from_numpy(np.stack([p[1] for p in pairs]))
                logits = model(x)
                loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
                l2wrap.apply(loss, logits).div(acc).backward()
                step_loss += loss.item() / acc
                target_tokens += int((y != -100).sum())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            seconds = max(time.monotonic() - t0, 1e-9)
            record: dict[str, Any] = {"loss": step_loss, "t_cost": 1.0 / seconds,
                                      "kt_s": tokens_per_step / seconds / 1000}
            if steps == 0 and resume_from is not None:
                record["resumed_from_epoch"] = epoch_begin - 1
            log.step(record)  # t_cost is iterations/s, as RWKV-PEFT writes it
            loss_sum += step_loss
            steps += 1
            pace.update(steps)

            def line(_: float, e: int = epoch, s: int = opt_step, ls: float = step_loss) -> str:
                speed = (pace.per_second() or 0.0) * tokens_per_step  # epochs, steps from 1
                return (f"epoch {e + 1}/{t.epoch_count} step {s + 1}/{per_epoch} loss {ls:.4f} "
                        f"tokens/s {speed:.0f} ETA {pace.eta()}")

            progress.maybe(line, force=steps in (1, todo))
            if time.monotonic() - flushed >= 5.0:
                log.flush_steps()
                flushed = time.monotonic()
        log.flush_steps()
        mean = loss_sum / per_epoch
        epoch_losses.append(mean)
        if epoch % t.epoch_save == 0 or epoch == t.epoch_count - 1:
            path = checkpoints.save(checkpoints.checkpoint_path(out_dir, epoch),
                                    model.trainable_state_dict())
            if on_checkpoint:
                on_checkpoint(epoch, path)
        log.log(f"{epoch} {mean:.6f} {math.exp(mean):.4f} {lr:.8f} {dt.datetime.now()} "
                f"{epoch - epoch_begin}")
    seconds = progress.elapsed()
    return {"steps": steps, "tokens": steps * tokens_per_step, "target_tokens": target_tokens,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(steps * tokens_per_step / max(seconds, 1e-9), 1),
            "epoch_losses": [round(v, 6) for v in epoch_losses]}


def _load_adapter(model: Any, path: Path) -> None:
    state = checkpoints.load(path)
    want = set(model.trainable_state_dict())
    if set(state) != want:
        extra, missing = sorted(set(state) - want), sorted(want - set(state))
        raise ConfigError(
            f"{path}: adapter does not fit this profile (missing {missing[:3]}, unexpected "
            f"{extra[:3]}); the profile's lora r or train_parts changed since it was written. "
            "Use a fresh output folder."
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: adapter tensors do not fit the model: {exc}") from None
