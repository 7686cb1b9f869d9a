"""The retrain gate: a new adapter must be at least as good as the profile's current release."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagtest_support import make_dag_bundle, run_dag_test

pytestmark = pytest.mark.slow
BUNDLE = "retrain-tests"


@pytest.fixture(scope="module")
def dag_folder(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("retrain")
    smoke = (project_root / "dag_specs" / "rwkv7_smoke_cpu.yaml").read_text()
    retrain = (project_root / "dag_specs" / "rwkv7_smoke_retrain.yaml").read_text()
    patch = make_dag_bundle(root, {
        "first.yaml": smoke.replace("dag_id: rwkv7_smoke_cpu", "dag_id: retrain_first"),
        "weak.yaml": retrain.replace("dag_id: rwkv7_smoke_retrain", "dag_id: retrain_weak")
        .replace("configs/profiles/smoke_cpu.yaml", "tests/fixtures/profiles/smoke_weak.yaml")
        .replace("min_loss_improvement: 0.01", "min_loss_improvement: 0.0"),
    }, BUNDLE)
    patch.setenv("PEFTFLOW_RELEASES_ROOT", str(root / "releases"))
    yield root / "dags"
    patch.undo()


def _run(dag_folder: Path, dag_id: str) -> Any:
    return run_dag_test(dag_folder, BUNDLE, dag_id, {"note": "retrain test"})


def test_retrain_adapter_worse_than_the_release_is_blocked_with_the_comparison(
        dag_folder: Path, airflow_db: None, smoke_base_model: Path) -> None:
    from peftflow import settings
    from peftflow.release import lineage, registry
    from peftflow.run.runinfo import safe_segment
    from peftflow.store import status_record as status
    from peftflow.store.hashing import sha256_file

    first = _run(dag_folder, "retrain_first")
    assert str(first.state) == "success"
    released = registry.current_release("smoke-cpu")
    assert released is not None and released.run_id == first.run_id
    assert released.doc["baseline"] is None  # the first spec compares with no release

    weak = _run(dag_folder, "retrain_weak")
    states = {ti.task_id: str(ti.state) for ti in weak.get_task_instances()}
    assert states["evaluate_adapter"] == "success"
    assert states["release_gate"] == "failed"
    assert states["release_adapter"] == "upstream_failed"
    (blocked,) = [b for b in registry.list_blocked("smoke-cpu") if b["run_id"] == weak.run_id]
    reasons = " ".join(blocked["reasons"])
    assert "no_regression_vs_release" in reasons or "current release" in reasons, reasons
    assert registry.current_release("smoke-cpu").version == released.version
    # the release a retrain would record as its baseline is the one its evaluation read
    evaluated = status.read(settings.get().artifact_root / "retrain_weak"
                            / safe_segment(weak.run_id) / "evaluate_adapter")
    assert lineage.baseline_release(evaluated) == {
        "profile": "smoke-cpu", "version": released.version,
        "metrics_sha256": sha256_file(released.metrics_path)}
