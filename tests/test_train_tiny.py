"""The tiny base model and the CPU RWKV-7: deterministic, loadable by `rwkv`, same logits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftflow.train import checkpoints
from peftflow.train.cpu_model import _WKV7, RWKV7
from peftflow.train.tiny import init_tiny_rwkv7, tiny_state_dict

ROOT = Path(__file__).resolve().parents[1]
TOKENS = [1, 2, 3, 400, 5000, 17, 65529, 0, 33, 11, 261, 4596] * 4

RWKV_LOGITS = """
import os, sys
os.environ["RWKV_V7_ON"] = "1"
import torch
from rwkv.model import RWKV
model = RWKV(model=sys.argv[1][: -len(".pth")], strategy="cpu fp32")
logits, _ = model.forward([int(t) for t in sys.argv[3].split(",")], None, full_output=True)
torch.save(logits, sys.argv[2])
"""


def rwkv_package_logits(model_path: Path, tmp_path: Path, tokens: list[int]) -> torch.Tensor:
    """Logits of the `rwkv` pip package (x070, cpu fp32), in a fresh process (it reads
    RWKV_V7_ON at import time)."""
    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", RWKV_LOGITS, str(model_path), str(out),
                    ",".join(map(str, tokens))], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "RWKV_V7_ON": "1"})
    return torch.load(out)


def test_the_tiny_model_is_deterministic_from_its_seed(tmp_path: Path) -> None:
    a = init_tiny_rwkv7(tmp_path / "a.pth", 1, 64, seed=7, vocab_size=512)
    b = init_tiny_rwkv7(tmp_path / "b.pth", 1, 64, seed=7, vocab_size=512)
    c = init_tiny_rwkv7(tmp_path / "c.pth", 1, 64, seed=8, vocab_size=512)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    mtime = a.stat().st_mtime_ns
    init_tiny_rwkv7(a, 1, 64, seed=7, vocab_size=512)  # identical file: left alone
    assert a.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".tmp-*"))


def test_the_tiny_model_has_the_rwkv7_layout() -> None:
    sd = tiny_state_dict(2, 128, seed=1, vocab_size=1000)
    assert sd["emb.weight"].shape == sd["head.weight"].shape == (1000, 128)
    assert sd["blocks.0.att.r_k"].shape == (2, 64)
    assert sd["blocks.1.att.x_r"].shape == (1, 1, 128)
    assert sd["blocks.1.att.w1"].shape[0] == 128 and sd["blocks.1.att.w2"].shape[1] == 128
    assert sd["blocks.1.ffn.key.weight"].shape == (512, 128)
    assert "blocks.0.att.v1" not in sd and "blocks.1.att.v1" in sd
    assert "blocks.0.ln0.weight" in sd and "blocks.1.ln0.weight" not in sd


def test_model_init_tiny_command_creates_the_profile_base_model(tmp_path: Path) -> None:
    env = {**os.environ, "PEFTFLOW_MODELS_ROOT": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "peftflow.cli.main", "model", "init-tiny",
                             "--profile", str(ROOT / "configs/profiles/smoke_cpu.yaml")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "smoke" / "rwkv7-tiny-L2-D128.pth"
    assert result.stdout.strip() == str(path)
    sd = torch.load(path)
    assert torch.equal(sd["blocks.1.att.key.weight"],
                       tiny_state_dict(2, 128, 20261127)["blocks.1.att.key.weight"])
    bad = subprocess.run([sys.executable, "-m", "peftflow.cli.main", "model", "init-tiny",
                          "--out", str(tmp_path / "x.pth"), "--n-layer", "1"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--n-embd" in bad.stderr


def test_the_wkv_backward_matches_numerical_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    B, T, H, N = 2, 5, 2, 4

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    kk = torch.nn.functional.normalize(rand(B, T, H, N), dim=-1)
    a = torch.rand(B, T, H, N, generator=gen, dtype=torch.float64)
    decay = torch.rand(B, T, H, N, generator=gen, dtype=torch.float64)
    inputs = [rand(B, T, H, N), decay, rand(B, T, H, N), rand(B, T, H, N), -kk, kk * a]
    assert torch.autograd.gradcheck(_WKV7.apply, [x.requires_grad_() for x in inputs])


@pytest.mark.slow
def test_cpu_forward_equals_the_rwkv_package_with_and_without_an_adapter(
        tmp_path: Path, smoke_base_model: Path) -> None:
    """Training (peftflow's RWKV7) and evaluation (`rwkv` package) compute the same model."""
    base = checkpoints.load(smoke_base_model)
    torch.manual_seed(0)
    model = RWKV7(base, r=4, alpha=8.0).eval()
    with torch.no_grad():
        ours = model(torch.tensor([TOKENS]))[0]
    theirs = rwkv_package_logits(smoke_base_model, tmp_path, TOKENS)
    assert (ours - theirs).abs().max().item() < 1e-3

    # A non-zero adapter (LoRA B and the ln tensors changed), merged by hand for `rwkv`.
    model.train_parts(("ln",))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
        adapted = model(torch.tensor([TOKENS]))[0]
    merged = dict(base)
    for key, tensor in model.trainable_state_dict().items():
        if key.endswith(".lora_A"):
            stem = key[: -len(".lora_A")]
            delta = model.get_submodule(stem).scaling * \
                model.get_parameter(stem + ".lora_B") @ tensor
            merged[stem + ".weight"] = base[stem + ".weight"] + delta
        elif not key.endswith(".lora_B"):
            merged[key] = tensor
    torch.save(merged, tmp_path / "merged.pth")
    theirs = rwkv_package_logits(tmp_path / "merged.pth", tmp_path, TOKENS)
    assert (adapted - ours).abs().max().item() > 0.01  # the adapter changes the output
    assert (adapted - theirs).abs().max().item() < 1e-3
