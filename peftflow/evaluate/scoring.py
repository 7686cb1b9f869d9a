"""Per-token cross-entropy of an RWKV-7 model on token windows, with the `rwkv` package."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow.errors import ConfigError, ResourceError

CHUNK = 512  # tokens per forward call; the state carries over, so scores do not depend on it
_STRATEGY = re.compile(r"^(cpu|cuda(?::\d+)?) (fp32|fp16|bf16)$")


@dataclass(frozen=True)
class DocScore:
    """Summed natural-log loss over a window's predicted tokens, and how many there were."""

    loss_sum: float
    tokens: int


def load_model(path: str | Path, strategy: str, threads: int = 0) -> Any:
    """An `rwkv` RWKV-7 model from a .pth file (RWKV_V7_ON=1 is set before the import)."""
    if not _STRATEGY.match(strategy):
        raise ConfigError(f"eval strategy {strategy!r}: use '<cpu|cuda> <fp32|fp16|bf16>'")
    # The rwkv package picks its RWKV-7 code path at import time from this variable.
    os.environ["RWKV_V7_ON"] = "1"
    import torch

    if strategy.startswith("cuda") and not torch.cuda.is_available():
        raise ResourceError(f"eval strategy {strategy!r} needs a GPU, and torch sees none; "
                            "check the driver, or use 'cpu fp32'")
    if threads > 0:
        torch.set_num_threads(threads)
    from rwkv.model import RWKV

    path = Path(path)
    if path.suffix != ".pth":
        raise ConfigError(f"{path}: the rwkv package loads <name>.pth files only; rename it")
    if not hasattr(RWKV, "generate_zero_state"):
        raise ConfigError("the rwkv package did not enable RWKV-7; RWKV_V7_ON must be set "
                          "before anything imports rwkv.model")
    return RWKV(model=str(path.with_suffix("")), strategy=strategy)


def threads_in_use() -> int:
    import torch

    return int(torch.get_num_threads())


def score_window(model: Any, window: Sequence[int], chunk: int = CHUNK) -> DocScore:
    """Loss of predicting window[1:] from window[:-1], one full_output forward per chunk."""
    import torch

    inputs, targets = list(window[:-1]), torch.tensor(window[1:], dtype=torch.long)
    state = None
    total = 0.0
    for start in range(0, len(inputs), chunk):
        piece = inputs[start:start + chunk]
        logits, state = model.forward(piece, state, full_output=True)
        logits = logits.float().reshape(len(piece), -1)
        target = targets[start:start + len(piece)].to(logits.device)
        per_token = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        total += float(per_token.double().sum())
    return DocScore(total, len(inputs))


def score_windows(
    model: Any,
    windows: Sequence[Sequence[int]],
    on_progress: Callable[[int, int], None] | None = None,
) -> list[DocScore]:
    """Score every window; on_progress(documents_done, tokens_done) after each."""
    scores: list[DocScore] = []
    done_tokens = 0
    for window in windows:
        scores.append(score_window(model, window))
        done_tokens += scores[-1].tokens
        if on_progress:
            on_progress(len(scores), done_tokens)
    return scores


@dataclass(frozen=True)
class Comparison:
    documents: int
    tokens: int
    base_loss: float
    adapted_loss: float
    relative_change: float  # (adapted - base) / base; negative = the adapter lowered the loss
    ci95: tuple[float, float]  # bootstrap over documents, of relative_change

    @property
    def base_ppl(self) -> float:
        return _ppl(self.base_loss)

    @property
    def adapted_ppl(self) -> float:
        return _ppl(self.adapted_loss)


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def compare(
    base: Sequence[DocScore], adapted: Sequence[DocScore], resamples: int = 1000, seed: int = 0
) -> Comparison:
    """Token-weighted mean losses of both models, relative change and its bootstrap CI."""
    import numpy as np

    if len(base) != len(adapted) or any(
            b.tokens != a.tokens for b, a in zip(base, adapted, strict=True)):
        raise ValueError("base and adapted scores must cover exactly the same tokens")
    b = np.array([s.loss_sum for s in base])
    a = np.array([s.loss_sum for s in adapted])
    n = np.array([s.tokens for s in base], dtype=float)
    base_loss, adapted_loss = float(b.sum() / n.sum()), float(a.sum() / n.sum())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(n), size=(resamples, len(n)))
    resampled_b = b[picks].sum(axis=1) / n[picks].sum(axis=1)
    resampled_a = a[picks].sum(axis=1) / n[picks].sum(axis=1)
    changes = (resampled_a - resampled_b) / resampled_b
    low, high = np.percentile(changes, [2.5, 97.5])
    return Comparison(
        documents=len(n),
        tokens=int(n.sum()),
        base_loss=base_loss,
        adapted_loss=adapted_loss,
        relative_change=(adapted_loss - base_loss) / base_loss,
        ci95=(float(low), float(high)),
    )


class Throughput:
    """Tokens scored per second of forward passes."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Throughput:
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.monotonic() - self._t0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0
