"""prepare_dataset end to end: round trip, shell entry point, corrupted inputs, atomic outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from peftflow import entry
from peftflow.dataset import binidx, load_manifest, pipeline, register_dataset, tokenizer
from peftflow.stages import prepare
from peftflow.store import status_record as status

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prepare_dataset.sh"
TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "中文文本：数据质量检查。",
    "Русский текст с ёлкой.",
    "def f(x):\n    return {'k': [1, 2]}  # code\n",
    "emoji 🚀👨‍👩‍👧 and \"quotes\" \\ backslash \t tab",
    "  spaces kept as they are  ",
]


def _jsonl(path: Path, texts: list[str], extra: dict[str, object] | None = None) -> Path:
    rows = [{"text": t, **(extra or {})} for t in texts]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _rule_outcomes(quality: dict[str, object]) -> dict[str, str]:
    """Outcomes of the rules that did not pass."""
    rules = quality["rules"]
    assert isinstance(rules, list)
    return {r["rule"]: r["outcome"] for r in rules if r["outcome"] != "pass"}


def _run(manifest: Path, out: Path, *args: str) -> int:
    return entry.run(prepare.main, ["--manifest", str(manifest), "--out", str(out), *args])


def test_round_trip_jsonl_to_binidx_decodes_to_the_input_texts(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", TEXTS, {"topic": "x"})
    manifest, _ = register_dataset(data, "unit", "v1")
    out = tmp_path / "out"
    assert _run(manifest, out) == 0
    docs = list(binidx.read_documents(out / "train_text_document"))
    assert binidx.read_index(out / "train_text_document.idx").dtype == np.uint16
    assert [tokenizer.decode(d) for d in docs] == TEXTS
    assert all(d[-1] == tokenizer.EOD and tokenizer.EOD not in d[:-1] for d in docs)
    ref = tokenizer.reference()
    assert [d[:-1].tolist() for d in docs] == [ref.encode(t) for t in TEXTS]


def test_status_lists_bin_idx_quality_and_the_data_prefix(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", TEXTS)
    manifest, _ = register_dataset(data, "unit", "v7")
    out = tmp_path / "out"
    assert _run(manifest, out) == 0
    doc = status.read(out)
    assert doc["stage"] == "prepare_dataset" and doc["status"] == "success"
    assert [o["name"] for o in doc["outputs"]] == ["bin", "idx", "quality"]
    assert [i["name"] for i in doc["inputs"]] == ["manifest", "data"]
    for ref in status.outputs_of(doc).values():
        ref.verify()
        assert Path(ref.path).is_absolute()
    m = doc["metrics"]
    assert m["data_prefix"] == str((out / "train_text_document").resolve())
    assert (m["dataset_name"], m["dataset_version"], m["verdict"]) == ("unit", "v7", "pass")
    assert m["documents"] == m["records"] == 6 and m["invalid_records"] == 0
    assert m["tokens"] == sum(len(tokenizer.reference().encode(t)) + 1 for t in TEXTS)
    assert doc["tools"]["tokenizer"] == tokenizer.NATIVE and "throughput_mb_s" in m
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_shell_entry_point_prepares_the_smoke_dataset(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = ROOT / "data/smoke/pydoc-docs/v1/train.manifest.json"
    records = load_manifest(manifest).files[0].records
    result = subprocess.run(
        [str(SCRIPT), "--manifest", str(manifest), "--out", str(out),
         "--profile", str(ROOT / "configs/profiles/smoke_cpu.yaml")],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "train_text_document")
    assert f"[prepare_dataset] {records} documents" in result.stderr
    quality = json.loads((out / "quality.json").read_text())
    assert quality["verdict"] == "warn" and quality["documents"] == records  # long vs ctx 128
    assert _rule_outcomes(quality) == {"doc_length_tokens": "warn"}
    assert len(list(binidx.read_documents(out / "train_text_document"))) == records


def test_shell_entry_point_hash_mismatch_exits_5_and_writes_nothing(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", TEXTS)
    manifest, _ = register_dataset(data, "unit", "v1")
    data.write_bytes(data.read_bytes().replace(b"Hello", b"Jello"))  # same size, other bytes
    before = _snapshot(data)
    out = tmp_path / "out"
    result = subprocess.run([str(SCRIPT), "--manifest", str(manifest), "--out", str(out)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 5 and "does not match" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and _snapshot(data) == before


def test_data_emptied_after_registration_is_an_integrity_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _jsonl(tmp_path / "train.jsonl", TEXTS)
    manifest, _ = register_dataset(data, "unit", "v1")
    data.write_bytes(b"")
    out = tmp_path / "out"
    assert _run(manifest, out) == 5
    assert "is empty (0 bytes) but manifest" in capsys.readouterr().err and not out.exists()


CORRUPT = {
    "bad JSON line": (b'{"text": "ok"}\n{"text": "oops",}\n{"text": "ok2"}\n',
                      "line 2: not valid JSON"),
    "missing field": (b'{"text": "ok"}\n{"text": "ok2"}\n{"content": "x"}\n',
                      "line 3: no 'text' key"),
    "non-UTF-8 bytes": (b'{"text": "ok"}\n{"text": "\xff\xfe latin"}\n',
                        "line 2: invalid UTF-8 byte 0xff"),
    "truncated last line": (b'{"text": "ok"}\n{"text": "ok2"}\n{"text": "cut of',
                            "line 3: truncated last line: no trailing newline"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupted_input_gives_a_clear_message_and_is_left_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    raw, message = CORRUPT[case]
    data = tmp_path / "train.jsonl"
    data.write_bytes(raw)
    manifest, _ = register_dataset(data, "unit", "v1")
    before, manifest_before = _snapshot(data), _snapshot(manifest)
    out = tmp_path / "out"
    assert _run(manifest, out) == 4
    err = capsys.readouterr().err
    assert "error: unit@v1 failed the dataset quality rules" in err and message in err
    assert "Traceback" not in err
    assert _snapshot(data) == before and _snapshot(manifest) == manifest_before
    assert sorted(p.name for p in out.iterdir()) == ["quality.json", "status.json"]


def test_valid_unterminated_last_line_is_a_normal_record(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"text": "a"}\n{"text": "b"}')
    manifest, _ = register_dataset(data, "unit", "v1")
    assert _run(manifest, tmp_path / "out") == 0
    docs = binidx.read_documents(tmp_path / "out" / "train_text_document")
    assert [tokenizer.decode(d) for d in docs] == ["a", "b"]


def test_a_failed_rerun_removes_the_previous_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    good, _ = register_dataset(_jsonl(tmp_path / "good.jsonl", TEXTS), "unit", "v1")
    assert _run(good, out) == 0
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_bytes(b"not json\n")
    bad, _ = register_dataset(bad_data, "unit", "v2")
    assert _run(bad, out) == 4
    assert sorted(p.name for p in out.iterdir()) == ["quality.json", "status.json"]


def test_parallel_workers_write_the_same_bytes_as_one_process(tmp_path: Path) -> None:
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(3000)]
    data = _jsonl(tmp_path / "train.jsonl", texts)
    sha = load_manifest(register_dataset(data, "unit", "v1")[0]).files[0].sha256
    outputs = []
    for workers in (1, 2):
        folder = tmp_path / f"w{workers}"
        folder.mkdir()
        staged = pipeline.Staged([folder / "d.bin", folder / "d.idx"])
        opts = pipeline.Options(workers=workers, chunk_bytes=8192, ctx_len=16, max_offenders=3)
        result = pipeline.run(data, sha, staged.handles[0], staged.handles[1], opts)
        staged.publish()
        assert result.workers == workers and result.measurements.documents == 3000
        outputs.append(((folder / "d.bin").read_bytes(), (folder / "d.idx").read_bytes(),
                        result.measurements.over_ctx.examples))
    assert outputs[0] == outputs[1]


def test_the_rust_fallback_tokenizer_writes_the_same_binidx_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jsonl(tmp_path / "train.jsonl", [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(300)])
    manifest, _ = register_dataset(data, "unit", "v1")
    files = {}
    for choice in ("native", "rust"):
        monkeypatch.setenv("PEFTFLOW_TOKENIZER", choice)
        out = tmp_path / choice
        assert _run(manifest, out, "--workers", "1") == 0
        files[choice] = [(out / f"train_text_document{s}").read_bytes() for s in (".bin", ".idx")]
        tools = status.read(out)["tools"]
        assert tools["tokenizer"] == (tokenizer.NATIVE if choice == "native"
                                      else tokenizer.FAST_PACKAGE)
    assert files["native"] == files["rust"]
    assert status.read(tmp_path / "rust")["tools"]["pyrwkv-tokenizer"] == "0.9.1"


def test_an_unknown_tokenizer_choice_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    data = _jsonl(tmp_path / "train.jsonl", TEXTS)
    manifest, _ = register_dataset(data, "unit", "v1")
    monkeypatch.setenv("PEFTFLOW_TOKENIZER", "fastest")
    assert _run(manifest, tmp_path / "out") == 2
    assert "PEFTFLOW_TOKENIZER='fastest': use one of auto, native, rust" in capsys.readouterr().err


def test_sigterm_leaves_no_binidx_and_no_temp_files(tmp_path: Path) -> None:
    line = json.dumps({"text": "A sentence of ordinary English text, repeated. " * 40})
    data = tmp_path / "big.jsonl"
    with open(data, "w", encoding="utf-8") as handle:
        for i in range(25000):  # about 48 MB: over a second of work for one worker
            handle.write(line[:-2] + f' {i}"}}\n')
    manifest, _ = register_dataset(data, "unit", "v1")
    out = tmp_path / "out"
    proc = subprocess.Popen([str(SCRIPT), "--manifest", str(manifest), "--out", str(out),
                             "--workers", "1"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 30
    while not list(out.glob(".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # what Airflow's on_kill does to the task's group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["status.json"]
    assert status.read(out)["status"] == "failed"
