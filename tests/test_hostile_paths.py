"""Hostile and broken input (tests/fixtures/hostile/) is refused with a message and an exit
code, never with a traceback, a read outside the allowed roots or a destroyed input."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from peftflow import entry
from peftflow.cli import main as cli
from peftflow.dataset import load_manifest, register_dataset
from peftflow.dataset.reader import classify, visible
from peftflow.errors import ConfigError, SpecError
from peftflow.evaluate import suites
from peftflow.stages import prepare
from peftflow.store import status_record as status
from peftflow.train import training_profile as profile

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ROOT / "tests" / "fixtures" / "hostile"
SMOKE_MANIFEST = ROOT / "data" / "smoke" / "pydoc-docs" / "v1" / "train.manifest.json"
SMOKE_PROFILE = ROOT / "configs" / "profiles" / "smoke_cpu.yaml"
FIX = r"move .* under the project or models root, or add its folder to PEFTFLOW_ALLOWED_ROOTS"


def _outside(file: Path, key: str, value: str, resolved: str = ".*") -> str:
    """The refusal: FILE:LINE:COL: KEY: 'VALUE' resolves to ..., outside the allowed roots."""
    return (rf"{re.escape(str(file))}:\d+:\d+: {re.escape(key)}: {re.escape(repr(value))} "
            rf"resolves to {resolved}, outside the allowed roots \(.*\) and outside .*; {FIX}")


def _prepare(*argv: str | Path) -> int:
    return entry.run(prepare.main, [str(a) for a in argv])


# --- paths in profiles, suites and manifests stay inside the allowed roots -------------------

PROFILES = [
    ("profile_base_model_etc_shadow.yaml", "$.model.base_model", "/etc/shadow", "/etc/shadow"),
    ("profile_base_model_traversal.yaml", "$.model.base_model", "../" * 12 + "etc/passwd",
     "/etc/passwd"),
    ("profile_checkout_bin.yaml", "$.rwkv_peft.checkout", "/bin", ".*bin"),
    ("profile_python_bin_sh.yaml", "$.rwkv_peft.python", "/bin/sh", ".*/sh"),
]


@pytest.mark.parametrize(("name", "key", "value", "resolved"), PROFILES)
def test_profile_paths_outside_the_allowed_roots_are_refused(
        name: str, key: str, value: str, resolved: str) -> None:
    path = HOSTILE / name
    with pytest.raises(SpecError, match=_outside(path, key, value, resolved)) as caught:
        profile.load(path)
    assert caught.value.exit_code == 2 and len(caught.value.problems) == 1


@pytest.mark.parametrize(("name", "key", "value", "resolved"), PROFILES[:1] + PROFILES[3:])
def test_prepare_with_a_hostile_profile_exits_2_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, key: str, value: str,
        resolved: str) -> None:
    out = tmp_path / "out"
    assert _prepare("--manifest", SMOKE_MANIFEST, "--out", out, "--profile", HOSTILE / name) == 2
    err = capsys.readouterr().err
    assert re.search(_outside(HOSTILE / name, key, value, resolved), err) and not out.exists()
    assert "Traceback" not in err


def _profile_with(folder: Path, **rwkv_peft: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "p.yaml"
    text = SMOKE_PROFILE.read_text(encoding="utf-8")
    path.write_text(text + "rwkv_peft:\n" + "".join(f"  {k}: {v}\n" for k, v in
                                                   rwkv_peft.items()), encoding="utf-8")
    return path


def test_a_venv_python_is_judged_as_written_not_by_its_symlink_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv's bin/python links to /usr/bin/python3.x: the link is inside, so it is fine."""
    venv = tmp_path / "tools" / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to("/usr/bin/python3")
    monkeypatch.setenv("PEFTFLOW_ALLOWED_ROOTS", str(tmp_path / "tools"))
    loaded = profile.load(_profile_with(tmp_path / "profiles", python=str(venv / "python")))
    assert loaded.rwkv_peft.python_path() == venv / "python"
    assert profile.load(_profile_with(tmp_path / "p2", python=".venv/bin/python"))  # the project's


def test_a_symlink_inside_the_roots_that_leads_out_is_judged_by_its_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "evil.pth").symlink_to("/etc/shadow")
    monkeypatch.setenv("PEFTFLOW_MODELS_ROOT", str(models))
    path = tmp_path / "profiles" / "p.yaml"
    path.parent.mkdir()
    text = SMOKE_PROFILE.read_text(encoding="utf-8")
    path.write_text(text.replace("smoke/rwkv7-tiny-L2-D128.pth", "evil.pth"), encoding="utf-8")
    with pytest.raises(SpecError, match=_outside(path, "$.model.base_model", "evil.pth",
                                                 "/etc/shadow")):
        profile.load(path)


def test_paths_beside_the_file_or_in_peftflow_allowed_roots_are_accepted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beside = _profile_with(tmp_path / "scratch", checkout=str(tmp_path / "scratch" / "RWKV-PEFT"))
    assert profile.load(beside).rwkv_peft.checkout_path() == tmp_path / "scratch" / "RWKV-PEFT"
    elsewhere = _profile_with(tmp_path / "a", checkout=str(tmp_path / "b" / "RWKV-PEFT"))
    with pytest.raises(SpecError, match=r"\$\.rwkv_peft\.checkout: .* outside the allowed"):
        profile.load(elsewhere)
    monkeypatch.setenv("PEFTFLOW_ALLOWED_ROOTS", str(tmp_path / "b"))
    assert profile.load(elsewhere)


SUITES = [
    ("suite_data_etc_passwd.yaml", "/etc/passwd"),
    ("suite_data_traversal.yaml", "../" * 12 + "etc/passwd"),
]


@pytest.mark.parametrize(("name", "value"), SUITES)
def test_suite_data_outside_the_allowed_roots_is_refused_with_exit_2(
        capsys: pytest.CaptureFixture[str], name: str, value: str) -> None:
    path = HOSTILE / name
    expected = _outside(path, "$.data.path", value, "/etc/passwd")
    with pytest.raises(SpecError, match=expected):
        suites.load(path)
    with pytest.raises(SystemExit) as caught:
        cli.main(["eval", "check-suite", str(path)])
    assert caught.value.code == 2 and re.search(expected, capsys.readouterr().err)


MANIFESTS = [
    ("etc_shadow.manifest.json", "/etc/shadow", "/etc/shadow"),
    ("bin_sh.manifest.json", "/bin/sh", r"/\S+"),  # /usr/bin/dash here: its target
    ("traversal.manifest.json", "../" * 12 + "etc/passwd", "/etc/passwd"),
]


@pytest.mark.parametrize(("name", "value", "resolved"), MANIFESTS)
def test_manifest_files_outside_the_allowed_roots_are_refused_with_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, value: str,
        resolved: str) -> None:
    path = HOSTILE / name
    expected = _outside(path, "$.files[0].path", value, resolved)
    with pytest.raises(SpecError, match=expected):
        load_manifest(path)
    out = tmp_path / "out"
    assert _prepare("--manifest", path, "--out", out) == 2
    assert re.search(expected, capsys.readouterr().err) and not out.exists()


def test_register_refuses_a_manifest_whose_data_would_be_outside_the_roots(
        tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    data = tmp_path / "raw" / "export.jsonl"
    data.write_text('{"text": "a"}\n', encoding="utf-8")
    target = tmp_path / "manifests" / "docs-v1.json"
    with pytest.raises(ConfigError, match=r"docs-v1.json: files\[0\]\.path: "
                                          r"'\.\./raw/export\.jsonl' resolves to .*" + FIX):
        register_dataset(data, "docs", "v1", out=target)
    assert not target.exists()


# --- prepare_dataset never destroys an input or misreports -----------------------------------

def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_out_holding_a_data_file_named_status_json_is_refused_and_nothing_changes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "data"
    shutil.copytree(HOSTILE / "prepare" / "status_json_data", folder)
    before = _listing(folder)
    assert _prepare("--manifest", folder / "data.manifest.json", "--out", folder) == 2
    err = capsys.readouterr().err
    assert f"--out {folder}: {folder} holds the data file {folder / 'status.json'}" in err
    assert "must never touch an input" in err and "Traceback" not in err
    assert _listing(folder) == before


@pytest.mark.parametrize("where", ["manifest folder", "parent", "manifest itself", "profile"])
def test_out_that_is_or_holds_an_input_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    data = tmp_path / "in" / "train.jsonl"
    data.parent.mkdir()
    data.write_text('{"text": "one"}\n{"text": "two"}\n', encoding="utf-8")
    manifest, _ = register_dataset(data, "unit", "v1")
    prof = tmp_path / "in" / "profile.yaml"
    shutil.copy(SMOKE_PROFILE, prof)
    out, role = {"manifest folder": (data.parent, "holds the data file"),
                 "parent": (tmp_path, "holds the data file"),
                 "manifest itself": (manifest, "is the manifest"),
                 "profile": (prof, "is the profile")}[where]
    before = _listing(data.parent)
    assert _prepare("--manifest", manifest, "--out", out, "--profile", prof) == 2
    assert f"{out} {role}" in capsys.readouterr().err
    assert _listing(data.parent) == before


def test_an_output_name_that_links_to_an_input_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "in" / "train.jsonl"
    data.parent.mkdir()
    data.write_text('{"text": "one"}\n', encoding="utf-8")
    manifest, _ = register_dataset(data, "unit", "v1")
    out = tmp_path / "out"
    out.mkdir()
    (out / "quality.json").symlink_to(data)
    assert _prepare("--manifest", manifest, "--out", out) == 2
    assert f"{out / 'quality.json'} leads to the data file {data}" in capsys.readouterr().err
    assert data.read_text() == '{"text": "one"}\n' and (out / "quality.json").is_symlink()


@pytest.mark.parametrize(("out", "message"), [
    ("/dev/null", "/dev/null is a device or other special file, not a folder"),
    ("/proc/self/peftflow-out", "under /proc, a kernel pseudo-filesystem"),
    ("/sys/kernel/peftflow-out", "under /sys, a kernel pseudo-filesystem"),
])
def test_out_on_a_device_or_a_pseudo_filesystem_exits_2_with_the_reason(
        capsys: pytest.CaptureFixture[str], out: str, message: str) -> None:
    assert _prepare("--manifest", SMOKE_MANIFEST, "--out", out) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _good_run(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "in" / "train.jsonl"
    data.parent.mkdir(exist_ok=True)
    data.write_text('{"text": "one"}\n{"text": "two"}\n', encoding="utf-8")
    manifest, _ = register_dataset(data, "unit", "v1")
    out = tmp_path / "out"
    assert _prepare("--manifest", manifest, "--out", out) == 0
    assert status.read(out)["status"] == "success"
    return manifest, out


def test_out_that_cannot_be_created_exits_2_with_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("x")
    assert _prepare("--manifest", SMOKE_MANIFEST, "--out", tmp_path / "a-file" / "out") == 2
    assert "cannot write to" in capsys.readouterr().err


def test_unwritable_out_exits_2_and_the_earlier_success_is_withdrawn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    manifest, out = _good_run(tmp_path)

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(prepare.tempfile, "mkstemp", refuse)  # as root chmod cannot show it
    assert _prepare("--manifest", manifest, "--out", out) == 2
    assert f"cannot write to {out} (Permission denied)" in capsys.readouterr().err
    doc = status.read(out)
    assert (doc["status"], doc["exit_code"], doc["outputs"]) == ("failed", 2, [])
    assert "must not be used" in doc["message"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_exits_2_and_never_says_success(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest, out = _good_run(tmp_path)
    out.chmod(0o555)
    try:
        assert _prepare("--manifest", manifest, "--out", out) == 2
    finally:
        out.chmod(0o755)
    assert "cannot write to" in capsys.readouterr().err
    assert status.read(out)["status"] == "failed"


def test_a_failure_before_the_run_rewrites_an_earlier_success_as_failed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest, out = _good_run(tmp_path)
    data = tmp_path / "in" / "train.jsonl"
    data.write_bytes(data.read_bytes().replace(b"one", b"uno"))  # same size, other bytes
    assert _prepare("--manifest", manifest, "--out", out) == 5
    assert "does not match" in capsys.readouterr().err
    doc = status.read(out)
    assert (doc["status"], doc["exit_code"], doc["outputs"]) == ("failed", 5, [])


def test_when_status_json_cannot_be_replaced_it_is_overwritten_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, out = _good_run(tmp_path)
    inode = (out / "status.json").stat().st_ino

    def no_rename(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(prepare.tempfile, "mkstemp", no_rename)
    monkeypatch.setattr(prepare.atomic, "write_json", no_rename)
    assert _prepare("--manifest", manifest, "--out", out) == 2
    assert (out / "status.json").stat().st_ino == inode
    assert status.read(out)["status"] == "failed"


# --- text of only invisible characters is empty text ----------------------------------------

def test_a_corpus_of_only_invisible_characters_fails_as_empty_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    shutil.copy(HOSTILE / "prepare" / "invisible_only.jsonl", data)
    manifest, _ = register_dataset(data, "unit", "v1")
    out = tmp_path / "out"
    assert _prepare("--manifest", manifest, "--out", out, "--max-offenders", "20") == 4
    err = capsys.readouterr().err
    assert "line 1: 'text' has no visible character, only whitespace and invisible characters " \
           "(first: U+200B ZERO WIDTH SPACE)" in err
    quality = json.loads((out / "quality.json").read_text())
    rules = {r["rule"]: r for r in quality["rules"]}
    assert rules["text_field"]["value"] == 10 and rules["text_field"]["outcome"] == "fail"
    assert rules["text_field"]["offending_lines"] == list(range(1, 11))
    assert rules["document_count"]["value"] == 0 and rules["document_count"]["outcome"] == "fail"
    assert not (out / "train_text_document.bin").exists()


@pytest.mark.parametrize(("text", "shown"), [
    ("", True), (" \t\n", True), ("\u200b", False), ("\u200c\u200d", False),
    ("\u2060\ufeff", False), ("\x07", False), ("\u00a0\u200b\u3000", False),
])
def test_invisible_texts_are_not_visible(text: str, shown: bool) -> None:
    assert not visible(text)
    rule, detail, _ = classify(json.dumps({"text": text}).encode(), "text", False)
    assert rule == "text_field"
    assert ("empty or only whitespace" in detail) is shown


@pytest.mark.parametrize("text", ["a", "\u200bword", "\ufeffBOM first", " \u200b x", "\ue000",
                                  "\u0301", "日本"])
def test_text_with_one_visible_character_is_visible(text: str) -> None:
    assert visible(text)
