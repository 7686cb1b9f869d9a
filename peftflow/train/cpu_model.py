"""A compact pure-PyTorch RWKV-7 (x070) in training mode, with LoRA on RWKV-PEFT's layers.

Module and parameter names mirror RWKV-PEFT's RWKV-7 model, so `state_dict()` keys are the
checkpoint keys RWKV-PEFT writes (`blocks.N.att.key.lora_A`, `blocks.N.ln1.weight`, ...).
LoRA sits on att.receptance/key/value/output and ffn.key/value: y = W x + (alpha/r) B A drop(x).
The WKV recurrence runs step by step over time: slow, but exact and small enough for CPU
smoke runs. The math follows the x070 equations (see the `rwkv` package and RWKV-LM).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from peftflow.errors import ConfigError

HEAD_SIZE = 64
LORA_TARGETS = ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value")
Lora = tuple[int, float, float]  # r, alpha, dropout of every LoraLinear


class LoraLinear(nn.Module):
    """A frozen bias-free linear layer plus a trainable low-rank update."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float,
                 dropout: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.r = r
        self.scaling = alpha / r if r > 0 else 0.0
        if r > 0:
            self.lora_A = nn.Parameter(torch.empty(r, in_features))
            self.lora_B = nn.Parameter(torch.zeros(out_features, r))
            # Same init as RWKV-PEFT: kaiming-uniform A (bound 1/sqrt(in)), zero B.
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        if self.r > 0:
            out = out + self.scaling * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return out


def _param(shape: torch.Size | tuple[int, ...]) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape), requires_grad=False)


class TimeMix(nn.Module):
    """RWKV-7 attention ("time mixing") of one block."""

    # Created by name in __init__; declared so that the type checker knows what they are.
    x_r: torch.Tensor
    x_w: torch.Tensor
    x_k: torch.Tensor
    x_v: torch.Tensor
    x_a: torch.Tensor
    x_g: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor
    a0: torch.Tensor
    a1: torch.Tensor
    a2: torch.Tensor
    g1: torch.Tensor
    g2: torch.Tensor
    k_k: torch.Tensor
    k_a: torch.Tensor
    r_k: torch.Tensor
    v0: torch.Tensor
    v1: torch.Tensor
    v2: torch.Tensor
    receptance: LoraLinear
    key: LoraLinear
    value: LoraLinear
    output: LoraLinear

    def __init__(self, shapes: dict[str, torch.Size], layer_id: int, C: int, lora: Lora) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_head = C // HEAD_SIZE
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1", "w2", "a0", "a1", "a2",
                     "g1", "g2", "k_k", "k_a", "r_k") + (("v0", "v1", "v2") if layer_id else ()):
            setattr(self, name, _param(shapes[name]))
        for name in ("receptance", "key", "value", "output"):
            setattr(self, name, LoraLinear(C, C, *lora))
        self.ln_x = nn.GroupNorm(self.n_head, C, eps=64e-5)
        self.ln_x.requires_grad_(False)

    def forward(self, x: torch.Tensor, v_first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        H, N = self.n_head, HEAD_SIZE
        xx = F.pad(x, (0, 0, 1, -1)) - x  # previous token minus current (zero before t=0)
        xr, xw, xk = x + xx * self.x_r, x + xx * self.x_w, x + xx * self.x_k
        xv, xa, xg = x + xx * self.x_v, x + xx * self.x_a, x + xx * self.x_g
        r = self.receptance(xr)
        w = -F.softplus(-(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)) - 0.5  # log-log decay
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        y = wkv7(r, torch.exp(-torch.exp(w)), k, v, -kk, kk * a, H)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        bonus = (r.view(B, T, H, N) * k.view(B, T, H, N) * self.r_k).sum(-1, keepdim=True)
        y = y + (bonus * v.view(B, T, H, N)).view(B, T, C)
        return self.output(y * g), v_first


def wkv7(r, decay, k, v, a, b, H: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The RWKV-7 state recurrence per head, from a zero state (inputs/outputs [B,T,C]).

    S_t = S_{t-1} diag(decay_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T and y_t = S_t r_t, with S
    indexed [value dim, key dim]. Forward and backward are explicit loops over time without
    an autograd graph per step (about 5x faster than autograd through the loop on CPU).
    """
    B, T, C = r.shape
    shape = (B, T, H, C // H)
    y: torch.Tensor = _WKV7.apply(  # type: ignore[no-untyped-call]
        *(t.float().reshape(shape).contiguous() for t in (r, decay, k, v, a, b)))
    return y.reshape(B, T, C)


class _WKV7(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, decay, k, v, a, b):  # type: ignore[no-untyped-def]
        B, T, H, N = r.shape
        states = r.new_empty(B, T + 1, H, N, N)  # states[:, t] = S before step t
        state = r.new_zeros(B, H, N, N)
        y = r.new_empty(B, T, H, N)
        for t in range(T):
            states[:, t] = state
            state = state * decay[:, t, :, None, :] \
                + (state @ a[:, t, :, :, None]) @ b[:, t, :, None, :] \
                + v[:, t, :, :, None] @ k[:, t, :, None, :]
            y[:, t] = (state @ r[:, t, :, :, None]).squeeze(-1)
        states[:, T] = state
        ctx.save_for_backward(r, decay, k, v, a, b, states)
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[no-untyped-def]
        r, decay, k, v, a, b, states = ctx.saved_tensors
        B, T, H, N = r.shape
        grads = [torch.empty_like(r) for _ in range(6)]
        dr, dd, dk, dv, da, db = grads
        G = r.new_zeros(B, H, N, N)  # dL/dS_t, accumulated from the future
        gy = gy.contiguous()
        for t in reversed(range(T)):
            prev, cur = states[:, t], states[:, t + 1]
            g_t = gy[:, t]
            dr[:, t] = (cur.transpose(-1, -2) @ g_t[..., None]).squeeze(-1)
            G = G + g_t[..., None] @ r[:, t, :, None, :]
            dv[:, t] = (G @ k[:, t, :, :, None]).squeeze(-1)
            dk[:, t] = (G.transpose(-1, -2) @ v[:, t, :, :, None]).squeeze(-1)
            dd[:, t] = (prev * G).sum(-2)
            db[:, t] = (G.transpose(-1, -2) @ (prev @ a[:, t, :, :, None])).squeeze(-1)
            gb = G @ b[:, t, :, :, None]  # [B,H,N,1]
            da[:, t] = (prev.transpose(-1, -2) @ gb).squeeze(-1)
            G = G * decay[:, t, :, None, :] + gb @ a[:, t, :, None, :]
        return dr, dd, dk, dv, da, db


class ChannelMix(nn.Module):
    """RWKV-7 feed-forward ("channel mixing") of one block."""

    def __init__(self, shapes: dict[str, torch.Size], C: int, F_: int, lora: Lora) -> None:
        super().__init__()
        self.x_k = _param(shapes["x_k"])
        self.key = LoraLinear(C, F_, *lora)
        self.value = LoraLinear(F_, C, *lora)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xx = F.pad(x, (0, 0, 1, -1)) - x
        out: torch.Tensor = self.value(torch.relu(self.key(x + xx * self.x_k)) ** 2)
        return out


class Block(nn.Module):
    def __init__(self, sd: dict[str, torch.Tensor], i: int, C: int, lora: Lora) -> None:
        super().__init__()
        self.layer_id = i
        if i == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        prefix = f"blocks.{i}."
        att = {k[len(prefix) + 4:]: v.shape for k, v in sd.items() if k.startswith(prefix + "att.")}
        ffn = {k[len(prefix) + 4:]: v.shape for k, v in sd.items() if k.startswith(prefix + "ffn.")}
        self.att = TimeMix(att, i, C, lora)
        self.ffn = ChannelMix(ffn, C, sd[prefix + "ffn.key.weight"].shape[0], lora)

    def forward(self, x: torch.Tensor, v_first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layer_id == 0:
            x = self.ln0(x)
        dx, v_first = self.att(self.ln1(x), v_first)
        x = x + dx
        return x + self.ffn(self.ln2(x)), v_first


class RWKV7(nn.Module):
    """RWKV-7 language model; base weights frozen, LoRA (and chosen parts) trainable."""

    def __init__(self, sd: dict[str, torch.Tensor], r: int = 0, alpha: float = 1.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if "blocks.0.att.r_k" not in sd or "emb.weight" not in sd:
            raise ConfigError("the base model is not an RWKV-7 (x070) state dict "
                              "(no blocks.0.att.r_k / emb.weight)")
        V, C = sd["emb.weight"].shape
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        lora = (r, alpha, dropout)
        self.n_layer, self.n_embd, self.vocab_size = n_layer, C, V
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList(Block(sd, i, C, lora) for i in range(n_layer))
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        self.requires_grad_(False)
        self.load_base(sd)
        for name, p in self.named_parameters():
            p.requires_grad = ".lora_" in name

    def load_base(self, sd: dict[str, torch.Tensor]) -> None:
        """Copy the base weights in; every non-LoRA parameter must be in `sd` with its shape."""
        own = self.state_dict()
        missing = [k for k in own if ".lora_" not in k and k not in sd]
        if missing:
            raise ConfigError(f"base model lacks {len(missing)} RWKV-7 tensors, e.g. "
                              f"{missing[:3]}; is it an x070 checkpoint?")
        with torch.no_grad():
            for key, target in own.items():
                if ".lora_" in key:
                    continue
                source = sd[key]
                if source.numel() != target.numel():
                    raise ConfigError(f"base model tensor {key} has shape {tuple(source.shape)}, "
                                      f"expected {tuple(target.shape)}")
                target.copy_(source.reshape(target.shape).float())

    def train_parts(self, parts: tuple[str, ...]) -> list[str]:
        """Also train every base parameter whose name contains a part (RWKV-PEFT's rule)."""
        chosen = []
        for name, p in self.named_parameters():
            if ".lora_" not in name and any(part in name for part in parts):
                p.requires_grad = True
                chosen.append(name)
        return chosen

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        v_first = torch.empty_like(x)
        for block in self.blocks:
            x, v_first = block(x, v_first)
        logits: torch.Tensor = self.head(self.ln_out(x))
        return logits

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter checkpoint: trainable tensors only, detached CPU copies."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().clone().cpu() for k, v in self.state_dict().items() if k in names}
