"""The cache key's code part: which files count as the code of a stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftflow.run import plan
from peftflow.spec.model import Stage


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for rel in ("peftflow/stages/prepare.py", "peftflow/stages/common.py",
                "peftflow/dataset/reader.py", "peftflow/dataset/_worldtok.c",
                "scripts/prepare_dataset.sh"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    monkeypatch.setenv("PEFTFLOW_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("PEFTFLOW_SCRIPTS_DIR", raising=False)
    return tmp_path


@pytest.mark.parametrize("changed", ["peftflow/dataset/_worldtok.c", "peftflow/dataset/reader.py",
                                     "peftflow/stages/common.py", "scripts/prepare_dataset.sh"])
def test_a_change_to_the_stage_code_changes_its_code_version(project: Path, changed: str) -> None:
    before = plan.code_version(Stage.PREPARE)
    with open(project / changed, "a") as handle:
        handle.write("# edited\n")
    assert plan.code_version(Stage.PREPARE) != before


def test_build_outputs_and_other_stages_code_do_not_count(project: Path) -> None:
    before = plan.code_version(Stage.PREPARE)
    (project / "peftflow/dataset/_worldtok.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\0")
    (project / "peftflow/dataset/__pycache__").mkdir()
    (project / "peftflow/dataset/__pycache__/reader.cpython-311.pyc").write_bytes(b"\0")
    (project / "peftflow/train").mkdir()
    (project / "peftflow/train/loop.py").write_text("# train code\n")
    assert plan.code_version(Stage.PREPARE) == before
