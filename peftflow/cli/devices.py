"""`peftflow devices [list] | sync-pool`: the GPUs of this host, who holds which, and pool gpu.

`list` shows each device of the inventory (configs/devices.yaml) with its holder (the DAG,
run, stage and try, or a script run by hand) and since when. `sync-pool` sizes pool `gpu`
to the inventory (setup_airflow.sh runs it on every setup). The doctor's device checks live
here too: pool against inventory, listed devices that nvidia-smi does not show, and devices
busy with a process that holds no lease of ours.
"""

from __future__ import annotations

import argparse
from typing import Any

from peftflow import settings
from peftflow.cli import main as cli
from peftflow.errors import PeftflowError
from peftflow.spec import inventory as inventory_mod


def cmd_list(args: argparse.Namespace) -> int:
    from peftflow.run import device_lease

    inventory = inventory_mod.load()
    rows = []
    for state in device_lease.states(inventory):
        memory = f"{state.memory_gib:g} GiB" if state.memory_gib else "-"
        if not state.held:
            rows.append([state.id, memory, "free", "-", "-"])
            continue
        holder = state.holder
        if holder is None:
            rows.append([state.id, memory, "held", "(holder not recorded yet)", "-"])
            continue
        who = (f"{holder.dag_id} / {holder.run_id} / {holder.stage} try {holder.try_number}"
               if holder.dag_id else f"{holder.stage} by hand ({holder.user})")
        rows.append([state.id, memory, "held", f"{who}, pid {holder.pid}", holder.since])
    source = "nvidia-smi (devices: auto)" if inventory.auto else str(inventory.path)
    cli.print_table(["device", "memory", "state", "holder", "since"], rows, "no devices")
    print(f"{len(inventory)} device(s) from {source}; locks in "
          f"{settings.get().device_lock_dir}")
    return 0


def cmd_sync_pool(args: argparse.Namespace) -> int:
    from peftflow.airflow import pools

    inventory = inventory_mod.load()
    before = pools.sync_gpu_pool(len(inventory))
    change = ("created" if before is None else "kept" if before == len(inventory)
              else f"resized from {before}")
    print(f"pool gpu: {len(inventory)} slot(s), one per device of the inventory "
          f"({', '.join(inventory.ids)}); {change}")
    return 0


def checks() -> list[tuple[str, str, str]]:
    """(name, level, detail) for `peftflow doctor`: inventory, pool size, nvidia-smi."""
    inventory = checks_inventory()
    if isinstance(inventory, tuple):
        return [inventory]
    found = [("gpu inventory", "ok", f"{len(inventory)} device(s): {', '.join(inventory.ids)}"
              f" ({'nvidia-smi' if inventory.auto else inventory.path})")]
    found.append(pool_check(len(inventory)))
    found.extend(_nvidia_checks(inventory))
    return found


def checks_inventory() -> inventory_mod.Inventory | tuple[str, str, str]:
    """The inventory, or the doctor's failing line for it."""
    try:
        return inventory_mod.load()
    except PeftflowError as exc:
        return ("gpu inventory", "fail", f"{exc}. Fix: edit "
                f"{settings.get().devices_config}, then: peftflow devices sync-pool")


def pool_check(devices: int) -> tuple[str, str, str]:
    from peftflow.airflow import pools

    try:
        slots = pools.gpu_slots()
    except PeftflowError as exc:
        return ("pool gpu", "fail", f"{exc}. Fix: ./setup_airflow.sh")
    if slots is None:
        return ("pool gpu", "fail", "pool 'gpu' does not exist: GPU tasks would stay "
                "'scheduled' forever. Fix: peftflow devices sync-pool (or ./setup_airflow.sh)")
    if slots != devices:
        risk = ("two GPU stages could share a device's slot and one would wait inside its "
                "task" if slots > devices else "devices idle while GPU tasks queue")
        return ("pool gpu", "fail", f"pool 'gpu' has {slots} slot(s) but the inventory lists "
                f"{devices} device(s): {risk}. Fix: peftflow devices sync-pool")
    return ("pool gpu", "ok", f"exists with {slots} slot(s), one per device")


def _nvidia_checks(inventory: inventory_mod.Inventory) -> list[tuple[str, str, str]]:
    gpus = inventory_mod.nvidia_smi_gpus()
    if gpus is None:
        return [("gpu devices", "warn", "nvidia-smi not found (or failed): the inventory "
                 f"({', '.join(inventory.ids)}) cannot be checked against the driver (fine on "
                 "a CPU-only box running the smoke profile). Fix: install the NVIDIA driver, "
                 "then check with: nvidia-smi")]
    by_index = {g.index: g for g in gpus}
    by_uuid = {g.uuid: g for g in gpus}
    missing = [d for d in inventory.ids if d not in by_index and d not in by_uuid]
    found: list[tuple[str, str, str]] = []
    if missing:
        shown = ", ".join(f"{g.index} ({g.uuid})" for g in gpus) or "none"
        found.append(("gpu devices", "fail", f"listed in the inventory but not shown by "
                      f"nvidia-smi: {', '.join(missing)}; nvidia-smi shows {shown}. Fix: "
                      f"correct the ids in {inventory.path}, then: peftflow devices sync-pool"))
    else:
        found.append(("gpu devices", "ok", f"nvidia-smi shows every listed device "
                      f"({len(gpus)} GPU(s) on this host)"))
    found.extend(_foreign_processes(inventory, by_index, by_uuid))
    return found


def _foreign_processes(inventory: inventory_mod.Inventory, by_index: dict[str, Any],
                       by_uuid: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Compute processes on a listed device that no lease of ours accounts for."""
    from peftflow.run import device_lease

    apps = inventory_mod.compute_apps() or []
    ours = {state.holder.pid for state in device_lease.states(inventory)
            if state.holder is not None}
    found = []
    for device in inventory.ids:
        gpu = by_index.get(device) or by_uuid.get(device)
        if gpu is None:
            continue
        foreign = [pid for uuid, pid in apps if uuid == gpu.uuid and not _descends(pid, ours)]
        if foreign:
            found.append((f"gpu {device}", "warn", f"busy with process(es) peftflow did not "
                          f"start: pid {', '.join(map(str, foreign))}; a stage leased on it may "
                          "run out of memory. Fix: stop them (kill PID), or take the device out "
                          f"of {inventory.path} and run: peftflow devices sync-pool"))
    return found


def _descends(pid: int, ancestors: set[int]) -> bool:
    """pid is one of `ancestors` or a descendant of one (train.py under its stage)."""
    from peftflow.run.lease import proc_stat

    for _ in range(64):
        if pid in ancestors:
            return True
        fields = proc_stat(pid)
        if pid <= 1 or fields is None or len(fields) < 2 or not fields[1].isdigit():
            return False
        pid = int(fields[1])  # the parent
    return False


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("devices", help="GPUs of this host: who holds which; pool gpu")
    p.set_defaults(func=cmd_list)
    actions = p.add_subparsers(dest="devices_command", metavar="ACTION")
    lst = actions.add_parser("list", help="each device, free or held, by whom, since when")
    lst.set_defaults(func=cmd_list)
    sync = actions.add_parser("sync-pool", help="size pool gpu to the inventory (setup runs it)")
    sync.set_defaults(func=cmd_sync_pool)
