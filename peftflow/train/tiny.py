"""A tiny random-initialised RWKV-7 (x070) base model, deterministic from a seed.

The state dict has exactly the layout the `rwkv` package (RWKV_V7_ON=1) and RWKV-PEFT load:
`emb.weight [V,C]`, `blocks.0.ln0.*`, per block `ln1/ln2`, `att.*`, `ffn.*`, then `ln_out.*`
and `head.weight [V,C]`. Every tensor is non-zero so that a forward comparison between two
implementations exercises every weight. Not a trained model: smoke runs and tests only.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from peftflow.errors import ConfigError
from peftflow.store import atomic
from peftflow.store.hashing import sha256_bytes, sha256_file

HEAD_SIZE = 64


def lora_dims(n_embd: int) -> dict[str, int]:
    """Widths of the decay, in-context-lr, value-residual and gate low-rank MLPs."""

    def dim(factor: float, power: float) -> int:
        return max(32, round(factor * math.pow(n_embd, power) / 32) * 32)

    return {"w": dim(1.8, 0.5), "a": dim(1.8, 0.5), "v": dim(1.3, 0.5), "g": dim(0.6, 0.8)}


def tiny_state_dict(n_layer: int, n_embd: int, seed: int,
                    vocab_size: int = 65536) -> dict[str, Any]:
    """Build the state dict (float32, CPU) of a random RWKV-7 with the given shape."""
    import torch

    if n_layer < 1 or n_embd < HEAD_SIZE or n_embd % HEAD_SIZE:
        raise ConfigError(
            f"tiny model shape n_layer={n_layer}, n_embd={n_embd}: need n_layer >= 1 and "
            f"n_embd a positive multiple of {HEAD_SIZE}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    C, H, V = n_embd, n_embd // HEAD_SIZE, vocab_size
    dims = lora_dims(C)

    def uniform(*shape: int, scale: float) -> torch.Tensor:
        return (torch.rand(*shape, generator=gen) * 2 - 1) * scale

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    ramp = torch.arange(C, dtype=torch.float32) / C  # 0 .. 1 across channels
    sd: dict[str, torch.Tensor] = {"emb.weight": uniform(V, C, scale=1e-1)}
    for i in range(n_layer):
        depth = i / max(1, n_layer - 1)  # 0 at the first block, 1 at the last
        keep = 1.0 - i / n_layer  # token-shift mixing weakens with depth
        p = f"blocks.{i}."
        if i == 0:
            sd[p + "ln0.weight"] = 1 + normal(C, std=0.02)
            sd[p + "ln0.bias"] = normal(C, std=0.02)
        for ln in ("ln1", "ln2"):
            sd[p + ln + ".weight"] = 1 + normal(C, std=0.02)
            sd[p + ln + ".bias"] = normal(C, std=0.02)
        a = p + "att."
        for name, power in (("r", 0.2), ("w", 0.9), ("k", 0.7), ("v", 0.7), ("a", 0.9), ("g", 0.2)):
            sd[a + "x_" + name] = (1 - ramp.pow(power * keep)).view(1, 1, C)
        decay = -7 + 5 * ramp.pow(0.85 + depth**0.5)
        sd[a + "w0"] = (decay + 0.5).view(1, 1, C)
        sd[a + "w1"] = normal(C, dims["w"], std=0.1 / math.sqrt(C))
        sd[a + "w2"] = normal(dims["w"], C, std=0.1 / math.sqrt(dims["w"]))
        sd[a + "a0"] = normal(C, std=0.1).view(1, 1, C)
        sd[a + "a1"] = normal(C, dims["a"], std=0.1 / math.sqrt(C))
        sd[a + "a2"] = normal(dims["a"], C, std=0.1 / math.sqrt(dims["a"]))
        if i > 0:  # block 0 computes v_first and has no value-residual mix
            sd[a + "v0"] = (1 + normal(C, std=0.1)).view(1, 1, C)
            sd[a + "v1"] = normal(C, dims["v"], std=0.1 / math.sqrt(C))
            sd[a + "v2"] = normal(dims["v"], C, std=0.1 / math.sqrt(dims["v"]))
        sd[a + "g1"] = normal(C, dims["g"], std=0.5 / math.sqrt(C))
        sd[a + "g2"] = normal(dims["g"], C, std=0.5 / math.sqrt(dims["g"]))
        sd[a + "k_k"] = (0.85 + normal(C, std=0.02)).view(1, 1, C)
        sd[a + "k_a"] = (1 + normal(C, std=0.02)).view(1, 1, C)
        sd[a + "r_k"] = normal(H, HEAD_SIZE, std=0.1)
        for name, scale in (("receptance", 0.5), ("key", 0.1), ("value", 0.5), ("output", 0.3)):
            sd[a + name + ".weight"] = uniform(C, C, scale=scale / math.sqrt(C))
        sd[a + "ln_x.weight"] = torch.full((C,), ((1 + i) / n_layer) ** 0.7) + normal(C, std=0.02)
        sd[a + "ln_x.bias"] = normal(C, std=0.02)
        f = p + "ffn."
        sd[f + "x_k"] = (1 - ramp.pow(keep**4)).view(1, 1, C)
        sd[f + "key.weight"] = uniform(4 * C, C, scale=1.0 / math.sqrt(C))
        sd[f + "value.weight"] = uniform(C, 4 * C, scale=0.3 / math.sqrt(4 * C))
    sd["ln_out.weight"] = 1 + normal(C, std=0.02)
    sd["ln_out.bias"] = normal(C, std=0.02)
    sd["head.weight"] = normal(V, C, std=0.5 / math.sqrt(C))
    return {k: v.float().contiguous() for k, v in sd.items()}


def serialize(state_dict: dict[str, Any]) -> bytes:
    """torch.save into bytes (deterministic for the same tensors)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def init_tiny_rwkv7(
    path: str | Path, n_layer: int, n_embd: int, seed: int, vocab_size: int = 65536
) -> Path:
    """Write the tiny model to `path` (atomically); an identical existing file is kept as is."""
    target = Path(path)
    if target.suffix != ".pth":
        raise ConfigError(f"{target}: the model file must end in .pth (the rwkv package adds it)")
    data = serialize(tiny_state_dict(n_layer, n_embd, seed, vocab_size))
    if target.is_file() and target.stat().st_size == len(data) and \
            sha256_file(target) == sha256_bytes(data):
        return target.resolve()
    atomic.write_bytes(target, data)
    return target.resolve()
