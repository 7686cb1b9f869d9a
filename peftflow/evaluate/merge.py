"""Merge an RWKV-PEFT adapter checkpoint into its base model's weights, in memory.

The formulas follow RWKV-PEFT (pinned commit 5b8aac9), `merge/merge.py`, `merge/merge_disha.py`
and the forward passes of `rwkvt/peft/rwkvLinear.py` that they must reproduce:
- LoRA:  W' = W + (B @ A) * alpha / r, alpha and r from the training profile (never a default).
- PiSSA: W' = W - B0 @ A0 + B @ A, with B0/A0 from `init_pissa.pth` (no scaling).
- DiSHA bone (disha [r, out]): W'[:, j*r + s] = W[:, j*r + s] + disha[s, :] for every block j.
- DiSHA bat (disha [in/r, r, r]): block (a, b) of W (r x r) becomes W_ab + W_ab @ D_b + D_b.
Every other tensor of the adapter (the `train_parts`, e.g. ln*) replaces the base tensor.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftflow.errors import ConfigError, IntegrityError, MissingInputError
from peftflow.train.training_profile import PeftMethod, Profile

if TYPE_CHECKING:
    import torch

LOW_RANK_SUFFIXES = (".lora_A", ".lora_B", ".disha")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class MergeResult:
    state_dict: dict[str, torch.Tensor]
    method: PeftMethod
    scaling: float | None  # alpha / r for LoRA; None where the method has no scaling
    merged: tuple[str, ...]  # base weights changed by a low-rank / DiSHA delta
    replaced: tuple[str, ...]  # base tensors replaced by a trained full tensor


def load_checkpoint(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """torch.load a state dict of tensors; a clear error for a missing or unreadable file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise IntegrityError(f"{path}: {what} is empty (0 bytes); the writer was interrupted")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile,
            OSError, KeyError, IndexError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise IntegrityError(
            f"{path}: {what} is not a readable PyTorch checkpoint ({reason}); the file is "
            "corrupt or truncated: restore it from the run's artifacts or rerun the stage "
            "that wrote it"
        ) from None
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise IntegrityError(f"{path}: {what} is a torch file but not a state dict of tensors")
    # RWKV-PEFT strips the Lightning 'model.' prefix when saving; accept files that kept it.
    return {k.removeprefix("model."): v for k, v in loaded.items()}


def n_layers(state_dict: Mapping[str, object]) -> int:
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k))}
    return max(blocks) + 1 if blocks else 0


def check_base(base: Mapping[str, torch.Tensor], profile: Profile, path: Path) -> None:
    """The base model must have the shape the profile (and so the adapter) was trained with."""
    if "emb.weight" not in base or "blocks.0.att.r_k" not in base:
        raise IntegrityError(f"{path}: not an RWKV-7 model (no emb.weight / blocks.0.att.r_k)")
    vocab, width = base["emb.weight"].shape
    layers = n_layers(base)
    want = profile.model
    if (layers, width, vocab) != (want.n_layer, want.n_embd, want.vocab_size):
        raise IntegrityError(
            f"{path}: base model is L{layers} C{width} V{vocab}, but profile {profile.path} "
            f"says L{want.n_layer} C{want.n_embd} V{want.vocab_size}; point model.base_model "
            "at the model the adapter was trained on"
        )


def _mismatch(adapter_path: Path, message: str) -> IntegrityError:
    return IntegrityError(
        f"{adapter_path}: {message}; the adapter was trained on a different architecture "
        "than this base model (check --profile and its model.base_model)"
    )


def _method_of(adapter: Mapping[str, object], profile: Profile, adapter_path: Path) -> PeftMethod:
    method = profile.peft.method
    if method is PeftMethod.STATE or profile.training.train_type == "state" or any(
        k.endswith("time_state") for k in adapter
    ):
        raise ConfigError(
            f"{adapter_path}: state tuning is not supported yet by evaluate_adapter: the rwkv "
            "package has no way to load a trained initial state from a model file, so the "
            "tuned state would be silently ignored"
        )
    has_lora = any(k.endswith((".lora_A", ".lora_B")) for k in adapter)
    has_disha = any(k.endswith(".disha") for k in adapter)
    expected = {PeftMethod.LORA: has_lora, PeftMethod.PISSA: has_lora, PeftMethod.DISHA: has_disha}
    if not expected[method] or (has_lora and has_disha):
        found = "LoRA" if has_lora else "DiSHA" if has_disha else "no low-rank"
        raise IntegrityError(
            f"{adapter_path}: holds {found} tensors but profile {profile.path} trains with "
            f"method {method.value!r}; pass the profile the adapter was trained with"
        )
    return method


def merge(
    base: Mapping[str, torch.Tensor],
    adapter: Mapping[str, torch.Tensor],
    profile: Profile,
    adapter_path: Path,
    pissa_init: Mapping[str, torch.Tensor] | None = None,
) -> MergeResult:
    """The adapted model's state dict: base with the adapter merged in (base is not modified)."""
    import torch

    method = _method_of(adapter, profile, adapter_path)
    merged_sd = dict(base)
    merged: list[str] = []
    replaced: list[str] = []
    scaling = profile.peft.lora.scaling if method is PeftMethod.LORA else None
    rank = profile.peft.pissa.r if method is PeftMethod.PISSA else profile.peft.lora.r
    for key, tensor in adapter.items():
        if key.endswith(LOW_RANK_SUFFIXES):
            continue
        if key not in base:
            raise _mismatch(adapter_path, f"tensor {key} has no counterpart in the base model")
        if tuple(tensor.shape) != tuple(base[key].shape):
            raise _mismatch(adapter_path, f"tensor {key} is {list(tensor.shape)}, the base "
                            f"model's is {list(base[key].shape)}")
        merged_sd[key] = tensor.to(base[key].dtype)
        replaced.append(key)
    suffix = ".disha" if method is PeftMethod.DISHA else ".lora_A"
    targets = sorted(k.removesuffix(suffix) for k in adapter if k.endswith(suffix))
    for prefix in targets:
        weight_key = prefix + ".weight"
        if weight_key not in base:
            raise _mismatch(adapter_path, f"{prefix}{suffix} targets {weight_key}, which the "
                            "base model does not have")
        weight = base[weight_key].float()
        with torch.no_grad():
            if method is PeftMethod.DISHA:
                delta = _disha_delta(weight, adapter[prefix + ".disha"].float(), prefix,
                                     adapter_path, profile)
            else:
                delta = _lora_delta(weight, adapter, prefix, rank, adapter_path)
                if method is PeftMethod.PISSA:
                    delta = delta - _pissa_init_product(pissa_init, prefix, weight.shape)
                else:
                    delta = delta * float(scaling)  # type: ignore[arg-type]
            merged_sd[weight_key] = (weight + delta).to(base[weight_key].dtype)
        merged.append(weight_key)
    stray = [k for k in adapter
             if k.endswith(".lora_B") and k.removesuffix(".lora_B") not in targets]
    if stray:
        raise IntegrityError(f"{adapter_path}: {stray[0]} has no matching lora_A; the "
                             "checkpoint is incomplete")
    covered = {int(m.group(1)) for k in merged if (m := _BLOCK.match(k))}
    missing = sorted(set(range(n_layers(base))) - covered)
    if missing:
        raise _mismatch(adapter_path, f"no {method.value} tensors for block(s) "
                        f"{', '.join(map(str, missing))} of the {n_layers(base)}-block base model")
    return MergeResult(merged_sd, method, scaling, tuple(merged), tuple(replaced))


def _lora_delta(
    weight: torch.Tensor, adapter: Mapping[str, torch.Tensor], prefix: str, rank: int, path: Path
) -> torch.Tensor:
    if prefix + ".lora_B" not in adapter:
        raise IntegrityError(f"{path}: {prefix}.lora_A has no matching lora_B; the "
                             "checkpoint is incomplete")
    a, b = adapter[prefix + ".lora_A"].float(), adapter[prefix + ".lora_B"].float()
    out_f, in_f = weight.shape
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_f or b.shape[0] != out_f or \
            a.shape[0] != b.shape[1]:
        raise _mismatch(path, f"{prefix}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not "
                        f"fit the base weight {list(weight.shape)} "
                        f"(want [r, {in_f}] / [{out_f}, r])")
    if a.shape[0] != rank:
        raise IntegrityError(
            f"{path}: {prefix} has LoRA rank {a.shape[0]}, the profile says r {rank}; pass "
            "the profile the adapter was trained with (alpha/r must be the training values)"
        )
    return b @ a


def _pissa_init_product(
    init: Mapping[str, torch.Tensor] | None, prefix: str, shape: torch.Size
) -> torch.Tensor:
    if init is None:
        raise MissingInputError("PiSSA adapters need init_pissa.pth (pass --pissa-init)")
    a_key, b_key = prefix + ".init_lora_A", prefix + ".init_lora_B"
    if a_key not in init or b_key not in init:
        raise IntegrityError(f"init_pissa.pth has no {a_key} / {b_key}; it belongs to another run")
    product = init[b_key].float() @ init[a_key].float()
    if tuple(product.shape) != tuple(shape):
        raise IntegrityError(f"init_pissa.pth: {prefix} init product is {list(product.shape)}, "
                             f"the base weight is {list(shape)}; it belongs to another model")
    return product


def _disha_delta(
    weight: torch.Tensor, disha: torch.Tensor, prefix: str, path: Path, profile: Profile
) -> torch.Tensor:
    out_f, in_f = weight.shape
    mode, rank = profile.peft.disha.mode, profile.peft.disha.r
    found_mode = {2: "bone", 3: "bat"}.get(disha.dim())
    found_rank = disha.shape[0] if disha.dim() == 2 else disha.shape[-1]
    if found_mode is not None and (found_mode, found_rank) != (mode, rank):
        raise IntegrityError(
            f"{path}: {prefix}.disha is a {found_mode} adapter of r {found_rank}, the profile "
            f"says mode {mode!r} r {rank}; pass the profile the adapter was trained with"
        )
    if disha.dim() == 2:  # bone: disha [r, out]
        r = disha.shape[0]
        if disha.shape[1] != out_f:
            raise _mismatch(path, f"{prefix}.disha {list(disha.shape)} does not fit "
                            f"the base weight {list(weight.shape)} (want [r, {out_f}])")
        repeats = -(-in_f // r)  # the forward pads x to a multiple of r
        return disha.t().repeat(1, repeats)[:, :in_f]
    if disha.dim() == 3:  # bat: disha [in/r, r, r]
        blocks_b, r, r2 = disha.shape
        if r != r2 or in_f % r or out_f % r or blocks_b != in_f // r:
            raise _mismatch(path, f"{prefix}.disha {list(disha.shape)} does not fit "
                            f"the base weight {list(weight.shape)} (want [{in_f}//r, r, r])")
        tiles = weight.reshape(out_f // r, r, in_f // r, r).permute(0, 2, 1, 3)  # [a, b, r, r]
        delta = tiles @ disha + disha
        return delta.permute(0, 2, 1, 3).reshape(out_f, in_f)
    raise _mismatch(path, f"{prefix}.disha has {disha.dim()} dimensions (want 2 or 3)")


def write_merged(state_dict: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """torch.save the merged model atomically (a reader never sees a partial .pth)."""
    import torch

    from peftflow.store import atomic

    target = Path(path)
    if target.suffix != ".pth":
        raise ConfigError(f"{target}: a merged model must end in .pth (the rwkv package adds it)")
    with atomic.atomic_open(target, "wb") as handle:
        torch.save(dict(state_dict), handle)
    return target.resolve()
