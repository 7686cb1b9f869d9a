"""The `peftflow` console script, run as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PEFTFLOW = str(Path(sys.executable).parent / "peftflow")
INVALID = ROOT / "tests" / "fixtures" / "specs" / "invalid"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PEFTFLOW, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_validate_defaults_to_dag_specs_and_exits_zero() -> None:
    done = run("validate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "4 specs valid\n"
    assert done.stderr == ""


@pytest.mark.parametrize("name", ["bad_cron.yaml", "syntax_error.yaml", "empty_file.yaml",
                                  "too_few_documents.yaml"])
def test_validate_prints_one_located_line_per_problem_and_exits_one(name: str) -> None:
    expected = json.loads((INVALID / "expected.json").read_text())[name]
    done = run("validate", str(INVALID / name))
    assert done.returncode == 1
    *lines, summary = done.stdout.strip().splitlines()
    assert lines and all(":" in line and "$" in line for line in lines)
    assert re.fullmatch(r"\d+ problems? in 1 file", summary), summary
    assert re.search(expected, done.stdout), done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_validate_of_a_folder_reports_every_broken_file_and_keeps_going() -> None:
    done = run("validate", str(INVALID))
    assert done.returncode == 1
    files = {line.split(":", 1)[0] for line in done.stdout.splitlines()}
    assert len({Path(f).name for f in files if f.endswith(".yaml")}) >= 20
    assert "Traceback" not in done.stderr


def test_render_prints_the_dag_factory_config_as_yaml() -> None:
    done = run("render", "dag_specs/rwkv7_1b5_lora.yaml")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)["rwkv7_1b5_lora"]
    tasks = config["tasks"]
    assert tasks["train_adapter"]["pool"] == "gpu" and tasks["evaluate_adapter"]["pool"] == "gpu"
    assert tasks["train_adapter"]["operator"] == "operators.stage.StageOperator"
    assert config["schedule"]["__type__"] == "airflow.sdk.CronTriggerTimetable"
    assert config["schedule"]["__args__"] == ["0 2 * * 6"]


def test_render_of_an_invalid_spec_is_an_error_without_traceback() -> None:
    done = run("render", str(INVALID / "bad_cron.yaml"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_list_shows_dag_ids_and_schedules() -> None:
    done = run("list", "--json")
    rows = {r["dag_id"]: r for r in json.loads(done.stdout)}
    assert rows["rwkv7_smoke_cpu"]["schedule"] == "manual"
    assert rows["rwkv7_1b5_lora"]["schedule"].startswith("cron '0 2 * * 6'")
    assert rows["rwkv7_smoke_retrain"]["schedule"] == "on peftflow-dataset://pydoc-docs"


def test_missing_file_arguments_are_errors_not_tracebacks() -> None:
    for args in (["render", "nope.yaml"], ["releases", "show", "x", "y"],
                 ["audit", "verify", "--log", "/nonexistent/audit.jsonl"]):
        done = run(*args)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr and done.stderr.startswith("error: "), args
