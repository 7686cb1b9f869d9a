"""Training profiles (configs/profiles/*.yaml) as validated, typed, frozen objects."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import Problem, SpecError
from peftflow.store import schemas, yamlmarks
from peftflow.store.hashing import sha256_file
from peftflow.store.paths import path_problem, resolve_as_written


class Backend(enum.StrEnum):
    RWKV_PEFT = "rwkv-peft"
    CPU_REFERENCE = "cpu-reference"


class PeftMethod(enum.StrEnum):
    LORA = "lora"
    PISSA = "pissa"
    DISHA = "disha"
    STATE = "state"


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    n_layer: int
    n_embd: int
    head_size: int
    vocab_size: int
    ctx_len: int
    base_model: str  # as written in the profile
    init_seed: int | None

    def base_model_path(self) -> Path:
        """The base model file: relative paths resolve under the models root."""
        return _models_path(self.base_model)


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: float = 32
    dropout: float = 0.01

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass(frozen=True)
class PissaConfig:
    r: int = 8
    svd_niter: int = 4


@dataclass(frozen=True)
class DishaConfig:
    mode: str = "bone"
    r: int = 64


@dataclass(frozen=True)
class PeftConfig:
    method: PeftMethod
    lora: LoraConfig
    pissa: PissaConfig
    disha: DishaConfig
    train_parts: tuple[str, ...]


@dataclass(frozen=True)
class TrainingConfig:
    epoch_steps: int
    epoch_count: int
    epoch_save: int = 1
    micro_bsz: int = 1
    accumulate_grad_batches: int = 1
    random_seed: int = 42
    lr_init: float = 2e-4
    lr_final: float = 2e-5
    lr_schedule: str = "cos"
    warmup_steps: int = 0
    beta1: float = 0.9
    beta2: float = 0.99
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_cp: int = 1
    train_type: str = "none"
    chunk_ctx: int = 512
    loss_mask: str = "pad"
    data_shuffle: int = 1

    @property
    def documents_needed(self) -> int:
        """Pad mode reads documents 0 .. epoch_steps*micro_bsz-1 every epoch."""
        return self.epoch_steps * self.micro_bsz


@dataclass(frozen=True)
class RuntimeConfig:
    precision: str = "bf16"
    strategy: str = "deepspeed_stage_1"
    devices: int = 1  # train_adapter's devices (leased, and its pool slots)
    eval_devices: int = 1  # evaluate_adapter's
    op: str = "cuda"
    eval_strategy: str = "cpu fp32"
    threads: int = 0
    queue: str = "gpu"  # the Edge queue of its GPU tasks (the edge deployment profile only)


@dataclass(frozen=True)
class RwkvPeftConfig:
    checkout: str = "vendor/RWKV-PEFT"
    python: str = "vendor/RWKV-PEFT/.venv/bin/python"

    def checkout_path(self) -> Path:
        return _project_path(self.checkout)

    def python_path(self) -> Path:
        return _project_path(self.python)


def _project_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else settings.get().project_root / path


def _models_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else settings.get().models_root / path


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    backend: Backend
    model: ModelConfig
    peft: PeftConfig
    quantization: str
    training: TrainingConfig
    runtime: RuntimeConfig
    rwkv_peft: RwkvPeftConfig
    path: Path  # the YAML file this came from
    sha256: str  # of that file, for cache keys and release lineage


def _semantic_problems(data: dict[str, Any], marked: yamlmarks.Marked, file: str) -> list[Problem]:
    found: list[Problem] = []

    def add(path: str, message: str) -> None:
        line, col = marked.locate(path)
        found.append(Problem(file, line, col, path, message))

    model, runtime = data["model"], data.get("runtime", {})
    backend = data["backend"]
    if model["architecture"] == "x070" and backend == "rwkv-peft" and model["ctx_len"] % 16:
        fix = (model["ctx_len"] // 16 + 1) * 16
        add("$.model.ctx_len", f"{model['ctx_len']} is not a multiple of 16, which x070 "
            f"needs with RWKV-PEFT's kernels; use {fix}")
    if backend == "rwkv-peft" and model["architecture"] == "x070" and \
            runtime.get("op", "cuda") == "cuda" and runtime.get("precision", "bf16") != "bf16":
        add("$.runtime.precision", f"{runtime.get('precision')!r}: x070 with op cuda asserts "
            "bf16 in RWKV-PEFT; use precision: bf16")
    if backend == "cpu-reference":
        if model["architecture"] != "x070":
            add("$.model.architecture", "the cpu-reference backend implements RWKV-7 only; "
                "use architecture: x070")
        if data["peft"]["method"] != "lora":
            add("$.peft.method", f"{data['peft']['method']!r}: the cpu-reference backend "
                "trains LoRA only; use method: lora, or backend: rwkv-peft")
    method = data["peft"]["method"]
    if method in ("lora", "pissa", "disha") and method not in data["peft"]:
        add(f"$.peft.{method}", f"method is {method!r} but the `{method}:` settings are "
            f"missing; add a `{method}:` mapping (defaults are used for absent keys)")
    train = data["training"]
    if train.get("lr_final", 2e-5) > train.get("lr_init", 2e-4):
        add("$.training.lr_final", "lr_final is larger than lr_init; the schedule decays, "
            "so use lr_final <= lr_init")
    return found


def _path_problems(data: dict[str, Any], marked: yamlmarks.Marked, file: str,
                   source: Path) -> list[Problem]:
    """Every path of the profile must stay inside the allowed roots (see `path_problem`)."""
    rwkv = data.get("rwkv_peft", {})
    checks = [("$.model.base_model", data["model"]["base_model"], _models_path,
               "the base model")]
    if "checkout" in rwkv:
        checks.append(("$.rwkv_peft.checkout", rwkv["checkout"], _project_path,
                       "the RWKV-PEFT checkout"))
    if "python" in rwkv:
        checks.append(("$.rwkv_peft.python", rwkv["python"], _project_path,
                       "the RWKV-PEFT interpreter"))
    found: list[Problem] = []
    for yaml_path, value, place, what in checks:
        where = place(value)
        # The interpreter is judged as written (a venv symlink), everything else by its target.
        resolved = resolve_as_written(where) if yaml_path.endswith("python") else where.resolve()
        message = path_problem(value, resolved, source, what)
        if message:
            found.append(Problem(file, *marked.locate(yaml_path), yaml_path, message))
    return found


def load(path: str | Path, display: str | None = None) -> Profile:
    """Load, validate and type a profile; raise SpecError with located problems."""
    path = Path(path)
    shown = display or str(path)
    marked = yamlmarks.load_file(str(path), shown)
    schemas.check(marked, "profile", shown)
    data: dict[str, Any] = marked.data
    problems = _semantic_problems(data, marked, shown) + _path_problems(data, marked, shown,
                                                                         path)
    if problems:
        raise SpecError(problems)
    model, peft = data["model"], data["peft"]
    return Profile(
        name=data["name"],
        description=data.get("description", ""),
        backend=Backend(data["backend"]),
        model=ModelConfig(
            architecture=model["architecture"],
            n_layer=model["n_layer"],
            n_embd=model["n_embd"],
            head_size=model.get("head_size", 64),
            vocab_size=model.get("vocab_size", 65536),
            ctx_len=model["ctx_len"],
            base_model=model["base_model"],
            init_seed=model.get("init_seed"),
        ),
        peft=PeftConfig(
            method=PeftMethod(peft["method"]),
            lora=LoraConfig(**peft.get("lora", {})),
            pissa=PissaConfig(**peft.get("pissa", {})),
            disha=DishaConfig(**peft.get("disha", {})),
            train_parts=tuple(peft.get("train_parts", ["time", "ln"])),
        ),
        quantization=data.get("quantization", "none"),
        training=TrainingConfig(**data["training"]),
        runtime=RuntimeConfig(**data.get("runtime", {})),
        rwkv_peft=RwkvPeftConfig(**data.get("rwkv_peft", {})),
        path=path.resolve(),
        sha256=sha256_file(path),
    )
