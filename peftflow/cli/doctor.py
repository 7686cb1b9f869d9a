"""`peftflow doctor`: checks what `peftflow validate` cannot see from a spec alone.

Runtime resources of the training machine (base models, the RWKV-PEFT checkout and its
interpreter, a GPU) and the Airflow deployment (the gpu pool must exist with one slot per
device of the GPU inventory: with a missing pool Airflow leaves GPU tasks `scheduled` forever,
silently; the device checks are in cli/devices.py).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import PeftflowError
from peftflow.spec import orchestration, validate
from peftflow.store import paths
from peftflow.train import training_profile as profile


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # ok | warn | fail
    detail: str


def pool_check() -> Check:
    """Pool gpu against the GPU inventory (one slot per device), from the metadata DB of the
    current AIRFLOW_HOME."""
    from peftflow.cli import devices

    inventory = devices.checks_inventory()
    if isinstance(inventory, tuple):
        return Check(*inventory)
    return Check(*devices.pool_check(len(inventory)))


def device_checks() -> list[Check]:
    """The inventory, pool gpu, and the devices against nvidia-smi (cli/devices.py)."""
    from peftflow.cli.devices import checks

    return [Check(*c) for c in checks()]


def secret_files_check() -> Check:
    """Files holding secrets (admin password, JWT and DB secrets, audit key, service logs)
    must not be readable by group or others; the fix is the exact chmod."""
    from peftflow.store import audit_key as auditkey

    home, key = settings.get().airflow_home, auditkey.key_path()
    files = [home / "simple_auth_manager_passwords.json.generated", home / "airflow.cfg",
             key, auditkey.ring_path(key), *sorted((home / "logs").glob("*.log"))]
    found = [p for p in files if p.is_file() and p.stat().st_mode & 0o077]
    if not found:
        return Check("secret files", "ok", f"private (0600) under {home}")
    shown = ", ".join(f"{p} ({p.stat().st_mode & 0o777:o})" for p in found)
    return Check("secret files", "fail", f"readable by other users: {shown}. "
                 f"Fix: chmod 600 {' '.join(str(p) for p in found)}")


def retrain_checks() -> list[Check]:
    """A paused retrain DAG misses dataset events: Airflow drops them, nothing replays them."""
    from peftflow.spec.model import SpecKind

    settings.use_project_airflow_home()
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    specs = [sp for sp in validate.validate_paths([settings.get().project_root / "dag_specs"])
             .specs if sp.kind is SpecKind.RETRAIN]
    found = []
    try:
        with create_session() as session:
            for sp in specs:
                paused = session.scalar(select(DagModel.is_paused)
                                        .where(DagModel.dag_id == sp.dag_id))
                if paused:
                    found.append(Check(f"retrain {sp.dag_id}", "warn", (
                        f"paused: new {sp.dataset_name} versions start nothing. Fix: airflow "
                        f"dags unpause {sp.dag_id} (and `peftflow dataset announce MANIFEST` "
                        "for a version registered meanwhile)")))
                elif paused is not None:
                    found.append(Check(f"retrain {sp.dag_id}", "ok",
                                       f"active: starts on each new {sp.dataset_name} version"))
    except SQLAlchemyError:
        return []  # pool_check already reports an unreadable metadata DB
    return found


def notify_checks() -> list[Check]:
    """Each spec channel's connection exists, with the type and fields the channel needs."""
    from peftflow.notify import connections

    settings.use_project_airflow_home()
    specs = validate.validate_paths([settings.get().project_root / "dag_specs"]).specs
    return [Check(*found) for found in connections.channel_checks(specs)]


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


# Where published RWKV-7 checkpoints can be downloaded, by file-name prefix.
MODEL_SOURCES = (
    ("rwkv7-g1", "https://huggingface.co/BlinkDL/rwkv7-g1/resolve/main/"),
    ("RWKV-x070-World", "https://huggingface.co/BlinkDL/rwkv-7-world/resolve/main/"),
)
# What RWKV-PEFT's train.py imports before it does anything (its requirements.txt has no torch).
RWKV_PEFT_MODULES = ("torch", "lightning", "deepspeed", "einops")


def _shown(path: Path) -> str:
    return paths.display_path(path)


def base_model_check(prof: profile.Profile, miss: str) -> Check:
    """The base model file; the fix downloads it to the exact path the profile expects."""
    name, base = f"{prof.name}: base model", prof.model.base_model_path()
    if base.is_file():
        return Check(name, "ok", str(base))
    if prof.model.init_seed is not None:
        fix = f"peftflow model init-tiny --profile {_shown(prof.path)}"
    else:
        url = next((f"{prefix_url}{base.name}" for prefix, prefix_url in MODEL_SOURCES
                    if base.name.startswith(prefix)), None)
        source = f"curl -fL -o {base} {url}" if url else f"cp YOUR_CHECKPOINT.pth {base}"
        fix = f"mkdir -p {base.parent} && {source}"
    return Check(name, miss, f"{base} not found (RWKV-7 {prof.model.architecture}, n_layer "
                 f"{prof.model.n_layer}, n_embd {prof.model.n_embd}; relative base_model paths "
                 f"resolve under PEFTFLOW_MODELS_ROOT). Fix: {fix}")


def _git_head(checkout: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def checkout_check(prof: profile.Profile, pin: dict[str, Any], miss: str) -> Check:
    """RWKV-PEFT's train.py at the pinned commit, where the profile's rwkv_peft.checkout says."""
    name, checkout = f"{prof.name}: RWKV-PEFT checkout", prof.rwkv_peft.checkout_path()
    commit = str(pin["commit"])
    clone = f"git clone {pin['repository']} {checkout} && git -C {checkout} checkout {commit}"
    switch = f"git -C {checkout} fetch origin && git -C {checkout} checkout {commit}"
    if not (checkout / "train.py").is_file():
        if (checkout / ".git").exists():
            return Check(name, miss, f"{checkout}/train.py not found. Fix: {switch}")
        in_the_way = checkout.is_dir() and any(checkout.iterdir())
        moved = f"mv {checkout} {checkout}.old && " if in_the_way else ""
        return Check(name, miss, f"{checkout}/train.py not found. Fix: {moved}{clone}")
    head = _git_head(checkout) if (checkout / ".git").exists() else None
    if head is None:
        return Check(name, "warn", f"{checkout} is not a git checkout, so its commit cannot be "
                     f"checked against the pin {commit[:7]}. Fix: mv {checkout} "
                     f"{checkout}.old && {clone}")
    if head != commit:
        return Check(name, miss, f"{checkout} is at {head[:7]}, not the pinned {commit[:7]} "
                     f"(configs/rwkv_peft.yaml). Fix: {switch}")
    return Check(name, "ok", f"{checkout} at {commit[:7]}")


def _fits(version: str, wanted: str) -> bool:
    from packaging.specifiers import SpecifierSet

    return bool(version) and version in SpecifierSet(wanted)


def python_check(prof: profile.Profile, pin: dict[str, Any], miss: str) -> Check:
    """The interpreter the profile's rwkv_peft.python names: its version and train.py's imports."""
    name = f"{prof.name}: RWKV-PEFT python"
    python, checkout = prof.rwkv_peft.python_path(), prof.rwkv_peft.checkout_path()
    wanted = str(pin.get("python", ">=3.10,<3.13"))
    install = f"{python} -m pip install torch -r {checkout}/requirements.txt"
    venv = python.parent.parent if python.parent.name == "bin" else None
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    maker = f"python{mine}" if _fits(mine, wanted) else "python3.12"
    create = (f"{maker} -m venv {venv} && {install}" if venv else
              f"point rwkv_peft.python in {_shown(prof.path)} at a Python {wanted} with "
              f"RWKV-PEFT's requirements, e.g. {install}")
    if not python.is_file():
        return Check(name, miss, f"{python} not found. Fix: {create}")
    recreate = f"rm -rf {venv} && {create}" if venv else create
    probe = ("import importlib.util as u, sys; print('%d.%d' % sys.version_info[:2]); "
             f"print(' '.join(m for m in {RWKV_PEFT_MODULES!r} if u.find_spec(m) is None))")
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(name, miss, f"{python} does not run ({type(exc).__name__}). Fix: {recreate}")
    version, absent = [*done.stdout.splitlines(), "", ""][:2]
    if done.returncode != 0 or not _fits(version.strip(), wanted):
        return Check(name, miss, f"{python} is Python {version.strip() or '?'}; RWKV-PEFT "
                     f"needs {wanted}. Fix: {recreate}")
    if absent.split():
        return Check(name, miss, f"{python} lacks {', '.join(absent.split())}. Fix: {install}")
    return Check(name, "ok", f"{python} (Python {version.strip()}, "
                 f"{', '.join(RWKV_PEFT_MODULES)})")


def gpu_check(prof: profile.Profile, miss: str) -> Check:
    """A visible NVIDIA GPU, asked of nvidia-smi (what the driver itself reports)."""
    name, smi = f"{prof.name}: CUDA GPU", shutil.which("nvidia-smi")
    if smi is None:
        return Check(name, miss, "nvidia-smi not found: no NVIDIA driver here (WSL: install "
                     "the Windows NVIDIA driver, not a Linux one). Fix: install the driver, "
                     "then check with: nvidia-smi")
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30,
                              check=False)
        gpus = [line for line in done.stdout.splitlines() if line.startswith("GPU ")]
        said = (done.stderr or done.stdout).strip().splitlines()[:1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        gpus, said = [], [type(exc).__name__]
    if not gpus:
        return Check(name, miss, f"nvidia-smi lists no GPU ({said[0] if said else 'no output'})."
                     " Fix: run nvidia-smi and fix what it reports: nvidia-smi")
    return Check(name, "ok", "; ".join(gpus))


def nvcc_check(prof: profile.Profile, miss: str) -> Check:
    """`op: cuda` compiles RWKV-PEFT's WKV kernel at the first start (torch cpp_extension)."""
    name, home = f"{prof.name}: CUDA compiler (op cuda)", settings.env_str("CUDA_HOME")
    beside = Path(home or "/usr/local/cuda") / "bin" / "nvcc"  # where torch looks too
    found = shutil.which("nvcc") or (str(beside) if beside.is_file() else None)
    if found is None:
        return Check(name, miss, "nvcc not found: RWKV-PEFT compiles cuda/wkv7_cuda.cu at the "
                     "first start. Fix: install the CUDA toolkit of torch's CUDA version "
                     "(developer.nvidia.com/cuda-downloads) or set runtime.op: fla in "
                     f"{_shown(prof.path)}, then check: nvcc --version")
    return Check(name, "ok", found)


def eval_torch_check(prof: profile.Profile, miss: str) -> Check:
    """evaluate_adapter scores with `rwkv` on torch in peftflow's own venv: it needs CUDA too."""
    name = f"{prof.name}: evaluation torch ({prof.runtime.eval_strategy})"
    try:
        import torch
    except ImportError:
        return Check(name, miss, f"torch is not installed in {sys.executable}. Fix: "
                     f"{sys.executable} -m pip install torch")
    if torch.version.cuda is None:
        pinned = torch.__version__.split("+", 1)[0]
        return Check(name, miss, f"torch {torch.__version__} in {sys.prefix} has no CUDA. Fix: "
                     f"{sys.executable} -m pip install --force-reinstall torch=={pinned}")
    if not torch.cuda.is_available():
        return Check(name, miss, f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees "
                     "no GPU. Fix: run nvidia-smi and fix what it reports: nvidia-smi")
    return Check(name, "ok", f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")


def profile_checks(prof: profile.Profile, strict: bool) -> list[Check]:
    """A profile's runtime resources; each check that is not ok ends with the command to fix it."""
    miss = "fail" if strict else "warn"
    checks = [base_model_check(prof, miss)]
    if prof.backend is profile.Backend.RWKV_PEFT:
        from peftflow.train import rwkv_peft

        try:
            pin = rwkv_peft.load_pin()
        except PeftflowError as exc:
            return [*checks, Check(f"{prof.name}: RWKV-PEFT pin", "fail", str(exc))]
        checks += [checkout_check(prof, pin, miss), python_check(prof, pin, miss),
                   gpu_check(prof, miss)]
        if prof.runtime.op == "cuda":
            checks.append(nvcc_check(prof, miss))
    if prof.runtime.eval_strategy.startswith("cuda"):
        checks.append(eval_torch_check(prof, miss))
    return checks


def run(airflow_only: bool, profiles: list[str]) -> list[Check]:
    checks: list[Check] = []
    try:
        active = orchestration.load().active.value
        checks.append(Check("orchestration profile", "ok", f"active: {active}") if active ==
                      "airflow" else Check("orchestration profile", "warn", f"active: {active} "
                                           "(no training DAGs); to train with Airflow: "
                                           "./setup_airflow.sh --switch-profile airflow"))
    except PeftflowError as exc:
        checks.append(Check("orchestration profile", "fail", str(exc)))
    checks.extend(device_checks())
    checks.append(secret_files_check())
    checks.extend(retrain_checks())
    checks.extend(notify_checks())
    if airflow_only:
        return checks
    s = settings.get()
    s.artifact_root.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(s.artifact_root).free / 1e9
    checks.append(Check("artifact root space", "ok", f"{free_gb:.1f} GB free under "
                        f"{s.artifact_root}") if free_gb > 5 else Check(
        "artifact root space", "warn", f"only {free_gb:.1f} GB free under {s.artifact_root}. "
        "Fix: free space there, or: export PEFTFLOW_ARTIFACT_ROOT=/path/on/a/larger/disk"))
    checks.append(tokenizer_check())
    strict = bool(profiles)
    files = [Path(p) for p in profiles] or sorted({
        sp.profile_paths[sp.training_profile]
        for sp in validate.validate_paths([s.project_root / "dag_specs"]).specs})
    for path in files:
        try:
            checks.extend(profile_checks(profile.load(path), strict))
        except PeftflowError as exc:
            checks.append(Check(str(path), "fail", str(exc)))
    return checks


def _cmd(args: argparse.Namespace) -> int:
    checks = run(args.airflow, args.profile or [])
    for check in checks:
        print(f"[{check.level.upper():4}] {check.name}: {check.detail}")
    counts = {level: sum(c.level == level for c in checks) for level in ("fail", "warn")}
    if any(counts.values()):
        print(f"{counts['fail']} failed, {counts['warn']} warning(s), {len(checks)} checks")
    else:
        print(f"all {len(checks)} checks ok")
    return 1 if counts["fail"] else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("doctor", help="check the deployment and training resources")
    p.add_argument("--airflow", action="store_true",
                   help="check only the Airflow deployment (pool gpu)")
    p.add_argument("--profile", action="append",
                   help="check this profile's runtime resources strictly (repeatable)")
    p.set_defaults(func=_cmd)
