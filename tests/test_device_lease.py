"""The device lease (run/device_lease.py) and the GPU inventory (spec/inventory.py), on real
processes and real flock(2) locks: exclusive, all-or-none, and gone with a kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peftflow.errors import ConfigError, SpecError
from peftflow.run import device_lease
from peftflow.spec import inventory

HOLD = textwrap.dedent("""
    import sys, time
    from peftflow.run import device_lease
    from peftflow.spec import inventory
    inv = inventory.load()
    lease = device_lease.acquire(inv, int(sys.argv[1]), device_lease.holder_from_env("hold"),
                                 prefer=sys.argv[3].split(",") if len(sys.argv) > 3 else ())
    print("HELD", ",".join(lease.ids), time.time(), flush=True)
    time.sleep(float(sys.argv[2]))
    print("RELEASING", time.time(), flush=True)  # still held until release() returns
    lease.release()
""")


@pytest.fixture()
def two_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[inventory.Inventory]:
    path = tmp_path / "devices.yaml"
    path.write_text('devices:\n  - {id: "0", memory_gib: 24}\n  - {id: "1"}\n')
    monkeypatch.setenv("PEFTFLOW_DEVICES_CONFIG", str(path))
    monkeypatch.setenv("PEFTFLOW_DEVICE_LOCK_DIR", str(tmp_path / "locks"))
    yield inventory.load()


def _holder(count: int, seconds: float, *prefer: str) -> subprocess.Popen[str]:
    """A process that leases `count` devices, says which, and holds them `seconds`."""
    argv = [sys.executable, "-c", HOLD, str(count), str(seconds), *([",".join(prefer)]
                                                                    if prefer else [])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PEFTFLOW_DAG_ID": "dag_a",
                                 "PEFTFLOW_RUN_ID": "run_1", "PEFTFLOW_TRY_NUMBER": "2"})
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "HELD", line
    proc.held = line[1].split(",")  # type: ignore[attr-defined]
    return proc


def _me() -> device_lease.Holder:
    return device_lease.holder_from_env("test")


def test_a_held_device_names_its_holder_and_a_kill_9_frees_it(
        two_devices: inventory.Inventory) -> None:
    proc = _holder(1, 60)
    try:
        states = {s.id: s for s in device_lease.states(two_devices)}
        assert states["0"].held and not states["1"].held
        holder = states["0"].holder
        assert holder is not None and holder.pid == proc.pid
        assert (holder.dag_id, holder.run_id, holder.try_number) == ("dag_a", "run_1", 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # No stale lease: the kernel dropped the lock with the process; the holder file it
        # left behind is not believed.
        assert not any(s.held for s in device_lease.states(two_devices))
        with device_lease.leased(two_devices, 2, _me(), timeout_s=2) as lease:
            assert lease.ids == ("0", "1")
    finally:
        proc.kill()
        proc.wait()


def test_two_processes_racing_for_one_device_take_turns(
        two_devices: inventory.Inventory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    one = tmp_path / "one.yaml"
    one.write_text('devices:\n  - {id: "0"}\n')
    monkeypatch.setenv("PEFTFLOW_DEVICES_CONFIG", str(one))
    first = _holder(1, 1.5)
    waits: list[str] = []
    started = time.monotonic()
    lease = device_lease.acquire(inventory.load(), 1, _me(), on_wait=waits.append)
    acquired_at = time.time()
    waited = time.monotonic() - started
    released_line = first.stdout.readline().split()  # type: ignore[union-attr]
    first.wait()
    try:
        assert released_line[0] == "RELEASING"
        assert lease.ids == ("0",) and waited >= 1.0 and lease.waited_s >= 1.0
        assert waits and "device 0 held by dag_a / run_1 / hold try 2" in waits[0]
        # the second holder got the lock only after the first let it go: never both at once
        assert float(released_line[1]) <= acquired_at
        # ... and the lease log says so: the first's release before the second's acquisition
        log = [(e["event"], e["holder"]["pid"], e["ts"]) for e in device_lease.history()]
        assert [(e, pid) for e, pid, _ in log] == [("acquired", first.pid),
                                                   ("released", first.pid),
                                                   ("acquired", os.getpid())]
        assert log[1][2] <= log[2][2]
    finally:
        lease.release()


def test_a_two_device_request_waits_until_both_are_free(
        two_devices: inventory.Inventory) -> None:
    blocker = _holder(1, 1.2)
    assert blocker.held == ["0"]  # type: ignore[attr-defined]
    started = time.monotonic()
    with device_lease.leased(two_devices, 2, _me(), timeout_s=30) as lease:
        waited = time.monotonic() - started
        assert lease.ids == ("0", "1")
    blocker.wait()
    assert waited >= 1.0  # device 1 was free all along, but not both


def test_a_request_that_cannot_be_met_times_out_with_the_holders(
        two_devices: inventory.Inventory) -> None:
    blocker = _holder(2, 30)
    try:
        with pytest.raises(Exception) as err:
            device_lease.acquire(two_devices, 1, _me(), timeout_s=0.5)
        assert "device 0 held by dag_a / run_1" in str(err.value)
        assert "device 1 held by" in str(err.value)
    finally:
        blocker.kill()
        blocker.wait()


def test_more_devices_than_the_inventory_is_refused_at_once(
        two_devices: inventory.Inventory) -> None:
    with pytest.raises(ConfigError, match="needs 3 device.*lists 2: 0, 1"):
        device_lease.acquire(two_devices, 3, _me())


def test_the_preferred_device_is_taken_when_it_is_free(two_devices: inventory.Inventory) -> None:
    with device_lease.leased(two_devices, 1, _me(), prefer=["1"]) as lease:
        assert lease.ids == ("1",)
    with device_lease.leased(two_devices, 1, _me(), prefer=["7"]) as lease:
        assert lease.ids == ("0",)  # a preference outside the inventory is ignored


def test_a_stage_lease_shows_only_its_devices_to_its_children_which_keep_it_held(
        two_devices: inventory.Inventory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child inherits the lock: if the stage dies first (kill -9 of the stage alone), the
    still-running train.py keeps the card, so no second task can land on it."""
    from peftflow.child import Child

    monkeypatch.setenv(device_lease.PREFER_ENV, "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with device_lease.for_stage("train_adapter", 1) as lease:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        child = Child([sys.executable, "-c", "import os, sys, time; print(os.environ["
                       "'CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(30)"], None, Path.cwd())
        assert child.proc.stdout is not None
        assert child.proc.stdout.readline().strip() == "1"
        assert lease.record()["ids"] == ["1"]
        # The stage lets go of its own descriptors (as a dead stage would) ...
        for fd in list(lease._fds):
            os.close(fd)
        lease._fds.clear()
        # ... and the card is still held, by the child.
        assert {s.id: s.held for s in device_lease.states(two_devices)} == {"0": False,
                                                                          "1": True}
        child.stop(grace_s=2)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not any(s.held for s in device_lease.states(two_devices))


def test_a_symlinked_lock_file_is_refused(two_devices: inventory.Inventory,
                                          tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(exist_ok=True)
    (locks / "0.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="symbolic link"):
        device_lease.acquire(two_devices, 1, _me())
    assert not (tmp_path / "elsewhere").exists()


def test_the_inventory_refuses_a_device_listed_twice_with_its_line(
        tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text('devices:\n  - {id: "0"}\n  - {id: "0"}\n')
    with pytest.raises(SpecError) as err:
        inventory.load(path)
    problem = err.value.problems[0]
    assert problem.line == 3 and problem.path == "$.devices[1].id"
    assert "listed twice" in problem.message


@pytest.mark.parametrize("body", ['devices:\n  - {id: 0}\n', 'devices:\n  - {id: "../x"}\n',
                                  "devices: []\n", "devices: all\n"])
def test_the_inventory_refuses_bad_ids_with_a_located_message(tmp_path: Path,
                                                               body: str) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(body)
    with pytest.raises(SpecError) as err:
        inventory.load(path)
    assert str(path.name) in str(err.value)


def _fake_nvidia_smi(folder: Path, gpus: str) -> None:
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\ncase \"$1\" in\n"
                      f"  --query-gpu=*) printf '{gpus}' ;;\n"
                      "  --query-compute-apps=*) printf 'GPU-aaaa0000-0000, 4242\\n' ;;\n"
                      "esac\n")
    script.chmod(0o755)


def test_auto_takes_the_gpus_nvidia_smi_lists(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path, "0, GPU-aaaa0000-0000, 24564\\n1, GPU-bbbb0000-0000, 24564\\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "devices.yaml"
    path.write_text("devices: auto\n")
    found = inventory.load(path)
    assert found.ids == ("0", "1") and found.auto and found.devices[0].memory_gib == 24.0


def test_auto_without_a_gpu_says_how_to_list_devices(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    path = tmp_path / "devices.yaml"
    path.write_text("devices: auto\n")
    with pytest.raises(ConfigError, match="nvidia-smi is not on PATH; list the devices by id"):
        inventory.load(path)


def test_doctor_names_a_listed_device_the_driver_does_not_show_and_a_foreign_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peftflow.cli import devices

    _fake_nvidia_smi(tmp_path, "0, GPU-aaaa0000-0000, 24564\\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "devices.yaml"
    path.write_text('devices:\n  - {id: "0"}\n  - {id: "1"}\n')
    monkeypatch.setenv("PEFTFLOW_DEVICES_CONFIG", str(path))
    monkeypatch.setenv("PEFTFLOW_DEVICE_LOCK_DIR", str(tmp_path / "locks"))
    found = {name: (level, detail) for name, level, detail in devices._nvidia_checks(
        inventory.load())}
    assert found["gpu devices"][0] == "fail" and "not shown by nvidia-smi: 1" in \
        found["gpu devices"][1]
    assert found["gpu 0"][0] == "warn" and "pid 4242" in found["gpu 0"][1]


def test_peftflow_devices_lists_holders(two_devices: inventory.Inventory,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from peftflow.cli import main as cli

    proc = _holder(1, 60)
    try:
        with pytest.raises(SystemExit) as done:
            cli.main(["devices"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert lines[0].split() == ["DEVICE", "MEMORY", "STATE", "HOLDER", "SINCE"]
        assert lines[1].startswith("0") and "24 GiB" in lines[1] and "held" in lines[1]
        assert f"dag_a / run_1 / hold try 2, pid {proc.pid}" in lines[1]
        assert lines[2].split()[:3] == ["1", "-", "free"]
    finally:
        proc.kill()
        proc.wait()


def test_status_json_accepts_the_lease_record(tmp_path: Path,
                                              two_devices: inventory.Inventory) -> None:
    from peftflow.store import status_record as status

    rec = status.StageRecorder("train_adapter", tmp_path)
    with device_lease.leased(two_devices, 2, _me()) as lease:
        rec.devices = lease.record()
    doc = json.loads(rec.write("success").read_text())
    assert doc["devices"]["ids"] == ["0", "1"] and doc["devices"]["host"]


def test_a_stage_script_run_by_hand_waits_for_the_device_a_task_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, project_root: Path) -> None:
    """The lease is the stage's, not Airflow's: by hand, the script queues behind the task."""
    one = tmp_path / "one.yaml"
    one.write_text('devices:\n  - {id: "0"}\n')
    monkeypatch.setenv("PEFTFLOW_DEVICES_CONFIG", str(one))
    monkeypatch.setenv("PEFTFLOW_DEVICE_LOCK_DIR", str(tmp_path / "locks"))
    holder = _holder(1, 2.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEFTFLOW_DAG_ID")}
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(project_root / "scripts/evaluate_adapter.sh"), "--profile",
         str(project_root / "configs/profiles/smoke_cpu.yaml"), "--adapter",
         str(tmp_path / "missing.pth"), "--suite",
         str(project_root / "configs/eval/pydoc_domain.yaml"), "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120)
    holder.wait()
    assert time.monotonic() - started >= 1.5
    assert "waiting for 1 free device(s) of 0: device 0 held by dag_a / run_1 / hold" in \
        done.stderr, done.stderr
    assert "leased device(s) 0" in done.stderr
    assert done.returncode == 3, done.stderr  # then the missing adapter, as without a lease
    history = [(e["event"], e["holder"].get("dag_id")) for e in device_lease.history()]
    assert history[-2:] == [("acquired", None), ("released", None)]  # "by hand": no DAG
