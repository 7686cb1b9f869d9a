"""Resuming an rwkv-peft run from its last checkpoint, around RWKV-PEFT 5b8aac9's quirks.

- `lora_load`/`pissa_load`/`disha.load` are loaded with strict=False into the Lightning module,
  whose keys carry a `model.` prefix that the saved checkpoints lack, so a checkpoint passed as
  is would be silently ignored (training would restart from zero). We pass a prefixed copy.
- PiSSA asserts that `init_pissa.pth` does not exist yet on one GPU, so a resume moves it aside
  and passes it as `pissa_init`; a fresh restart deletes the one a killed attempt left.
- State tuning has no load option: we resume from base + trained states as `--load_model`.
- train.py deletes loss_data.jsonl on start; earlier steps are kept in loss_data.prev.jsonl and
  merged back at the end, with the first resumed step marked `resumed_from_epoch`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from peftflow.store import atomic
from peftflow.train import checkpoints
from peftflow.train.rwkv_peft import Plan
from peftflow.train.training_profile import PeftMethod, Profile

INIT_PISSA = "init_pissa.pth"
INIT_PISSA_SAVED = "init_pissa.saved.pth"
PREV = "loss_data.prev.jsonl"
STATE = "resume_state.json"


def steps_per_epoch(prof: Profile) -> int:
    return prof.training.epoch_steps // prof.training.accumulate_grad_batches


def plan(prof: Profile, out_dir: Path, last: tuple[int, Path] | None, write: bool) -> Plan:
    """The Plan for the next train.py launch; with write=False nothing is touched (dry run)."""
    t = prof.training
    method = prof.peft.method
    if last is None:
        if write and method is PeftMethod.PISSA:
            for name in (INIT_PISSA, INIT_PISSA_SAVED):  # from a killed first epoch
                with contextlib.suppress(FileNotFoundError):
                    (out_dir / name).unlink()
        return Plan()
    epoch, path = last
    begin = epoch + 1
    left = t.epoch_count - 1 - begin  # relative index of the last epoch in this launch
    save = t.epoch_save if left % t.epoch_save == 0 else 1  # so the final epoch is saved
    load = out_dir / f"resume-from-rwkv-{epoch}.pth"
    if method is PeftMethod.STATE:
        if write:
            _merge_base(prof, path, load)
        return Plan(epoch_begin=begin, base_override=str(load), epoch_save=save)
    pissa_init = ""
    if method is PeftMethod.PISSA:
        saved = out_dir / INIT_PISSA_SAVED
        if write and (out_dir / INIT_PISSA).is_file():
            os.replace(out_dir / INIT_PISSA, saved)
        pissa_init = str(saved)
    if write:
        checkpoints.prefixed_copy(path, load)
    return Plan(epoch_begin=begin, adapter_load=str(load), pissa_init=pissa_init,
                epoch_save=save)


def _merge_base(prof: Profile, states: Path, target: Path) -> None:
    base = checkpoints.load(prof.model.base_model_path())
    base.update(checkpoints.load(states))
    checkpoints.save(target, base)


def restore_pissa_init(out_dir: Path) -> Path | None:
    """Put init_pissa.pth back under its own name after a resumed launch; return it."""
    saved, final = out_dir / INIT_PISSA_SAVED, out_dir / INIT_PISSA
    if saved.is_file() and not final.is_file():
        os.replace(saved, final)
    return final if final.is_file() else None


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break  # torn last line of a killed writer
        kept.append(line)
    return kept


def keep_history(prof: Profile, out_dir: Path, epoch_begin: int) -> None:
    """Before a resumed launch: save the steps of epochs < epoch_begin to loss_data.prev.jsonl."""
    state = _state(out_dir)
    earlier = (_lines(out_dir / PREV) if state else []) + _lines(out_dir / "loss_data.jsonl")
    keep = earlier[: epoch_begin * steps_per_epoch(prof)]
    atomic.write_text(out_dir / PREV, "".join(line + "\n" for line in keep))
    atomic.write_json(out_dir / STATE, {"epoch_begin": epoch_begin, "kept_steps": len(keep)})


def merge_history(out_dir: Path) -> None:
    """After the last launch: loss_data.jsonl = kept earlier steps + this launch's steps."""
    state = _state(out_dir)
    if not state:
        return
    prev, cur = _lines(out_dir / PREV), _lines(out_dir / "loss_data.jsonl")
    if cur[: len(prev)] != prev or not prev:  # not merged yet (idempotent after a crash)
        if cur:
            first = json.loads(cur[0])
            first["resumed_from_epoch"] = state["epoch_begin"] - 1
            cur[0] = json.dumps(first)
        atomic.write_text(out_dir / "loss_data.jsonl", "".join(x + "\n" for x in prev + cur))
    for name in (PREV, STATE):
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()


def _state(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
