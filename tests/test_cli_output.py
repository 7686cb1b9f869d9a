"""The CLI's output rules: results on stdout, diagnostics on stderr, tables with a header row,
and an empty list says so instead of printing nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from peftflow import entry
from peftflow.cli import main as cli
from peftflow.store import audit

ROOT = Path(__file__).resolve().parents[1]
INVALID = ROOT / "tests" / "fixtures" / "specs" / "invalid"


@pytest.fixture()
def peftflow(capsys: pytest.CaptureFixture[str], tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run `peftflow ARGS` in-process against empty release and audit roots: (code, out, err)."""
    monkeypatch.setenv("PEFTFLOW_RELEASES_ROOT", str(tmp_path / "releases"))
    monkeypatch.setenv("PEFTFLOW_AUDIT_LOG", str(tmp_path / "audit" / "audit.jsonl"))

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = entry.run(cli._main, list(args))
        done = capsys.readouterr()
        return code, done.out, done.err

    return call


def _no_trailing_space(text: str) -> None:
    assert all(line == line.rstrip() for line in text.splitlines()), text


def test_validate_prints_its_summary_on_stdout(peftflow: Any) -> None:
    code, out, err = peftflow("validate")
    assert (code, out, err) == (0, "4 specs valid\n", "")


def test_validate_of_broken_specs_prints_problems_then_the_count_on_stdout(peftflow: Any) -> None:
    code, out, err = peftflow("validate", str(INVALID / "bad_cron.yaml"),
                              str(INVALID / "bad_dag_id.yaml"), "dag_specs/rwkv7_smoke_cpu.yaml")
    *problems, summary = out.splitlines()
    assert code == 1 and err == ""
    assert len(problems) == 2 and all("$." in p for p in problems)
    assert summary == "2 problems in 2 files, 1 spec valid"


def test_validate_names_a_missing_path_as_a_problem_on_stdout(peftflow: Any) -> None:
    code, out, _ = peftflow("validate", "no/such/specs")
    assert code == 1
    assert out.splitlines() == ["no/such/specs:1:1: $: file or folder not found",
                                "1 problem in 1 file"]


def test_validate_quiet_prints_problems_only(peftflow: Any) -> None:
    assert peftflow("validate", "--quiet") == (0, "", "")


def test_list_is_a_table_with_a_header_row(peftflow: Any) -> None:
    code, out, err = peftflow("list")
    header, *rows = out.splitlines()
    assert code == 0 and err == ""
    assert header.split() == ["SPEC", "DAG_ID", "KIND", "PROFILE", "SCHEDULE", "STATUS"]
    assert len(rows) == 4 and all(row.endswith("valid") for row in rows)
    _no_trailing_space(out)


def test_list_of_nothing_says_so(peftflow: Any, tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    assert peftflow("list", str(tmp_path / "specs")) == (0, "no specs\n", "")


def test_releases_list_and_blocked_say_when_there_are_none(peftflow: Any, tmp_path: Path) -> None:
    code, out, err = peftflow("releases", "list")
    assert (code, err) == (0, "") and out == f"no releases under {tmp_path / 'releases'}\n"
    assert peftflow("releases", "blocked") == (0, "no blocked releases\n", "")


def test_empty_json_lists_keep_stdout_parseable(peftflow: Any) -> None:
    for args in (["releases", "list", "--json"], ["releases", "blocked", "--json"],
                 ["audit", "show", "--json"]):
        code, out, err = peftflow(*args)
        assert (code, out) == (0, ""), args
        assert err.strip(), args  # the "nothing here" note goes to stderr


def test_releases_list_is_a_table_with_a_header_row(peftflow: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from peftflow.release import registry

    release = SimpleNamespace(
        profile="smoke-cpu", version="r0001", created_at="2026-01-02T03:04:05.000+00:00",
        dag_id="rwkv7_smoke_cpu", run_id="manual__1", adapter_sha256="ab" * 32,
        doc={"gate": {"overridden": False}}, dir=Path("/r"), manifest_path=Path("/r/m.json"),
        metrics_path=Path("/r/metrics.json"))
    monkeypatch.setattr(registry, "scan", lambda profile=None: ([release], ["bad: unreadable"]))
    code, out, err = peftflow("releases", "list")
    header, row = out.splitlines()
    assert code == 0
    assert header.split() == ["PROFILE", "VERSION", "CREATED_AT", "RUN", "ADAPTER", "GATE"]
    assert row.split() == ["smoke-cpu", "r0001", "2026-01-02T03:04:05.000+00:00",
                           "rwkv7_smoke_cpu/manual__1", "abababababab", "passed"]
    assert err == "warning: bad: unreadable\n"
    _no_trailing_space(out)


def test_releases_blocked_is_a_table_with_one_reason_per_row(peftflow: Any,
                                                             tmp_path: Path) -> None:
    folder = tmp_path / "releases" / "smoke-cpu"
    folder.mkdir(parents=True)
    record = {"ts": "2026-01-02T03:04:05.000+00:00", "profile": "smoke-cpu",
              "dag_id": "rwkv7_smoke_cpu", "run_id": "manual__2",
              "reasons": ["eval verdict is fail", "dataset quality is fail"]}
    (folder / "blocked.jsonl").write_text(json.dumps(record) + "\n")
    code, out, err = peftflow("releases", "blocked")
    header, first, second = out.splitlines()
    assert (code, err) == (0, "")
    assert header.split() == ["TS", "PROFILE", "RUN", "REASONS"]
    assert first.split()[1:3] == ["smoke-cpu", "rwkv7_smoke_cpu/manual__2"]
    assert first.endswith("eval verdict is fail")
    assert second.strip() == "dataset quality is fail"
    assert second.index("dataset") == first.index("eval")


def test_audit_show_without_a_log_says_there_are_no_events(peftflow: Any) -> None:
    code, out, err = peftflow("audit", "show")
    assert (code, out) == (0, "no audit events\n")
    assert "no audit log yet" in err


def test_audit_show_is_a_table_naming_the_dataset_of_dataset_events(peftflow: Any,
                                                                    tmp_path: Path) -> None:
    log = tmp_path / "audit" / "audit.jsonl"
    audit.append_event({"event": "dataset_registered", "actor": "ana", "outcome": "announced",
                        "details": {"asset": "peftflow-dataset://pydoc-docs",
                                    "name": "pydoc-docs", "version": "v2"}}, log)
    audit.append_event({"event": "task_succeeded", "dag_id": "rwkv7_smoke_cpu",
                        "run_id": "manual__1", "task_id": "train_adapter", "try_number": 1,
                        "outcome": "success", "duration_s": 12.34}, log)
    code, out, err = peftflow("audit", "show")
    header, dataset, task = out.splitlines()
    assert code == 0
    assert header.split() == ["SEQ", "TS", "EVENT", "WHERE", "DETAILS"]
    assert "dataset_registered" in dataset
    assert "dataset=pydoc-docs version=v2" in dataset and "actor=ana" in dataset
    assert "rwkv7_smoke_cpu/manual__1/train_adapter try 1" in task and "12.3s" in task
    assert err == f"2 event(s) in {log}\n"
    _no_trailing_space(out)
    code, out, _ = peftflow("audit", "show", "--dag", "nope")
    assert (code, out) == (0, "no audit events\n")


def test_audit_verify_prints_its_verdict_on_stdout(peftflow: Any, tmp_path: Path) -> None:
    log = tmp_path / "audit" / "audit.jsonl"
    for n in range(2):
        audit.append_event({"event": "task_started", "dag_id": "d", "run_id": f"r{n}"}, log)
    code, out, _ = peftflow("audit", "verify")
    assert code == 0 and out.startswith("OK: 2 events, chain intact")
    log.write_text(log.read_text().replace('"r1"', '"r9"'))
    code, out, _ = peftflow("audit", "verify")
    problems = out.splitlines()
    assert code == 1 and problems[0].startswith(f"{log}:2: ")
    assert problems[-1].startswith("FAILED: ") and str(log) in problems[-1]


def test_errors_go_to_stderr_and_leave_stdout_empty(peftflow: Any) -> None:
    code, out, err = peftflow("releases", "show", "smoke-cpu", "r0042")
    assert code == 3 and out == "" and err.startswith("error: ")


def test_doctor_names_the_next_command_on_every_line_that_is_not_ok(tmp_path: Path) -> None:
    """Run as a user would, on this (GPU-less) machine, for the shipped GPU profile."""
    env = {**os.environ, "PEFTFLOW_MODELS_ROOT": str(tmp_path / "models")}
    done = subprocess.run([str(Path(sys.executable).parent / "peftflow"), "doctor", "--profile",
                           "configs/profiles/rwkv7_1b5_lora.yaml"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300, check=False)
    *checks, summary = done.stdout.splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    not_ok = [line for line in checks if not line.startswith("[OK  ]")]
    assert not_ok and all(re.search(r"(Fix|with Airflow): \S", line) for line in not_ok), not_ok
    failing = {line.split("] ", 1)[1].split(": ", 2)[1]: line for line in checks
               if line.startswith("[FAIL] rwkv7-1b5-lora")}
    model = tmp_path / "models" / "rwkv7-g1-1.5b-20250429-ctx4096.pth"
    assert failing["base model"].endswith(f"curl -fL -o {model} https://huggingface.co/"
                                          f"BlinkDL/rwkv7-g1/resolve/main/{model.name}")
    checkout = ROOT / "vendor" / "RWKV-PEFT"
    ends = {"RWKV-PEFT checkout": "checkout 5b8aac9cbed9474fb9f13332ffe9bd1aa377b7d2",
            "RWKV-PEFT python": f"-m pip install torch -r {checkout}/requirements.txt",
            "CUDA GPU": "nvidia-smi"}
    if not checkout.exists():  # this checkout as shipped: nothing of the GPU path is here
        assert set(ends) <= set(failing)
        assert f"git clone https://github.com/JL-er/RWKV-PEFT {checkout} && " \
               f"git -C {checkout} checkout" in failing["RWKV-PEFT checkout"]
    for name, end in ends.items():
        assert name not in failing or failing[name].endswith(end), failing[name]
    assert summary.endswith(f"{len(checks)} checks") and "failed" in summary


def test_readme_cli_table_names_every_command() -> None:
    """The README's CLI table is checked against the parser, so it cannot drift silently."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## CLI\n"):readme.index("### Stage exit codes")]
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands, "no subcommands registered"
    missing = [name for name in commands if f"`peftflow {name}" not in table]
    assert not missing, f"README.md ## CLI lacks: {missing}"
