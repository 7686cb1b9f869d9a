"""The rwkv-peft backend: RWKV-PEFT's train.py command as an argv list, and running it.

Every value is its own argv element and JSON configs are one element each (json.dumps), so no
profile value is ever interpreted by a shell. The builder is keyed on the commit pinned in
configs/rwkv_peft.yaml and checks each flag it emits against that file's argument list.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.child import CHILD_GRACE_S, Child
from peftflow.errors import ConfigError, MissingInputError, PeftflowError, ResourceError
from peftflow.exitcodes import classify
from peftflow.store import yamlmarks
from peftflow.train.training_profile import PeftMethod, Profile

SUPPORTED_COMMIT = "5b8aac9"  # the CLI this builder emits; newer forks take --peft_config


def pin_file() -> Path:
    return settings.get().project_root / "configs" / "rwkv_peft.yaml"


def load_pin(path: Path | None = None) -> dict[str, Any]:
    """configs/rwkv_peft.yaml; refuse a commit whose CLI this builder does not know."""
    path = path or pin_file()
    pin = yamlmarks.load_file(str(path), str(path)).data
    if str(pin.get("commit_short")) != SUPPORTED_COMMIT or \
            not str(pin.get("commit", "")).startswith(SUPPORTED_COMMIT):
        raise ConfigError(f"{path}: RWKV-PEFT commit {pin.get('commit')!r} is not the one this "
                          f"command builder supports ({SUPPORTED_COMMIT}); pin {SUPPORTED_COMMIT}"
                          " or extend peftflow/train/rwkv_peft.py for the new CLI")
    return pin  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Plan:
    """Where a (possibly resumed) run starts; adapter_load is a file train.py can load."""

    epoch_begin: int = 0
    adapter_load: str = ""  # lora_load / pissa_load / disha load
    pissa_init: str = ""
    base_override: str = ""  # state tuning resumes from base + trained states
    epoch_save: int | None = None  # None: the profile's


FRESH = Plan()  # a new run from the base model


def _num(value: float) -> str:
    return repr(float(value))


def build_argv(prof: Profile, data_prefix: Path, out_dir: Path, plan: Plan = FRESH) -> list[str]:
    """The full command: [python, <checkout>/train.py, --flag, value, ...]."""
    m, t, rt = prof.model, prof.training, prof.runtime
    base = plan.base_override or str(m.base_model_path().resolve())
    flags: list[tuple[str, list[str]]] = [
        ("load_model", [base]),
        ("proj_dir", [str(Path(out_dir).resolve())]),
        ("data_file", [str(Path(data_prefix).resolve())]),
        ("data_type", ["binidx"]),
        ("vocab_size", ["65536"]),  # train.py's default 0 breaks binidx
        ("n_layer", [str(m.n_layer)]),
        ("n_embd", [str(m.n_embd)]),
        ("ctx_len", [str(m.ctx_len)]),
        ("head_size_a", [str(m.head_size)]),
        ("my_testing", [m.architecture]),  # default x052 would build the wrong model
        ("dataload", ["pad"]),  # 'only' crashes, 'get' is unimplemented
        ("loss_mask", [t.loss_mask]),
        ("data_shuffle", [str(t.data_shuffle)]),
        ("epoch_steps", [str(t.epoch_steps)]),
        ("epoch_count", [str(t.epoch_count)]),
        ("epoch_begin", [str(plan.epoch_begin)]),
        ("epoch_save", [str(plan.epoch_save or t.epoch_save)]),
        ("micro_bsz", [str(t.micro_bsz)]),
        ("accumulate_grad_batches", [str(t.accumulate_grad_batches)]),
        ("random_seed", [str(t.random_seed)]),
        ("lr_init", [_num(t.lr_init)]),
        ("lr_final", [_num(t.lr_final)]),
        ("lr_schedule", [t.lr_schedule]),
        ("warmup_steps", [str(t.warmup_steps)]),
        ("beta1", [_num(t.beta1)]),
        ("beta2", [_num(t.beta2)]),
        ("adam_eps", [_num(t.adam_eps)]),
        ("weight_decay", [_num(t.weight_decay)]),
        ("grad_cp", [str(t.grad_cp)]),
    ]
    flags += _peft_flags(prof, plan)
    flags += [("quant", [prof.quantization])]
    if t.train_type == "infctx":
        flags += [("chunk_ctx", [str(t.chunk_ctx)])]
    flags += [
        ("op", [rt.op]),
        ("accelerator", ["gpu"]),
        ("devices", [str(rt.devices)]),
        ("precision", [rt.precision]),
        ("strategy", [rt.strategy]),
    ]
    if plan.epoch_begin > 0:
        # train.py runs epoch_count epochs after epoch_begin; stop after the last one instead,
        # which keeps the LR schedule (it counts steps from epoch 0) as in an unbroken run.
        flags += [("my_exit", [str(t.epoch_count - 1)])]
    checkout = prof.rwkv_peft.checkout_path()
    argv = [str(prof.rwkv_peft.python_path()), str(checkout / "train.py")]
    for name, values in flags:
        argv += [f"--{name}", *values]
    check_argv(argv[2:], load_pin()["arguments"])
    return argv


def _peft_flags(prof: Profile, plan: Plan) -> list[tuple[str, list[str]]]:
    peft, method = prof.peft, prof.peft.method
    if method is PeftMethod.STATE:
        return [("peft", ["none"]), ("train_type", ["state"])]
    flags = [("peft", [method.value]), ("train_parts", list(peft.train_parts)),
             ("train_type", [prof.training.train_type])]
    if method is PeftMethod.LORA:
        config = {"lora_load": plan.adapter_load, "lora_r": peft.lora.r,
                  "lora_alpha": peft.lora.alpha, "lora_dropout": peft.lora.dropout}
        flags.append(("lora_config", [json.dumps(config)]))
    elif method is PeftMethod.PISSA:
        config = {"pissa_load": plan.adapter_load, "pissa_init": plan.pissa_init,
                  "pissa_r": peft.pissa.r, "svd_niter": peft.pissa.svd_niter}
        flags.append(("pissa_config", [json.dumps(config)]))
    elif method is PeftMethod.DISHA:
        config = {"mode": peft.disha.mode, "load": plan.adapter_load, "r": peft.disha.r}
        flags.append(("disha_config", [json.dumps(config)]))
    return flags


def check_argv(args: list[str], spec: dict[str, dict[str, Any]]) -> None:
    """Raise ConfigError unless every --flag is known and its values have the declared type."""
    i = 0
    while i < len(args):
        flag = args[i]
        name = flag[2:]
        if not flag.startswith("--") or name not in spec:
            raise ConfigError(f"RWKV-PEFT argument {flag!r} is not in configs/rwkv_peft.yaml")
        rule = spec[name]
        values = []
        i += 1
        while i < len(args) and not args[i].startswith("--"):
            values.append(args[i])
            i += 1
        if rule["type"] != "list" and len(values) != 1:
            raise ConfigError(f"--{name} needs exactly one value, got {values!r}")
        for value in values:
            _check_value(name, value, rule)


def _check_value(name: str, value: str, rule: dict[str, Any]) -> None:
    kind = rule["type"]
    try:
        if kind == "int":
            if str(int(value)) != value:
                raise ValueError(value)
            parsed: Any = int(value)
        elif kind == "float":
            parsed = float(value)
        elif kind == "json":
            parsed = json.loads(value)
            if not isinstance(parsed, dict) or set(parsed) != set(rule["keys"]):
                raise ValueError(f"keys {sorted(parsed) if isinstance(parsed, dict) else parsed}")
        else:
            parsed = value
    except ValueError as exc:
        raise ConfigError(f"--{name} {value!r} is not a valid {kind} ({exc})") from None
    allowed = rule.get("choices") or rule.get("items")
    if allowed is not None and parsed not in allowed and str(parsed) not in map(str, allowed):
        raise ConfigError(f"--{name} {value!r} is not one of {allowed}")


# ---- running train.py ------------------------------------------------------------------------

OOM_MARKERS = ("CUDA out of memory", "CUDA error: out of memory", "OutOfMemoryError",
               "CUBLAS_STATUS_ALLOC_FAILED")
DRIVER_MARKERS = ("CUDA driver", "NVIDIA driver", "no CUDA GPUs are available", "NCCL error",
                  "CUDA error: unspecified launch failure", "CUDA error: an illegal memory",
                  "cudaErrorLaunchFailure", "CUBLAS_STATUS_EXECUTION_FAILED", "ECC error")
MISSING_MARKERS = ("ModuleNotFoundError", "No module named", "ImportError")


def preflight(prof: Profile) -> None:
    """The checkout, its interpreter and the base model must exist (exit 3 with the fix)."""
    checkout, python = prof.rwkv_peft.checkout_path(), prof.rwkv_peft.python_path()
    fix = ("; run `peftflow doctor` for the setup steps (RWKV-PEFT checkout at "
           f"{SUPPORTED_COMMIT} and a Python <= 3.12 with its dependencies)")
    if not (checkout / "train.py").is_file():
        raise MissingInputError(f"{checkout}: no RWKV-PEFT checkout (train.py missing){fix}")
    if not python.is_file() or not os.access(python, os.X_OK):
        raise MissingInputError(f"{python}: interpreter for RWKV-PEFT not found{fix}")
    base = prof.model.base_model_path()
    if not base.is_file():
        raise MissingInputError(f"{base}: base model not found (profile {prof.path}, "
                                "model.base_model; relative paths resolve under the models "
                                "root PEFTFLOW_MODELS_ROOT); download it or fix the path")


def classify_failure(returncode: int, output_tail: str) -> PeftflowError:
    """Turn a failed train.py into the error whose exit code tells the operator what to do."""
    tail = output_tail[-4000:]
    if any(marker in output_tail for marker in OOM_MARKERS):
        return ResourceError("RWKV-PEFT ran out of GPU memory; lower micro_bsz or ctx_len, "
                             "use grad_cp: 1, or a bigger GPU (retryable)\n" + tail)
    generic_cuda = "CUDA error" in output_tail and "device-side assert" not in output_tail
    if generic_cuda or any(marker in output_tail for marker in DRIVER_MARKERS):
        return ResourceError("RWKV-PEFT hit a GPU/driver failure (retryable)\n" + tail)
    if any(marker in output_tail for marker in MISSING_MARKERS):
        return MissingInputError("RWKV-PEFT's Python lacks a dependency; run `peftflow "
                                 "doctor`\n" + tail)
    if returncode == 2 and "train.py: error:" in output_tail:
        return ConfigError("RWKV-PEFT rejected its arguments\n" + tail)
    error = PeftflowError(f"RWKV-PEFT train.py failed with exit code {returncode}\n" + tail)
    error.exit_code = classify(returncode)
    return error


def run(argv: list[str], cwd: Path, on_tick: Callable[[], None], every: float = 5.0,
        grace_s: float = CHILD_GRACE_S) -> None:
    """Run train.py as a child, stream its output to stderr, raise a mapped error on failure.

    train.py stays in this stage's process group, so a stop of the group (task runner, a retry)
    reaches it directly. SIGTERM/SIGINT to this process alone (raised as an exception in the
    main thread) is passed on: train.py gets `grace_s` to write its checkpoint, then SIGKILL.
    """
    child = Child(argv, None, cwd, own_group=False)
    try:
        finished = child.wait(on_line=_to_stderr, keep=400, on_tick=on_tick, tick_s=every)
    except BaseException:
        child.stop(grace_s)
        raise
    if finished.returncode != 0:
        raise classify_failure(finished.returncode, "\n".join(finished.tail))


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
