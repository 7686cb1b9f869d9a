"""Merging adapters into base weights: LoRA, PiSSA, DiSHA, and the errors of wrong inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from peftflow.errors import ConfigError, IntegrityError, MissingInputError
from peftflow.evaluate import merge
from peftflow.train import training_profile as profile_mod

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "profiles" / "smoke_cpu.yaml"


def make_profile(tmp_path: Path, name: str = "p", **peft: object) -> profile_mod.Profile:
    """The smoke profile with its `peft:` section updated (e.g. lora={"r": 1, "alpha": 2})."""
    data = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    if peft.get("method", "lora") != "lora":
        data["backend"] = "rwkv-peft"  # cpu-reference trains LoRA only
        data["model"]["ctx_len"] = 128
        data["runtime"] = {"precision": "bf16", "eval_strategy": "cpu fp32"}
    data["peft"].update(peft)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return profile_mod.load(path)


def lora_pair(out_f: int, in_f: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(r, in_f, generator=gen), torch.randn(out_f, r, generator=gen)


ADAPTER = Path("adapter.pth")


def test_lora_merge_matches_a_hand_computed_case(tmp_path: Path) -> None:
    prof = make_profile(tmp_path, lora={"r": 1, "alpha": 2})  # scaling alpha/r = 2
    base = {"blocks.0.att.key.weight": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
            "blocks.0.ln1.weight": torch.tensor([1.0, 1.0])}
    adapter = {"blocks.0.att.key.lora_A": torch.tensor([[1.0, 0.0, -1.0]]),
               "blocks.0.att.key.lora_B": torch.tensor([[1.0], [2.0]]),
               "blocks.0.ln1.weight": torch.tensor([0.5, 2.0])}
    result = merge.merge(base, adapter, prof, ADAPTER)
    # B @ A = [[1, 0, -1], [2, 0, -2]]; times 2, added to W:
    assert torch.equal(result.state_dict["blocks.0.att.key.weight"],
                       torch.tensor([[3.0, 2.0, 1.0], [8.0, 5.0, 2.0]]))
    assert torch.equal(result.state_dict["blocks.0.ln1.weight"], torch.tensor([0.5, 2.0]))
    assert result.scaling == 2.0
    assert result.merged == ("blocks.0.att.key.weight",)
    assert result.replaced == ("blocks.0.ln1.weight",)
    assert torch.equal(base["blocks.0.att.key.weight"][0], torch.tensor([1.0, 2.0, 3.0]))


def test_alpha_is_taken_from_the_training_profile(tmp_path: Path) -> None:
    """Two profiles that differ only in alpha merge the same adapter differently."""
    weight = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    a, b = lora_pair(6, 5, 4, seed=1)
    base = {"blocks.0.ffn.key.weight": weight}
    adapter = {"blocks.0.ffn.key.lora_A": a, "blocks.0.ffn.key.lora_B": b}
    merged = {}
    for alpha in (16, 32):
        prof = make_profile(tmp_path, f"alpha{alpha}", lora={"r": 4, "alpha": alpha})
        merged[alpha] = merge.merge(base, adapter, prof, ADAPTER).state_dict[
            "blocks.0.ffn.key.weight"]
        assert torch.equal(merged[alpha], weight + (b @ a) * (alpha / 4))
    assert not torch.allclose(merged[16], merged[32])
    assert torch.allclose(merged[32] - weight, 2 * (merged[16] - weight), atol=1e-5)


def test_lora_rank_that_differs_from_the_profile_is_refused(tmp_path: Path) -> None:
    prof = make_profile(tmp_path, lora={"r": 8, "alpha": 16})
    a, b = lora_pair(4, 4, 2, seed=0)
    with pytest.raises(IntegrityError, match="LoRA rank 2, the profile says r 8"):
        merge.merge({"blocks.0.att.key.weight": torch.zeros(4, 4)},
                    {"blocks.0.att.key.lora_A": a, "blocks.0.att.key.lora_B": b}, prof, ADAPTER)


def test_bf16_base_weights_stay_bf16(tmp_path: Path) -> None:
    prof = make_profile(tmp_path, lora={"r": 2, "alpha": 4})
    a, b = lora_pair(4, 4, 2, seed=3)
    result = merge.merge({"blocks.0.att.key.weight": torch.ones(4, 4, dtype=torch.bfloat16)},
                         {"blocks.0.att.key.lora_A": a.bfloat16(),
                          "blocks.0.att.key.lora_B": b.bfloat16()}, prof, ADAPTER)
    assert result.state_dict["blocks.0.att.key.weight"].dtype == torch.bfloat16


def test_pissa_merge_replaces_the_init_product_with_the_trained_one(tmp_path: Path) -> None:
    """RWKV-PEFT: W' = W - B0 @ A0 + B @ A, no alpha scaling; init keys may carry 'model.'."""
    prof = make_profile(tmp_path, method="pissa", pissa={"r": 2})
    weight = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    a0, b0 = lora_pair(5, 3, 2, seed=1)
    a, b = lora_pair(5, 3, 2, seed=2)
    init = {"blocks.0.att.value.init_lora_A": a0, "blocks.0.att.value.init_lora_B": b0}
    result = merge.merge({"blocks.0.att.value.weight": weight},
                         {"blocks.0.att.value.lora_A": a, "blocks.0.att.value.lora_B": b},
                         prof, ADAPTER, init)
    # The training forward is (W - B0 A0) x + B A x: the merged weight must give the same output.
    x = torch.randn(3)
    expected = (weight - b0 @ a0) @ x + b @ (a @ x)
    merged = result.state_dict["blocks.0.att.value.weight"]
    torch.testing.assert_close(merged @ x, expected, rtol=1e-5, atol=1e-5)
    assert result.scaling is None
    with pytest.raises(MissingInputError, match="init_pissa.pth"):
        merge.merge({"blocks.0.att.value.weight": weight},
                    {"blocks.0.att.value.lora_A": a, "blocks.0.att.value.lora_B": b},
                    prof, ADAPTER, None)


@pytest.mark.parametrize("in_f", [8, 10])  # 10: not a multiple of r, the forward pads x
def test_disha_bone_merge_reproduces_the_training_forward(tmp_path: Path, in_f: int) -> None:
    r, out_f = 4, 6
    prof = make_profile(tmp_path, method="disha", disha={"mode": "bone", "r": r})
    gen = torch.Generator().manual_seed(0)
    weight, disha = torch.randn(out_f, in_f, generator=gen), torch.randn(r, out_f, generator=gen)
    result = merge.merge({"blocks.0.ffn.key.weight": weight}, {"blocks.0.ffn.key.disha": disha},
                         prof, ADAPTER)
    x = torch.randn(in_f, generator=gen)
    padded = torch.nn.functional.pad(x, (0, (r - in_f % r) % r))
    expected = weight @ x + padded.view(-1, r).sum(dim=0) @ disha  # BoneLinear.forward
    torch.testing.assert_close(result.state_dict["blocks.0.ffn.key.weight"] @ x, expected)


def test_disha_bat_merge_reproduces_the_training_forward(tmp_path: Path) -> None:
    r, out_f, in_f = 2, 4, 6
    prof = make_profile(tmp_path, method="disha", disha={"mode": "bat", "r": r})
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(out_f, in_f, generator=gen)
    disha = torch.randn(in_f // r, r, r, generator=gen)
    result = merge.merge({"blocks.0.att.key.weight": weight}, {"blocks.0.att.key.disha": disha},
                         prof, ADAPTER)
    expected = weight.clone()  # BatLinear: block (a, b) gets W_ab @ D_b + D_b added
    for i in range(out_f // r):
        for j in range(in_f // r):
            tile = weight[i * r:(i + 1) * r, j * r:(j + 1) * r]
            expected[i * r:(i + 1) * r, j * r:(j + 1) * r] += tile @ disha[j] + disha[j]
    torch.testing.assert_close(result.state_dict["blocks.0.att.key.weight"], expected)


def test_state_tuning_is_not_supported_yet(tmp_path: Path) -> None:
    prof = make_profile(tmp_path)
    with pytest.raises(ConfigError, match="state tuning is not supported yet"):
        merge.merge({"blocks.0.att.key.weight": torch.zeros(2, 2)},
                    {"blocks.0.att.time_state": torch.zeros(1, 2, 2)}, prof, ADAPTER)


def test_adapter_of_another_method_names_the_profile(tmp_path: Path) -> None:
    prof = make_profile(tmp_path, method="disha", disha={"mode": "bone", "r": 2})
    a, b = lora_pair(2, 2, 2, seed=0)
    with pytest.raises(IntegrityError, match="holds LoRA tensors but profile .* 'disha'"):
        merge.merge({"blocks.0.att.key.weight": torch.zeros(2, 2)},
                    {"blocks.0.att.key.lora_A": a, "blocks.0.att.key.lora_B": b}, prof, ADAPTER)


@pytest.mark.parametrize(
    ("adapter_keys", "message"),
    [
        ({"blocks.0.att.key": (8, 128, 128)}, r"lora_A \[8, 128\] / lora_B \[128, 8\] do not fit"),
        ({"blocks.0.att.key": (8, 192, 192), "blocks.1.att.key": (8, 192, 192),
          "blocks.2.att.key": (8, 192, 192)}, "blocks.2.att.key.lora_A targets"),
        ({"blocks.0.att.key": (8, 192, 192)}, r"no lora tensors for block\(s\) 1"),
    ],
    ids=["wrong-width", "extra-block", "missing-block"],
)
def test_architecture_mismatch_is_an_integrity_error(
    tmp_path: Path, adapter_keys: dict[str, tuple[int, int, int]], message: str
) -> None:
    prof = make_profile(tmp_path, lora={"r": 8, "alpha": 16})
    base = {f"blocks.{i}.att.key.weight": torch.zeros(192, 192) for i in range(2)}
    adapter = {}
    for prefix, (r, out_f, in_f) in adapter_keys.items():
        adapter[prefix + ".lora_A"], adapter[prefix + ".lora_B"] = lora_pair(out_f, in_f, r, 0)
    with pytest.raises(IntegrityError, match=message):
        merge.merge(base, adapter, prof, ADAPTER)


def test_trained_tensor_with_another_shape_is_an_integrity_error(tmp_path: Path) -> None:
    prof = make_profile(tmp_path, lora={"r": 2, "alpha": 4})
    a, b = lora_pair(4, 4, 2, seed=0)
    with pytest.raises(IntegrityError, match=r"blocks.0.ln1.weight is \[128\], the base"):
        merge.merge({"blocks.0.att.key.weight": torch.zeros(4, 4),
                     "blocks.0.ln1.weight": torch.ones(192)},
                    {"blocks.0.att.key.lora_A": a, "blocks.0.att.key.lora_B": b,
                     "blocks.0.ln1.weight": torch.ones(128)}, prof, ADAPTER)


def test_missing_adapter_file_is_a_missing_input(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="adapter checkpoint not found"):
        merge.load_checkpoint(tmp_path / "rwkv-1.pth", "adapter checkpoint")


def test_corrupt_and_truncated_adapter_files_are_integrity_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"blocks.0.att.key.lora_A": torch.zeros(8, 128)}, good)
    corrupt, truncated, empty, wrong = (tmp_path / n for n in ("c.pth", "t.pth", "e.pth", "w.pth"))
    corrupt.write_bytes(b"this is not a checkpoint\n" * 10)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty.write_bytes(b"")
    torch.save([1, 2, 3], wrong)
    for path in (corrupt, truncated):
        with pytest.raises(IntegrityError, match="not a readable PyTorch checkpoint"):
            merge.load_checkpoint(path, "adapter checkpoint")
    with pytest.raises(IntegrityError, match="is empty"):
        merge.load_checkpoint(empty, "adapter checkpoint")
    with pytest.raises(IntegrityError, match="not a state dict of tensors"):
        merge.load_checkpoint(wrong, "adapter checkpoint")
    assert set(merge.load_checkpoint(good, "adapter checkpoint")) == {"blocks.0.att.key.lora_A"}


def test_write_merged_is_atomic_and_loadable(tmp_path: Path) -> None:
    target = merge.write_merged({"x": torch.arange(3.0)}, tmp_path / "merged.pth")
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["merged.pth"]
    with pytest.raises(ConfigError, match=r"must end in \.pth"):
        merge.write_merged({}, tmp_path / "merged.bin")


def test_lightning_model_prefix_is_stripped_from_checkpoint_keys(tmp_path: Path) -> None:
    """RWKV-PEFT's init_pissa.pth names tensors 'model.blocks...' (merge.py at 5b8aac9)."""
    path = tmp_path / "init_pissa.pth"
    torch.save({"model.blocks.0.att.key.init_lora_A": torch.zeros(2, 2)}, path)
    assert set(merge.load_checkpoint(path, "PiSSA init")) == {"blocks.0.att.key.init_lora_A"}
