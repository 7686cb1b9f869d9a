"""`peftflow doctor`: checks what `peftflow validate` cannot see from a spec alone.

Runtime resources of the training machine (base models, the RWKV-PEFT checkout and its
interpreter, a GPU) and the Airflow deployment (the gpu pool must exist with exactly 1 slot:
with a missing pool Airflow leaves GPU tasks `scheduled` forever, silently).
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import orchestration, profile, settings, validate
from peftflow.errors import PeftflowError
from peftflow.spec import GPU_POOL


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # ok | warn | fail
    detail: str


def pool_check() -> Check:
    """The gpu pool, read from the metadata DB of the current AIRFLOW_HOME."""
    home = settings.use_project_airflow_home()
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with create_session() as session:
            pool = session.scalar(select(Pool).where(Pool.pool == GPU_POOL))
            slots = None if pool is None else pool.slots
    except SQLAlchemyError as exc:
        return Check("pool gpu", "fail", f"cannot read the metadata DB of {home} "
                     f"({type(exc).__name__}); run ./setup_airflow.sh first")
    if slots is None:
        return Check("pool gpu", "fail", "pool 'gpu' does not exist: GPU tasks would stay "
                     "'scheduled' forever. Fix: airflow pools import configs/pools.json")
    if slots != 1:
        return Check("pool gpu", "fail", f"pool 'gpu' has {slots} slots: two GPU stages could "
                     "run at once (OOM, driver failures). Fix: airflow pools set gpu 1 "
                     "'single GPU'")
    return Check("pool gpu", "ok", "exists with 1 slot")


def tokenizer_check() -> Check:
    """Which World tokenizer prepare_dataset uses: ours (C) is about 4x the Rust fallback."""
    from peftflow.dataset import tokenizer

    if tokenizer.native() is not None:
        return Check("tokenizer", "ok", f"{tokenizer.NATIVE} (C, built at install)")
    return Check("tokenizer", "warn", f"the C tokenizer was not built, using "
                 f"{tokenizer.FAST_PACKAGE} (prepare_dataset about 2x slower, see "
                 "docs/benchmarks.md). Fix: install gcc and the Python headers "
                 "(Debian/WSL: apt install build-essential python3-dev), then "
                 "./setup_airflow.sh")


def profile_checks(prof: profile.Profile, strict: bool) -> list[Check]:
    miss = "fail" if strict else "warn"
    checks = []
    base = prof.model.base_model_path()
    checks.append(Check(f"{prof.name}: base model", "ok" if base.is_file() else miss,
                        str(base) if base.is_file() else f"{base} not found; download it to "
                        "the models root (PEFTFLOW_MODELS_ROOT) on the training machine"))
    if prof.backend is profile.Backend.RWKV_PEFT:
        checkout, python = prof.rwkv_peft.checkout_path(), prof.rwkv_peft.python_path()
        ok = (checkout / "train.py").is_file()
        checks.append(Check(f"{prof.name}: RWKV-PEFT checkout", "ok" if ok else miss,
                            str(checkout) if ok else f"{checkout}/train.py not found; clone "
                            "RWKV-PEFT at the commit pinned in configs/rwkv_peft.yaml"))
        checks.append(Check(f"{prof.name}: RWKV-PEFT python",
                            "ok" if python.is_file() else miss,
                            str(python) if python.is_file() else f"{python} not found; "
                            "create a venv with RWKV-PEFT's requirements there"))
        try:
            import torch

            gpu = torch.cuda.is_available()
        except ImportError:
            gpu = False
        checks.append(Check(f"{prof.name}: CUDA GPU", "ok" if gpu else miss,
                            "available" if gpu else "no CUDA device visible here"))
    return checks


def run(airflow_only: bool, profiles: list[str]) -> list[Check]:
    checks: list[Check] = []
    try:
        active = orchestration.load().active.value
        checks.append(Check("orchestration profile", "ok" if active == "airflow" else "warn",
                            f"active: {active}"))
    except PeftflowError as exc:
        checks.append(Check("orchestration profile", "fail", str(exc)))
    checks.append(pool_check())
    if airflow_only:
        return checks
    s = settings.get()
    s.artifact_root.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(s.artifact_root).free / 1e9
    checks.append(Check("artifact root space", "ok" if free_gb > 5 else "warn",
                        f"{free_gb:.1f} GB free under {s.artifact_root}"))
    checks.append(tokenizer_check())
    strict = bool(profiles)
    paths = [Path(p) for p in profiles] or sorted({
        validate.resolve_ref(sp.training_profile)
        for sp in validate.validate_paths([s.project_root / "dag_specs"]).specs})
    for path in paths:
        try:
            checks.extend(profile_checks(profile.load(path), strict))
        except PeftflowError as exc:
            checks.append(Check(str(path), "fail", str(exc)))
    return checks


def _cmd(args: argparse.Namespace) -> int:
    checks = run(args.airflow, args.profile or [])
    for check in checks:
        print(f"[{check.level.upper():4}] {check.name}: {check.detail}")
    failed = [c for c in checks if c.level == "fail"]
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("doctor", help="check the deployment and training resources")
    p.add_argument("--airflow", action="store_true",
                   help="check only the Airflow deployment (pool gpu)")
    p.add_argument("--profile", action="append",
                   help="check this profile's runtime resources strictly (repeatable)")
    p.set_defaults(func=_cmd)
