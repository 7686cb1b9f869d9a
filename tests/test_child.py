"""The one child-process runner (peftflow/child.py) and its grace policy, on real processes.

Graces are passed short here (a fraction of a second); the policy's own values are checked
against each other, not waited out.
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from peftflow import child as runner
from peftflow import entry
from peftflow.airflow import services
from peftflow.child import CHILD_GRACE_S, TERM_GRACE_S, Child, Finished, stop_group
from peftflow.errors import ResourceError
from peftflow.train import rwkv_peft

# Children that say "ready" once their SIGTERM handler is in place, then wait to be stopped.
IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(60)")
EXITS_ON_SIGTERM = ("import signal, sys, time\n"
                    "def bye(signum, frame):\n"
                    "    time.sleep(0.3)  # a checkpoint being written\n"
                    "    open('checkpoint', 'w').close()\n"
                    "    sys.exit(3)\n"
                    "signal.signal(signal.SIGTERM, bye)\n"
                    "print('ready', flush=True)\n"
                    "time.sleep(60)\n")


class Running:
    """A Child whose wait() runs on a thread, so that the test can stop it."""

    def __init__(self, code: str, cwd: Path, **kwargs: bool) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.finished: list[Finished] = []
        self.child = Child([sys.executable, "-c", code], None, cwd, **kwargs)
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()
        assert self.ready.wait(timeout=30), self.lines

    def _wait(self) -> None:
        self.finished.append(self.child.wait(on_line=self._line))

    def _line(self, line: str) -> None:
        self.lines.append(line)
        if line == "ready":
            self.ready.set()

    def result(self) -> Finished:
        self.thread.join(timeout=30)
        assert self.finished, "wait() did not return"
        return self.finished[0]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("ticking", [False, True], ids=["plain", "ticking"])
def test_lines_are_pumped_to_on_line_in_order(tmp_path: Path, ticking: bool) -> None:
    seen: list[str] = []
    ticks: list[float] = []
    child = Child([sys.executable, "-c", "for i in range(3000): print(f'line {i}')"], None,
                  tmp_path)
    finished = child.wait(on_line=seen.append, keep=5,
                          on_tick=(lambda: ticks.append(time.monotonic())) if ticking else None,
                          tick_s=0.01)
    expected = [f"line {i}" for i in range(3000)]
    assert seen == expected
    assert finished == Finished(0, tuple(expected[-5:]))
    assert bool(ticks) is ticking


def test_on_tick_runs_while_the_child_is_quiet(tmp_path: Path) -> None:
    ticks: list[float] = []
    child = Child([sys.executable, "-c", "import time; time.sleep(0.6); print('done')"], None,
                  tmp_path)
    finished = child.wait(on_line=lambda line: None, on_tick=lambda: ticks.append(1.0),
                          tick_s=0.05)
    assert finished.returncode == 0 and finished.tail == ("done",)
    assert len(ticks) >= 5


def test_output_held_open_by_a_leftover_process_is_not_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader exits at once; the grandchild it leaves keeps the pipe open for a minute."""
    monkeypatch.setattr(runner, "DRAIN_S", 0.3)
    leaves = ("import subprocess, sys; c = subprocess.Popen(['sleep', '60']); "
              "print(c.pid, flush=True)")
    child = Child([sys.executable, "-c", leaves], None, tmp_path)
    started = time.monotonic()
    finished = child.wait(on_line=lambda line: None, on_tick=lambda: None, tick_s=0.05)
    assert time.monotonic() - started < 10
    assert finished.returncode == 0
    assert child.stop(grace_s=0.1) is True  # a finished leader: its stragglers are killed
    grandchild = int(finished.tail[0])
    deadline = time.monotonic() + 5
    while runner._group_exists(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not runner._group_exists(child.pid), f"grandchild {grandchild} survived"


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    running = Running(IGNORES_SIGTERM, tmp_path)
    started = time.monotonic()
    assert running.child.stop(grace_s=0.5) is False
    took = time.monotonic() - started
    assert 0.5 <= took < 6
    assert running.result().returncode == -9  # SIGKILL
    assert _gone(running.child.pid)


def test_a_child_that_exits_on_sigterm_within_the_grace_is_not_sigkilled(
        tmp_path: Path) -> None:
    running = Running(EXITS_ON_SIGTERM, tmp_path)
    started = time.monotonic()
    assert running.child.stop(grace_s=20) is True
    assert time.monotonic() - started < 10  # it returns when the child is gone, not at 20 s
    assert running.result().returncode == 3  # its own exit, not -9
    assert (tmp_path / "checkpoint").exists()


def test_a_child_in_the_callers_group_is_stopped_alone(tmp_path: Path) -> None:
    """own_group=False: the child shares our process group, and stop() signals only it (were
    the group signalled, this test process would be killed with it)."""
    running = Running(IGNORES_SIGTERM, tmp_path, own_group=False)
    assert os.getpgid(running.child.pid) == os.getpgid(0)
    assert running.child.stop(grace_s=0.3) is False
    assert running.result().returncode == -9


def test_stop_group_waits_for_every_member_not_just_the_leader(tmp_path: Path) -> None:
    """The leader exits on SIGTERM at once; its grandchild ignores it and is killed after the
    grace."""
    tree = ("import signal, subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', "
            "\"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)\"], stdout=subprocess.PIPE, text=True); "
            "c.stdout.readline(); print(c.pid, flush=True); time.sleep(60)")
    leader = subprocess.Popen([sys.executable, "-c", tree], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert leader.stdout is not None
    grandchild = int(leader.stdout.readline())
    started = time.monotonic()
    assert stop_group(leader.pid, grace_s=0.5) is False
    assert time.monotonic() - started >= 0.5
    assert not runner._group_exists(leader.pid), f"grandchild {grandchild} survived"


def test_the_task_runner_waits_longer_than_the_training_backend() -> None:
    """A stage stops train.py with CHILD_GRACE_S and then writes its status; whoever stops the
    stage must not SIGKILL it (and train.py, in its group) before that."""
    assert TERM_GRACE_S > CHILD_GRACE_S >= 30
    assert inspect.signature(rwkv_peft.run).parameters["grace_s"].default == CHILD_GRACE_S
    assert inspect.signature(Child.stop).parameters["grace_s"].default == TERM_GRACE_S
    assert inspect.signature(services.stop).parameters["grace_s"].default == TERM_GRACE_S


def test_the_rwkv_peft_backend_has_no_process_handling_of_its_own() -> None:
    tree = ast.parse(Path(inspect.getfile(rwkv_peft)).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"subprocess", "signal", "threading"}


def _interrupt_when(marker: Path) -> Callable[[], None]:
    def tick() -> None:
        if marker.exists():
            raise entry.Interrupted("terminated by signal 15")
    return tick


def test_the_rwkv_peft_backend_kills_a_train_py_that_ignores_sigterm_after_its_grace(
        tmp_path: Path) -> None:
    code = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "open('pid', 'w').write(str(os.getpid())); open('ready', 'w').close(); "
            "time.sleep(60)")
    started = time.monotonic()
    with pytest.raises(entry.Interrupted):
        rwkv_peft.run([sys.executable, "-c", code], tmp_path,
                      _interrupt_when(tmp_path / "ready"), every=0.05, grace_s=0.5)
    assert time.monotonic() - started >= 0.5
    assert _gone(int((tmp_path / "pid").read_text()))


def test_the_rwkv_peft_backend_lets_train_py_write_its_checkpoint_on_sigterm(
        tmp_path: Path) -> None:
    code = EXITS_ON_SIGTERM.replace("print('ready', flush=True)", "open('ready', 'w').close()")
    with pytest.raises(entry.Interrupted):
        rwkv_peft.run([sys.executable, "-c", code], tmp_path,
                      _interrupt_when(tmp_path / "ready"), every=0.05, grace_s=20)
    assert (tmp_path / "checkpoint").exists()


def test_the_rwkv_peft_backend_maps_train_py_output_to_its_error(tmp_path: Path,
                                                                 capfd: pytest.CaptureFixture[str]
                                                                 ) -> None:
    code = "print('epoch 0'); print('torch.OutOfMemoryError: CUDA out of memory.'); exit(1)"
    with pytest.raises(ResourceError, match="out of GPU memory"):
        rwkv_peft.run([sys.executable, "-c", code], tmp_path, lambda: None, every=0.05)
    assert "epoch 0\ntorch.OutOfMemoryError" in capfd.readouterr().err


def _deployment(tmp_path: Path) -> services.Deployment:
    dep = services.Deployment(home=tmp_path, db_url="sqlite://", api_host="127.0.0.1",
                              api_port=1, parallelism=1)
    dep.run_dir.mkdir()
    return dep


@pytest.mark.parametrize(("code", "said"), [
    ("import time; time.sleep(60)", "scheduler: stopped (pid {pid})"),
    (IGNORES_SIGTERM, "scheduler: killed (pid {pid}; still running 0s after SIGTERM)"),
])
def test_services_stop_their_process_group_with_the_shared_helper(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], code: str, said: str) -> None:
    dep = _deployment(tmp_path)
    service = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert service.stdout is not None
    if "ready" in code:
        assert service.stdout.readline().strip() == "ready"
    (dep.run_dir / "scheduler.pid").write_text(f"{service.pid}\n")
    services.stop(dep, names=("scheduler",), grace_s=0.3)
    assert said.format(pid=service.pid) in capsys.readouterr().out
    assert not (dep.run_dir / "scheduler.pid").exists()
    assert not runner._group_exists(service.pid)
