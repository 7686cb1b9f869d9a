"""The GPU inventory of this host (configs/devices.yaml): which devices GPU stages may lease.

Airflow's pool `gpu` only counts (one slot per device, sized from this file by setup); which
cards a task gets is decided by the device lease (run/device_lease.py) from this list. Ids are
nvidia-smi's indexes or GPU-/MIG- UUIDs; children see them with CUDA_DEVICE_ORDER=PCI_BUS_ID,
so CUDA numbers the cards as nvidia-smi does (CUDA's default order is fastest first).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from peftflow import settings
from peftflow.errors import ConfigError, Problem, SpecError
from peftflow.store import schemas, yamlmarks
from peftflow.store.paths import display_path

AUTO = "auto"
NVIDIA_SMI_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Device:
    id: str
    memory_gib: float | None = None


@dataclass(frozen=True)
class Inventory:
    devices: tuple[Device, ...]
    path: Path
    auto: bool = False  # the list came from nvidia-smi

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(d.id for d in self.devices)

    def __len__(self) -> int:
        return len(self.devices)


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi reports it."""

    index: str
    uuid: str
    memory_gib: float | None


def load(path: Path | None = None) -> Inventory:
    """The inventory; SpecError (located) for a bad file, ConfigError when `auto` finds none."""
    path = path or settings.get().devices_config
    shown = display_path(path)
    if not path.exists():
        raise ConfigError(f"{shown}: GPU inventory not found; create it with `devices: "
                          "[{id: \"0\"}]` (one GPU) or `devices: auto`, see the README runbook")
    marked = yamlmarks.load_file(str(path), shown)
    schemas.check(marked, "devices", shown)
    listed = marked.data["devices"]
    if listed == AUTO:
        gpus = nvidia_smi_gpus()
        if not gpus:
            why = ("nvidia-smi is not on PATH" if gpus is None else "nvidia-smi lists no GPU")
            raise ConfigError(f"{shown}: devices: auto, but {why}; list the devices by id "
                              "(devices: [{id: \"0\"}]) or fix the driver (`peftflow doctor`)")
        return Inventory(tuple(Device(g.index, g.memory_gib) for g in gpus), path, auto=True)
    devices = tuple(Device(str(d["id"]), d.get("memory_gib")) for d in listed)
    seen: set[str] = set()
    for i, device in enumerate(devices):
        if device.id in seen:
            line, col = marked.locate(f"$.devices[{i}].id")
            raise SpecError([Problem(shown, line, col, f"$.devices[{i}].id",
                                     f"device {device.id!r} is listed twice; list each GPU "
                                     "once")])
        seen.add(device.id)
    return Inventory(devices, path)


def nvidia_smi_gpus() -> list[Gpu] | None:
    """The GPUs nvidia-smi lists, or None when there is no nvidia-smi (or it fails)."""
    rows = _nvidia_smi("--query-gpu=index,uuid,memory.total")
    if rows is None:
        return None
    gpus = []
    for fields in rows:
        if len(fields) < 2 or not fields[0].isdigit():
            continue
        try:
            memory = round(float(fields[2]) / 1024, 1) if len(fields) > 2 else None
        except ValueError:
            memory = None
        gpus.append(Gpu(fields[0], fields[1], memory))
    return gpus


def compute_apps() -> list[tuple[str, int]] | None:
    """(GPU uuid, pid) of every compute process nvidia-smi shows, or None without nvidia-smi."""
    rows = _nvidia_smi("--query-compute-apps=gpu_uuid,pid")
    if rows is None:
        return None
    return [(f[0], int(f[1])) for f in rows if len(f) == 2 and f[1].isdigit()]


def _nvidia_smi(query: str) -> list[list[str]] | None:
    """One nvidia-smi CSV query as rows of stripped fields; None without a working nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, query, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [[f.strip() for f in line.split(",")] for line in out.splitlines() if line.strip()]
