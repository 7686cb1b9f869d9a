"""Hostile and broken files in dag_specs/: each gets a located message, none hides a valid
DAG, nothing hangs, and the whole folder parses within a bound (issue: hostile input)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dagtest_support import make_dag_bundle

ROOT = Path(__file__).resolve().parent.parent
SMOKE = (ROOT / "dag_specs" / "rwkv7_smoke_cpu.yaml").read_text()
PARSE_BOUND_S = 5.0  # the whole folder, hostile corpus included (Airflow's timeout is 30 s)
ESCAPE_NAME = "evil\x1b[31mred.yaml"


def _spec(dag_id: str) -> str:
    return SMOKE.replace("dag_id: rwkv7_smoke_cpu", f"dag_id: {dag_id}")


def _write(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


# file name -> (how to make it, the message it must produce)
CORPUS: dict[str, tuple[Callable[[Path], None], str]] = {
    "deep_list.yaml": (_write("a: " + "[" * 600 + "]" * 600 + "\n"), "nested deeper than 32"),
    "deep_map.yaml": (_write("".join("  " * i + f"k{i}:\n" for i in range(500))
                             + "  " * 500 + "v: 1\n"), "nested deeper than 32"),
    "alias_bomb.yaml": (_write("a: &a [x, x, x, x, x, x, x, x, x]\n"
                               "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                               "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"),
                        r"alias \*a is not allowed"),
    "huge.yaml": (_write("items: [" + "1, " * 400_000 + "1]\n"),
                  "larger than 1,000,000 bytes"),
    "many_items.yaml": (_write("items:\n" + "- 1\n" * 30_000), "more than 20000 YAML nodes"),
    "a_directory.yaml": (lambda p: p.mkdir(), "is a directory"),
    "a_fifo.yaml": (lambda p: os.mkfifo(p), r"is a FIFO \(named pipe\)"),
    "dev_zero.yaml": (lambda p: p.symlink_to("/dev/zero"), "is a character device"),
    ".hidden.yaml": (_write(_spec("hostile_hidden")), r"is hidden \(starts with '\.'\)"),
    "SHOUTING.YAML": (_write(_spec("hostile_shouting")), "only names ending in lower-case"),
    "dup_a.yaml": (_write(_spec("hostile_dup")), "'hostile_dup' is also used by"),
    "dup_b.yaml": (_write(_spec("hostile_dup")), "'hostile_dup' is also used by"),
    "newline_id.yaml": (_write(SMOKE.replace("dag_id: rwkv7_smoke_cpu",
                                             'dag_id: "hostile_newline\\n"')),
                        r"control character U\+000A"),
    "reserved.yaml": (_write(_spec("invalid_spec__taken")), "is reserved for peftflow"),
    "a_list.yaml": (_write("- just\n- a list\n"), "not a mapping"),
    ESCAPE_NAME: (_write("dag_id: [\n"), "YAML syntax error"),
}
VALID = ("hostile_valid_one", "hostile_valid_two")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAG bundle whose dag_specs/ holds two valid specs and the whole hostile corpus."""
    root = tmp_path_factory.mktemp("hostile")
    patch = make_dag_bundle(root, {f"{d}.yaml": _spec(d) for d in VALID}, "hostile")
    for name, (make, _message) in CORPUS.items():
        make(root / "dag_specs" / name)
    yield root
    patch.undo()


def _shown(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii") if name == ESCAPE_NAME else name


def test_validate_names_every_hostile_file_with_its_reason_without_hanging(
        corpus: Path) -> None:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "peftflow.cli.main", "validate",
                           str(corpus / "dag_specs")], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name, (_make, message) in CORPUS.items():
        hits = [line for line in lines if f"/{_shown(name)}:" in line]
        assert hits, f"{name}: no line in\n{done.stdout[-3000:]}"
        assert any(re.search(message, line) for line in hits), (name, hits)
    assert "\x1b" not in done.stdout + done.stderr  # a file name cannot emit escape codes
    assert took < 30, f"validate took {took:.1f} s"


def test_the_dag_folder_keeps_every_valid_dag_and_a_placeholder_per_bad_file_within_bound(
        corpus: Path) -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    t0 = time.monotonic()
    bag = BundleDagBag(str(corpus / "dags"), bundle_path=str(corpus / "dags"),
                       bundle_name="hostile")
    took = time.monotonic() - t0
    assert bag.import_errors == {}
    assert set(VALID) <= set(bag.dags)
    placeholders = {d: dag for d, dag in bag.dags.items() if d.startswith("invalid_spec__")}
    # one per bad file (the two duplicates each get their own)
    assert len(placeholders) == len(CORPUS), sorted(placeholders)
    assert "hostile_dup" not in bag.dags and "invalid_spec__taken" not in bag.dags
    for dag in placeholders.values():
        assert "\x1b" not in (dag.doc_md or "") and "\x1b" not in (dag.description or "")
    print(f"DAG folder with {len(CORPUS)} hostile files parsed in {took:.2f} s")
    assert took < PARSE_BOUND_S, f"parsing the DAG folder took {took:.1f} s"


def _schedule(block: str) -> str:
    old = 'schedule:\n  enabled: false\n  cron: "0 3 * * 1"'
    assert old in SMOKE
    return SMOKE.replace(old, block)


# "valid means it will run": values that used to validate and fail hours later
WILL_NOT_RUN = {
    "nan_threshold": (SMOKE.replace("min_loss_improvement: 0.01", "min_loss_improvement: .nan"),
                      r"\$\.gate\.domain\.min_loss_improvement: '\.nan' is not a finite number"),
    "inf_threshold": (SMOKE.replace("min_loss_improvement: 0.01", "min_loss_improvement: .inf"),
                      "'.inf' is not a finite number"),
    "cron_never": (_schedule("schedule:\n  enabled: true\n  cron: '0 0 31 2 *'"),
                   "'0 0 31 2 \\*' never fires"),
    "catchup_backlog": (_schedule("schedule:\n  enabled: true\n  cron: '@hourly'\n"
                                  "  catchup: true"), "would create more than 100 runs"),
    "yes_as_tag": (SMOKE.replace("tags: [smoke, cpu, lora]", "tags: [smoke, on]"),
                   r"\$\.tags\[1\]: 'on' is read as the boolean true"),
    "octal_owner": (SMOKE.replace("owner: ml-platform", "owner: 0755"),
                    r"'0755' is read as an octal"),
    "clock_owner": (SMOKE.replace("owner: ml-platform", "owner: 15:00"),
                    r"'15:00' is read as a base-60 \(sexagesimal\) number \(900\)"),
}


@pytest.mark.parametrize("case", sorted(WILL_NOT_RUN))
def test_a_value_that_would_fail_later_is_refused_at_validation(
        case: str, tmp_path: Path) -> None:
    from peftflow.errors import SpecError
    from peftflow.spec import validate

    text, message = WILL_NOT_RUN[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        validate.load_spec(path)
    assert re.search(message, str(caught.value)), str(caught.value)


def test_a_cron_preset_is_accepted_by_schema_and_code_alike(tmp_path: Path) -> None:
    from peftflow.airflow import expand
    from peftflow.spec import validate

    path = tmp_path / "preset.yaml"
    path.write_text(_schedule("schedule:\n  enabled: true\n  cron: '@daily'"))
    spec = validate.load_spec(path)
    assert spec.schedule.cron == "@daily" and spec.start_paused  # cron DAGs start paused
    timetable = expand.dag_config(spec)[spec.dag_id]["schedule"]
    assert timetable["__args__"] == ["@daily"]


def test_a_nan_learning_rate_in_a_profile_is_refused_where_it_is_written(tmp_path: Path) -> None:
    from peftflow.errors import SpecError
    from peftflow.train import training_profile as profile

    text = (ROOT / "configs" / "profiles" / "smoke_cpu.yaml").read_text()
    path = tmp_path / "nan_lr.yaml"
    path.write_text(text.replace("lr_init: 0.02", "lr_init: .nan"))
    with pytest.raises(SpecError, match=r"lr_init: '\.nan' is not a finite number"):
        profile.load(path)


@pytest.mark.parametrize(("config", "message"), [
    ("active_profile: both\n", "'both' is not one of"),
    ("active_profile: airflow\nactive_profile: mlops-lite\n", "duplicate key"),
    ("- airflow\n", "is not of type 'object'"),
    ("", "the file is empty"),
])
def test_a_broken_orchestration_config_fails_validate_too(
        config: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "orchestration.yaml"
    path.write_text(config)
    done = subprocess.run([sys.executable, "-m", "peftflow.cli.main", "validate"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PEFTFLOW_ORCHESTRATION_CONFIG": str(path)})
    assert done.returncode == 1
    assert f"{path}:" in done.stdout and message in done.stdout, done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("manifest", "message"), [
    ('{"a": ' * 5000 + "1" + "}" * 5000, "nested far too deeply"),
    ('{"a": ' * 400 + "1" + "}" * 400, "nested deeper than 32 levels"),
    ("[" + "1," * 30_000 + "1]", "more than 20000 values"),
])
def test_a_hostile_manifest_named_by_a_spec_is_a_located_spec_problem(
        manifest: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peftflow.errors import SpecError
    from peftflow.spec import validate

    monkeypatch.setenv("PEFTFLOW_ALLOWED_ROOTS", str(tmp_path))
    bad = tmp_path / "deep.manifest.json"
    bad.write_text(manifest)
    path = tmp_path / "spec.yaml"
    path.write_text(SMOKE.replace("manifest: data/smoke/pydoc-docs/v1/train.manifest.json",
                                  f"manifest: {bad}"))
    with pytest.raises(SpecError) as caught:
        validate.load_spec(path)
    text = str(caught.value)
    assert message in text and "$.dataset.manifest: the dataset manifest has" in text, text


def test_a_folder_with_more_specs_than_load_in_time_reads_the_first_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_SPEC_FILES the DAG file would hit Airflow's import timeout and lose every DAG;
    the cap keeps the first files by name and reports the folder (lowered here to 3)."""
    from peftflow.spec import validate

    monkeypatch.setattr(validate, "MAX_SPEC_FILES", 3)
    folder = tmp_path / "dag_specs"
    folder.mkdir()
    for i in range(5):
        (folder / f"s{i}.yaml").write_text(_spec(f"many_{i}"))
    result = validate.validate_paths([folder])
    assert [s.dag_id for s in result.specs] == ["many_0", "many_1", "many_2"]
    [problem] = result.problems
    assert problem.file.endswith("dag_specs") and "5 spec files, more than the 3" in problem.message
    assert "from " in problem.message and "s3.yaml on nothing is" in problem.message
