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
    done = subprocess.run([sys.executable, "-m", "peftflow.cli", "validate",
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
