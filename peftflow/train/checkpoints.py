"""Adapter checkpoints `rwkv-{epoch}.pth` in a run folder: find, save atomically, load.

Layout (both backends, RWKV-PEFT's): a flat torch state dict without a `model.` prefix,
`blocks.N.att.{receptance,key,value,output}.lora_A [r,in]` / `.lora_B [out,r]`,
`blocks.N.ffn.{key,value}.lora_A|lora_B`, plus every tensor of a `train_parts` group trained
in full (for `ln`: `blocks.0.ln0.*`, `blocks.N.ln1.*`, `ln2.*`, `att.ln_x.*`, `ln_out.*`).
The merged weight is W + (lora_alpha / r) * lora_B @ lora_A.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from peftflow.errors import IntegrityError
from peftflow.store import atomic

CHECKPOINT_RE = re.compile(r"^rwkv-(\d+)\.pth$")


def checkpoint_path(out_dir: str | Path, epoch: int) -> Path:
    return Path(out_dir) / f"rwkv-{epoch}.pth"


def list_checkpoints(out_dir: str | Path) -> dict[int, Path]:
    """Epoch -> path of every complete `rwkv-N.pth` (temp files of a killed save are ignored)."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_file() and path.stat().st_size > 0:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def last_checkpoint(out_dir: str | Path) -> tuple[int, Path] | None:
    found = list_checkpoints(out_dir)
    if not found:
        return None
    epoch = max(found)
    return epoch, found[epoch]


def save(path: str | Path, state_dict: dict[str, Any]) -> Path:
    """torch.save through a temp file + rename: a kill mid-save leaves no partial checkpoint."""
    import torch

    with atomic.atomic_open(path, "wb") as handle:
        torch.save(state_dict, handle)
    return Path(path)


def load(path: str | Path) -> dict[str, Any]:
    """Load an adapter (or any flat tensor) checkpoint safely (weights only)."""
    import torch

    try:
        loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: say which and what to do
        raise IntegrityError(f"{path}: cannot be read as a torch checkpoint ({exc}); delete it "
                             "and rerun with --resume to continue from the one before") from None
    if not isinstance(loaded, dict):
        raise IntegrityError(f"{path}: not a state dict")
    return loaded


def adapter_keys_ok(state_dict: dict[str, Any]) -> bool:
    """True when the keys look like RWKV-PEFT adapter keys (no `model.` prefix, LoRA present)."""
    return bool(state_dict) and not any(k.startswith("model.") for k in state_dict) and any(
        k.endswith((".lora_A", ".lora_B")) for k in state_dict
    )


def prefixed_copy(source: str | Path, target: str | Path, prefix: str = "model.") -> Path:
    """Write `source` with every key prefixed (RWKV-PEFT's loaders expect Lightning's names)."""
    state = load(source)
    return save(target, {prefix + k: v for k, v in state.items()})
