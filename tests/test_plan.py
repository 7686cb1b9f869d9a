"""The cache key's code part: every source file of the package, the stage's script and the
pinned external versions; build outputs never count."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftflow.run import plan
from peftflow.spec.model import Stage


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for rel in ("peftflow/stages/prepare.py", "peftflow/entry.py",
                "peftflow/dataset/reader.py", "peftflow/dataset/_worldtok.c",
                "peftflow/store/atomic.py", "scripts/prepare_dataset.sh"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    monkeypatch.setenv("PEFTFLOW_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("PEFTFLOW_SCRIPTS_DIR", raising=False)
    return tmp_path


@pytest.mark.parametrize("changed", ["peftflow/dataset/_worldtok.c", "peftflow/dataset/reader.py",
                                     "peftflow/entry.py", "scripts/prepare_dataset.sh"])
def test_a_change_to_the_stage_code_changes_its_code_version(project: Path, changed: str) -> None:
    before = plan.code_version(Stage.PREPARE)
    with open(project / changed, "a") as handle:
        handle.write("# edited\n")
    assert plan.code_version(Stage.PREPARE) != before


def test_a_change_in_a_shared_module_invalidates_a_reused_result(project: Path) -> None:
    """store/atomic.py is no stage's own code, yet every stage runs it: the key must move."""
    the_plan = plan.StagePlan(Stage.PREPARE, ["bash", "x"], project / "out", {}, {})
    before = the_plan.cache_key()
    with open(project / "peftflow/store/atomic.py", "a") as handle:
        handle.write("# edited\n")
    assert the_plan.cache_key() != before


def test_an_upgrade_of_a_pinned_library_changes_the_code_version(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = plan.code_version(Stage.PREPARE)
    real = plan._version
    monkeypatch.setattr(plan, "_version",
                        lambda dist: "9.9.9" if dist == "torch" else real(dist))
    assert plan.code_version(Stage.PREPARE) != before


def test_build_outputs_do_not_count(project: Path) -> None:
    before = plan.code_version(Stage.PREPARE)
    (project / "peftflow/dataset/_worldtok.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\0")
    (project / "peftflow/dataset/__pycache__").mkdir()
    (project / "peftflow/dataset/__pycache__/reader.cpython-311.pyc").write_bytes(b"\0")
    assert plan.code_version(Stage.PREPARE) == before
