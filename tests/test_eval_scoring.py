"""Scoring with the rwkv package, checked against an independent token-by-token computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from peftflow.errors import ConfigError
from peftflow.evaluate import merge, scoring, suites
from peftflow.train import training_profile as profile_mod
from peftflow.train.tiny import init_tiny_rwkv7

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> object:
    path = init_tiny_rwkv7(tmp_path_factory.mktemp("tiny") / "tiny.pth", 2, 128, seed=7)
    return scoring.load_model(path, "cpu fp32", threads=1)


Windows = tuple[tuple[int, ...], ...]


@pytest.fixture(scope="module")
def windows() -> Windows:
    suite = suites.load(ROOT / "configs" / "eval" / "pydoc_domain.yaml")
    docs = suites.tokenize(suite, suites.encoder())
    return (docs.windows[0][:60], docs.windows[5][:2], docs.windows[9][:33])


def rnn_loss(model: object, window: tuple[int, ...]) -> float:
    """Mean loss from feeding one token at a time (RNN mode) with a float64 log-softmax."""
    state, total = None, 0.0
    for position in range(len(window) - 1):
        logits, state = model.forward([window[position]], state)  # type: ignore[attr-defined]
        logits = logits.double()
        total += float(torch.logsumexp(logits, 0) - logits[window[position + 1]])
    return total / (len(window) - 1)


def test_full_output_loss_equals_token_by_token_rnn_loss(
    tiny_model: object, windows: Windows
) -> None:
    for window in windows:
        scored = scoring.score_window(tiny_model, window)
        assert scored.tokens == len(window) - 1
        assert abs(scored.loss_sum / scored.tokens - rnn_loss(tiny_model, window)) < 1e-4


def test_chunked_scoring_carries_the_state(tiny_model: object, windows: Windows) -> None:
    whole = scoring.score_window(tiny_model, windows[0])
    chunked = scoring.score_window(tiny_model, windows[0], chunk=7)
    assert chunked.tokens == whole.tokens
    assert abs(chunked.loss_sum - whole.loss_sum) / whole.tokens < 1e-4


def test_random_model_scores_near_uniform_loss(tiny_model: object, windows: Windows) -> None:
    scored = scoring.score_window(tiny_model, windows[0])
    assert abs(scored.loss_sum / scored.tokens - math.log(65536)) < 1.0


def test_compare_weights_tokens_and_bootstraps_a_fixed_interval() -> None:
    base = [scoring.DocScore(40.0, 10), scoring.DocScore(12.0, 2), scoring.DocScore(30.0, 10)]
    adapted = [scoring.DocScore(30.0, 10), scoring.DocScore(12.0, 2), scoring.DocScore(27.0, 10)]
    c = scoring.compare(base, adapted, resamples=500, seed=0)
    assert (c.documents, c.tokens) == (3, 22)
    assert c.base_loss == pytest.approx(82 / 22)
    assert c.adapted_loss == pytest.approx(69 / 22)
    assert c.relative_change == pytest.approx((69 - 82) / 82)
    assert c.ci95[0] <= c.relative_change <= c.ci95[1] <= 0
    assert scoring.compare(base, adapted, resamples=500, seed=0).ci95 == c.ci95
    assert c.base_ppl == pytest.approx(math.exp(82 / 22))


def test_compare_refuses_scores_over_different_tokens() -> None:
    with pytest.raises(ValueError, match="exactly the same tokens"):
        scoring.compare([scoring.DocScore(1.0, 2)], [scoring.DocScore(1.0, 3)])


def test_bad_strategy_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval strategy 'gpu fp8'"):
        scoring.load_model(tmp_path / "m.pth", "gpu fp8")


def test_merged_lora_in_rwkv_scores_like_the_trainers_unmerged_lora_forward(
    tmp_path: Path, windows: Windows
) -> None:
    """Merge + rwkv scoring vs an independent RWKV-7 (the cpu-reference trainer's model) that
    applies the same adapter unmerged, as W x + alpha/r * B A x during training."""
    from peftflow.train.cpu_model import RWKV7

    base_path = init_tiny_rwkv7(tmp_path / "base.pth", 2, 128, seed=11)
    base = torch.load(base_path, weights_only=True)
    data = yaml.safe_load((ROOT / "configs" / "profiles" / "smoke_cpu.yaml").read_text())
    data["peft"]["lora"] = {"r": 4, "alpha": 12}
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(data))
    prof = profile_mod.load(tmp_path / "profile.yaml")
    reference = RWKV7(base, r=4, alpha=12)
    gen = torch.Generator().manual_seed(5)
    adapter = {}
    for name, tensor in reference.state_dict().items():
        if ".lora_" in name:
            adapter[name] = torch.randn(tensor.shape, generator=gen) * 0.05
    adapter["ln_out.weight"] = base["ln_out.weight"] * 1.1
    reference.load_state_dict(adapter, strict=False)
    merged = merge.merge(base, adapter, prof, Path("adapter.pth"))
    model = scoring.load_model(merge.write_merged(merged.state_dict, tmp_path / "merged.pth"),
                               "cpu fp32", threads=1)
    window = windows[0]
    with torch.no_grad():
        logits = reference(torch.tensor([window[:-1]])).reshape(len(window) - 1, -1)
        expected = torch.nn.functional.cross_entropy(logits.double(), torch.tensor(window[1:]))
    scored = scoring.score_window(model, window)
    assert abs(scored.loss_sum / scored.tokens - float(expected)) < 1e-4
