"""Which GPUs a stage runs on: an exclusive, crash-proof lease on whole devices.

Airflow's pool `gpu` admits as many GPU tasks as there are devices, but it only counts; it does
not say which card a task gets. A GPU stage therefore leases its devices itself, right before
it starts work, from the inventory (spec/inventory.py), and its children see only those
(CUDA_VISIBLE_DEVICES). The stage takes the lease, not the Airflow task, so a stage script run
by hand takes the same lease and can never share a card with a scheduled run.

One lock file per device in a host-wide folder (settings.device_lock_dir), held with flock(2):
the kernel drops the lock when the last descriptor closes, so a holder killed with kill -9, a
crashed scheduler or a lost terminal leaves no stale lease. The descriptors are kept open in
the stage's children (child.keep_open), so train.py, should it outlive the stage, still holds
its cards. A holder file beside each lock says who holds it since when, for `peftflow devices`;
it is only believed while the lock is actually held. The lease log (`leases.jsonl`) keeps one
line per lease taken and released, with wall-clock times: a release is logged before the lock
goes, so on one host no two holders' intervals of a device can ever overlap in it.

Several devices are taken all or none: a request that finds only some free lets them go again
and waits, so two tasks that each hold one of two cards can never wait on each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftflow import child, settings
from peftflow.errors import ConfigError, ResourceError
from peftflow.spec import inventory as inventory_mod
from peftflow.spec.inventory import Inventory
from peftflow.store import atomic
from peftflow.store.status_record import utc_now

POLL_S = 0.25
LOG_FILE = "leases.jsonl"  # beside the locks: every lease taken and released, for audits
REPORT_EVERY_S = 60.0  # while waiting, say so again this often
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Holder:
    """Who holds a device: an Airflow task (dag, run, stage, try) or a script run by hand."""

    stage: str
    pid: int
    host: str
    user: str
    since: str
    dag_id: str | None = None
    run_id: str | None = None
    try_number: int | None = None

    def describe(self) -> str:
        if self.dag_id:
            return (f"{self.dag_id} / {self.run_id} / {self.stage} try {self.try_number} "
                    f"(pid {self.pid}, since {self.since})")
        return f"{self.stage} run by hand by {self.user} (pid {self.pid}, since {self.since})"

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class DeviceState:
    id: str
    memory_gib: float | None
    holder: Holder | None  # None: free
    held: bool


@dataclass
class Lease:
    """Devices held by this process until release()."""

    ids: tuple[str, ...]
    holder: Holder
    waited_s: float
    lock_dir: Path
    _fds: list[int] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """What the stage's children must see: only the leased cards, numbered as nvidia-smi
        numbers them."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.ids), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    def record(self) -> dict[str, Any]:
        """For status.json and the audit trail."""
        return {"host": self.holder.host, "ids": list(self.ids), "acquired_at": self.holder.since,
                "waited_s": round(self.waited_s, 3)}

    def release(self) -> None:
        if not self._fds:
            return
        # Logged while still held: the next holder's "acquired" line is always later.
        _log(self.lock_dir, "released", self.ids, self.holder)
        for device in self.ids:
            with contextlib.suppress(FileNotFoundError):
                _holder_path(self.lock_dir, device).unlink()
        for fd in self._fds:
            child.forget(fd)
            os.close(fd)  # the lock goes with the last open descriptor
        self._fds.clear()


def holder_from_env(stage: str) -> Holder:
    """This process as a holder: the task runner passes the run's identity in the environment."""
    try_number = settings.env_str("PEFTFLOW_TRY_NUMBER")
    return Holder(stage=stage, pid=os.getpid(), host=settings.host_name(),
                  user=settings.current_user(), since=utc_now(),
                  dag_id=settings.env_str("PEFTFLOW_DAG_ID") or None,
                  run_id=settings.env_str("PEFTFLOW_RUN_ID") or None,
                  try_number=int(try_number) if try_number and try_number.isdigit() else None)


def acquire(inventory: Inventory, count: int, holder: Holder, *, prefer: Sequence[str] = (),
            on_wait: Callable[[str], None] | None = None, poll_s: float = POLL_S,
            timeout_s: float | None = None) -> Lease:
    """Lease `count` devices of the inventory, waiting while they are held; `prefer` first
    (the cards the previous GPU stage of the run used). Raises ConfigError when the inventory
    is too small, ResourceError after `timeout_s` (default: wait as long as it takes; the task's
    execution_timeout still applies)."""
    if count < 1:
        raise ConfigError(f"a GPU stage needs at least 1 device, not {count}")
    if count > len(inventory):
        raise ConfigError(f"{holder.stage} needs {count} device(s) but the inventory "
                          f"({inventory.path}) lists {len(inventory)}: {', '.join(inventory.ids)};"
                          " add devices there or lower runtime.devices in the profile")
    lock_dir = _lock_dir()
    order = [d for d in prefer if d in inventory.ids]
    order += [d for d in inventory.ids if d not in order]
    started = time.monotonic()
    reported = -REPORT_EVERY_S
    while True:
        fds, ids = _try_take(lock_dir, order, count)
        if len(ids) == count:
            waited = time.monotonic() - started
            final = dataclasses.replace(holder, since=utc_now())
            lease = Lease(tuple(ids), final, waited, lock_dir, fds)
            for device in ids:
                atomic.write_json(_holder_path(lock_dir, device), final.as_dict())
            _log(lock_dir, "acquired", lease.ids, final)
            for fd in fds:
                child.keep_open(fd)
            return lease
        for fd in fds:  # all or none: never sit on a part while waiting for the rest
            os.close(fd)
        now = time.monotonic()
        if timeout_s is not None and now - started >= timeout_s:
            raise ResourceError(f"{holder.stage}: {count} device(s) not free after "
                                f"{timeout_s:.0f} s; {_busy_text(inventory)}")
        if on_wait is not None and now - reported >= REPORT_EVERY_S:
            reported = now
            on_wait(f"waiting for {count} free device(s) of {', '.join(inventory.ids)}: "
                    f"{_busy_text(inventory)}")
        time.sleep(poll_s)


@contextlib.contextmanager
def leased(inventory: Inventory, count: int, holder: Holder, **kwargs: Any) -> Iterator[Lease]:
    lease = acquire(inventory, count, holder, **kwargs)
    try:
        yield lease
    finally:
        lease.release()


# The task runner names the cards the run's previous GPU stage used: eval prefers them.
PREFER_ENV = "PEFTFLOW_PREFER_DEVICES"


@contextlib.contextmanager
def for_stage(stage: str, count: int) -> Iterator[Lease]:
    """A GPU stage's lease, from the host's inventory, for as long as the stage works: the
    environment of this process (and so of every child it starts) then shows only the leased
    cards. Progress lines go to stderr, which the task log shows."""
    inventory = inventory_mod.load()
    prefer = [d for d in (settings.env_str(PREFER_ENV) or "").split(",") if d]

    def say(message: str) -> None:
        print(f"[{stage}] {message}", file=sys.stderr, flush=True)

    lease = acquire(inventory, count, holder_from_env(stage), prefer=prefer, on_wait=say)
    saved = {k: os.environ.get(k) for k in lease.env()}
    os.environ.update(lease.env())
    say(f"leased device(s) {', '.join(lease.ids)} on {lease.holder.host}"
        + (f" after waiting {lease.waited_s:.1f} s" if lease.waited_s >= 1 else ""))
    try:
        yield lease
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        lease.release()


def states(inventory: Inventory) -> list[DeviceState]:
    """Each device of the inventory: free, or held and by whom."""
    lock_dir = _lock_dir()
    found = []
    for device in inventory.devices:
        held = _is_held(lock_dir, device.id)
        found.append(DeviceState(device.id, device.memory_gib,
                                 _read_holder(lock_dir, device.id) if held else None, held))
    return found


def history() -> list[dict[str, Any]]:
    """Every lease taken and released on this host, oldest first (the lease log)."""
    path = _lock_dir() / LOG_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def _log(lock_dir: Path, event: str, ids: Sequence[str], holder: Holder) -> None:
    """One line per event, appended in a single write (O_APPEND keeps lines whole)."""
    line = json.dumps({"ts": time.time(), "at": utc_now(), "event": event, "ids": list(ids),
                       "holder": holder.as_dict()}, sort_keys=True) + "\n"
    fd = os.open(lock_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def _busy_text(inventory: Inventory) -> str:
    parts = []
    for state in states(inventory):
        if state.held:
            who = state.holder.describe() if state.holder else "a holder not yet recorded"
            parts.append(f"device {state.id} held by {who}")
    return "; ".join(parts) or "the devices were just taken by another task"


def _lock_dir() -> Path:
    path = settings.get().device_lock_dir
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _lock_path(lock_dir: Path, device: str) -> Path:
    return lock_dir / f"{_SAFE.sub('_', device)}.lock"


def _holder_path(lock_dir: Path, device: str) -> Path:
    return lock_dir / f"{_SAFE.sub('_', device)}.holder.json"


def _open(lock_dir: Path, device: str) -> int:
    path = _lock_path(lock_dir, device)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link; device locks must be plain files: "
                              "remove it") from None
        raise ResourceError(f"cannot open the device lock {path}: {exc.strerror}; check "
                            "PEFTFLOW_DEVICE_LOCK_DIR") from None


def _try_take(lock_dir: Path, order: Sequence[str], count: int) -> tuple[list[int], list[str]]:
    fds: list[int] = []
    ids: list[str] = []
    for device in order:
        fd = _open(lock_dir, device)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        fds.append(fd)
        ids.append(device)
        if len(ids) == count:
            break
    return fds, ids


def _is_held(lock_dir: Path, device: str) -> bool:
    fd = _open(lock_dir, device)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # a shared probe lock goes with it
    return False


def _read_holder(lock_dir: Path, device: str) -> Holder | None:
    try:
        doc = json.loads(_holder_path(lock_dir, device).read_text(encoding="utf-8"))
        return Holder(**{k: doc.get(k) for k in Holder.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None
