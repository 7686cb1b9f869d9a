"""release_adapter: atomic versioned releases from real stage outputs, idempotence, refusals."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from peftflow.errors import ResourceError
from peftflow.release import gate, lineage, publish, registry
from peftflow.store import schemas
from peftflow.store import status_record as stage_status
from peftflow.store.hashing import sha256_file
from peftflow.store.status_record import StageRecorder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "release_adapter.sh"
PROFILE = "smoke-cpu"


def tiny_png(path: Path, shade: int) -> Path:
    """A real 2x2 grey PNG (charts are copied and linked, not parsed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes([shade, shade]) for _ in range(2))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def save_adapter(path: Path, seed: int) -> Path:
    import torch

    gen = torch.Generator().manual_seed(seed)
    state = {f"blocks.{i}.att.{w}.lora_{ab}": torch.randn(shape, generator=gen)
             for i in range(2) for w in ("receptance", "key")
             for ab, shape in (("A", (8, 128)), ("B", (128, 8)))}
    torch.save(state, path)
    return path


@dataclass
class Run:
    base: Path
    work: Path
    releases: Path
    profile: Path
    spec: Path
    prepare: Path
    train: Path
    evaluate: Path
    gate_file: Path
    out: Path
    env: dict[str, str]

    def args(self, run_id: str = "manual__2026-11-27T12:00:00", *extra: str) -> list[str]:
        return ["--profile", str(self.profile), "--spec", str(self.spec),
                "--prepare-status", str(self.prepare), "--train-status", str(self.train),
                "--eval-status", str(self.evaluate), "--gate", str(self.gate_file),
                "--out", str(self.out), "--dag-id", "rwkv7_smoke_cpu", "--run-id", run_id,
                "--try-number", "1", *extra]

    def release(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *self.args(*args)] if args else
                              [str(SCRIPT), *self.args()], capture_output=True, text=True,
                              env=self.env, timeout=120, check=False)

    def status(self) -> dict:
        return json.loads((self.out / "status.json").read_text())


def _prepare(folder: Path, quality: str) -> None:
    folder.mkdir(parents=True)
    data = folder / "train.jsonl"
    data.write_text('{"text": "print(1)"}\n' * 3)
    manifest = folder / "train.manifest.json"
    manifest.write_text(json.dumps({"name": "pydoc-docs", "version": "v1"}))
    (folder / "data.bin").write_bytes(os.urandom(64))
    (folder / "data.idx").write_bytes(os.urandom(32))
    (folder / "quality.json").write_text(json.dumps({
        "schema_version": 1,
        "dataset": {"name": "pydoc-docs", "version": "v1",
                    "manifest_sha256": sha256_file(manifest), "data_sha256": sha256_file(data)},
        "verdict": quality, "records": 3, "documents": 3, "tokens": 12, "invalid_records": 0,
        "thresholds": {"max_invalid_records": 0},
        "rules": [{"rule": "document_count", "threshold": 2, "value": 3,
                   "outcome": quality, "message": "3 documents", "offending_lines": []}],
        "reasons": []}))
    rec = StageRecorder("prepare_dataset", folder)
    rec.add_input("manifest", manifest)
    rec.add_input("data", data)
    for name in ("bin", "idx"):
        rec.add_output(name, folder / f"data.{name}")
    rec.add_output("quality", folder / "quality.json")
    rec.metrics.update({"dataset_name": "pydoc-docs", "dataset_version": "v1"})
    rec.write("success")


def _train(folder: Path, base: Path, seed: int, profile: Path,
           losses: Sequence[float] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    adapter = save_adapter(folder / "rwkv-1.pth", seed)
    tiny_png(folder / "loss_curve.png", 90)
    rec = StageRecorder("train_adapter", folder)
    rec.add_input("profile", profile)
    rec.add_input("base_model", base)
    rec.add_output("adapter", adapter)
    rec.add_output("loss_curve", folder / "loss_curve.png")
    if losses is not None:  # as RWKV-PEFT writes it: one JSON object per optimizer step
        (folder / "loss_data.jsonl").write_text("".join(
            json.dumps({"loss": loss, "t_cost": 0.5, "kt_s": 1.0}) + "\n" for loss in losses))
        rec.add_output("loss_data", folder / "loss_data.jsonl")
    rec.metrics.update({"final_loss": 3.25, "steps": 50, "backend": "cpu-reference"})
    rec.write("success")


def default_suites() -> dict[str, dict]:
    """The `suites` of the metrics.json make_run writes unless it is given others."""
    files = {"file": str(ROOT / "configs/eval/pydoc_domain.yaml"), "file_sha256": "1" * 64,
             "data_sha256": "2" * 64, "ctx_len": 128}
    return {
        "pydoc_domain": {**files, "kind": "domain", "documents": 37, "tokens": 4096,
                         "base_loss": 6.5, "adapted_loss": 5.61, "base_ppl": 665.1,
                         "adapted_ppl": 273.1, "relative_change": -0.1369, "ci95": [-0.15, -0.12]},
        "lambada": {**files, "kind": "retention", "documents": 100, "tokens": 2000,
                    "base_loss": 7.0, "adapted_loss": 7.09, "base_ppl": 1096.6,
                    "adapted_ppl": 1199.8, "relative_change": 0.0129, "ci95": [0.005, 0.02]},
    }


def _evaluate(folder: Path, adapter: Path, base: Path, verdict: str,
              baseline: Path | None = None, suites: dict[str, dict] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suites = default_suites() if suites is None else suites
    (folder / "metrics.json").write_text(json.dumps({
        "schema_version": 1,
        "profile": {"name": PROFILE, "path": "/x/smoke_cpu.yaml", "sha256": "3" * 64},
        "adapter": {"path": str(adapter), "sha256": sha256_file(adapter), "method": "lora",
                    "scaling": 2.0, "merged_tensors": 4, "replaced_tensors": 0},
        "base_model": {"path": str(base), "sha256": sha256_file(base)},
        "eval_strategy": "cpu fp32", "tokenizer": "rwkv world",
        "bootstrap": {"resamples": 200, "seed": 0, "statistic": "relative_change"},
        "suites": suites,
        "throughput": {"tokens_scored": 12192, "seconds": 1.5, "tokens_per_s": 8128.0,
                       "threads": 2}}))
    rules = [
        {"rule": "min_domain_improvement", "suite": "pydoc_domain", "comparison": ">=",
         "threshold": 0.01, "value": 0.1369, "outcome": "pass", "message": "13.69 % better"},
        {"rule": "max_retention_increase", "suite": "lambada", "comparison": "<=",
         "threshold": 0.05 if verdict == "pass" else 0.001, "value": 0.0129,
         "outcome": verdict, "message": "lambada loss +1.29 %"},
    ]
    (folder / "verdict.json").write_text(json.dumps({
        "schema_version": 1, "verdict": verdict, "adapter_sha256": sha256_file(adapter),
        "metrics_sha256": sha256_file(folder / "metrics.json"), "profile": PROFILE,
        "created_at": "2026-11-27T12:00:00.000+00:00",
        "thresholds": {"min_domain_improvement": 0.01, "max_retention_increase": 0.05,
                       "baseline_tolerance": None},
        "rules": rules, "notes": [],
        "reasons": [r["message"] for r in rules if r["outcome"] == "fail"]}))
    tiny_png(folder / "eval_chart.png", 200)
    rec = StageRecorder("evaluate_adapter", folder)
    rec.add_input("adapter", adapter)
    if baseline is not None:  # as evaluate_adapter records --baseline-metrics
        rec.add_input("baseline_metrics", baseline)
    for name in ("metrics", "verdict", "eval_chart"):
        rec.add_output(name, folder / f"{name}.{'png' if name == 'eval_chart' else 'json'}")
    rec.write("success")


def make_run(tmp: Path, name: str = "run1", seed: int = 1, verdict: str = "pass",
             quality: str = "pass", base: Path | None = None,
             baseline: Path | None = None, suites: dict[str, dict] | None = None,
             losses: Sequence[float] | None = None,
             profile_edits: Sequence[tuple[str, str]] = ()) -> Run:
    """A run's real stage outputs under tmp/name, sharing one base model and releases root.

    `suites` replaces the metrics.json suites (default_suites()), `losses` writes a
    loss_data.jsonl, `profile_edits` are (old, new) text replacements in the profile YAML.
    """
    if base is None:
        base = tmp / "models" / "tiny.pth"
        if not base.exists():
            base.parent.mkdir(parents=True)
            save_adapter(base, 999)
    work = tmp / name
    profile_text = (ROOT / "configs/profiles/smoke_cpu.yaml").read_text().replace(
        "base_model: smoke/rwkv7-tiny-L2-D128.pth", f"base_model: {base}")
    for old, new in profile_edits:
        assert old in profile_text, f"{old!r} is not in the smoke profile"
        profile_text = profile_text.replace(old, new)
    (work / "cfg").mkdir(parents=True)
    profile = work / "cfg" / "smoke_cpu.yaml"
    profile.write_text(profile_text)
    _prepare(work / "prepare_dataset", quality)
    _train(work / "train_adapter", base, seed, profile, losses)
    _evaluate(work / "evaluate_adapter", work / "train_adapter" / "rwkv-1.pth", base, verdict,
              baseline, suites)
    decision = gate.decide(work / "prepare_dataset" / "quality.json",
                           work / "evaluate_adapter" / "verdict.json", allow_warn=True)
    gate_file = gate.write_decision(decision, work / "release_gate" / "gate_decision.json")
    # tmp/models is this scratch deployment's models root: the profile's base_model must lie
    # inside the allowed roots
    env = {**os.environ, "PEFTFLOW_RELEASES_ROOT": str(tmp / "releases"),
           "PEFTFLOW_AUDIT_LOG": str(tmp / "audit.jsonl"), "PEFTFLOW_PYTHON": sys.executable,
           "PEFTFLOW_MODELS_ROOT": str(base.parent)}
    return Run(base, work, tmp / "releases", profile, ROOT / "dag_specs/rwkv7_smoke_cpu.yaml",
               work / "prepare_dataset", work / "train_adapter", work / "evaluate_adapter",
               gate_file, work / "release_adapter", env)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("PEFTFLOW_RELEASES_ROOT", str(tmp_path / "releases"))
    monkeypatch.setenv("PEFTFLOW_MODELS_ROOT", str(tmp_path / "models"))  # as make_run's env
    return make_run(tmp_path)


def test_a_passing_run_is_released_with_a_valid_manifest_and_report(run: Run) -> None:
    done = run.release()
    assert done.returncode == 0, done.stderr
    folder = run.releases / PROFILE / "r0001"
    manifest = json.loads((folder / "release_manifest.json").read_text())
    schemas.check(manifest, "release_manifest", "release_manifest.json")
    adapter = run.train / "rwkv-1.pth"
    released = folder / "adapter.pth"
    assert manifest["adapter"]["sha256"] == sha256_file(adapter) == sha256_file(released)
    assert manifest["base_model"]["sha256"] == sha256_file(run.base)
    assert manifest["dataset"]["name"] == "pydoc-docs" and manifest["dataset"]["version"] == "v1"
    assert manifest["spec"]["sha256"] == sha256_file(run.spec)
    assert manifest["profile"]["sha256"] == sha256_file(run.profile)
    assert manifest["airflow"] == {"dag_id": "rwkv7_smoke_cpu",
                                   "run_id": "manual__2026-11-27T12:00:00", "try_number": 1}
    assert len(manifest["project"]["commit"]) == 40
    assert manifest["training"]["final_loss"] == 3.25 and manifest["training"]["lora_r"] == 8
    assert manifest["metrics"]["pydoc_domain"]["adapted_loss"] == 5.61
    for name, digest in manifest["files_sha256"].items():
        assert sha256_file(folder / name) == digest
    report = (folder / "report.md").read_text()
    assert "# Release smoke-cpu r0001" in report
    assert "| pydoc_domain | domain | 37 | 4096 | 6.5 | 5.61 |" in report
    assert "-13.69 %" in report and "max_retention_increase" in report
    assert "![Training loss](loss_curve.png)" in report and (folder / "loss_curve.png").is_file()
    assert "![Evaluation](eval_chart.png)" in report and (folder / "eval_chart.png").is_file()
    status = run.status()
    assert status["status"] == "success" and status["metrics"]["noop"] is False
    assert status["metrics"]["version"] == "r0001"
    outputs = stage_status.outputs_of(stage_status.read(run.out))
    assert set(outputs) == {"release_manifest", "report", "adapter_release"}
    for ref in outputs.values():
        ref.verify()
    current = registry.current_release(PROFILE)
    assert current is not None and current.version == "r0001"
    assert registry.baseline_metrics_path(PROFILE) == folder / "metrics.json"
    assert json.loads(current.metrics_path.read_text())["suites"]["lambada"]["kind"] == "retention"
    assert registry.verify_release(current) == []


def test_a_release_carries_its_loss_data_and_a_copy_of_its_profile(tmp_path: Path,
                                                                    run: Run) -> None:
    """loss_data.jsonl is optional (older runs have none); the profile copy is always made."""
    assert run.release().returncode == 0
    without = registry.get_release(PROFILE, "r0001")
    assert "loss_data" not in without.doc["files"]
    assert without.doc["files"]["profile"] == "profile.yaml"
    assert sha256_file(without.dir / "profile.yaml") == without.doc["profile"]["sha256"] \
        == sha256_file(run.profile)
    second = make_run(tmp_path, "run2", seed=2, losses=[3.5, 3.25, 3.0])
    assert second.release("manual__2026-11-28T09:00:00").returncode == 0
    released = registry.get_release(PROFILE, "r0002")
    assert released.doc["files"]["loss_data"] == "loss_data.jsonl"
    assert (released.dir / "loss_data.jsonl").read_bytes() == \
        (second.train / "loss_data.jsonl").read_bytes()
    assert {"loss_data.jsonl", "profile.yaml"} <= set(released.doc["files_sha256"])
    assert registry.verify_release(released) == []


def test_releasing_the_same_run_twice_is_a_noop(run: Run) -> None:
    assert run.release().returncode == 0
    manifest = run.releases / PROFILE / "r0001" / "release_manifest.json"
    before = manifest.read_bytes()
    again = run.release()
    assert again.returncode == 0, again.stderr
    assert "already released as r0001" in again.stdout
    assert run.status()["metrics"]["noop"] is True
    assert manifest.read_bytes() == before
    assert [p.name for p in (run.releases / PROFILE).iterdir() if p.is_dir()] == ["r0001"]


def test_a_different_run_gets_the_next_version(tmp_path: Path, run: Run) -> None:
    assert run.release().returncode == 0
    second = make_run(tmp_path, "run2", seed=2)
    done = second.release("manual__2026-11-28T09:00:00")
    assert done.returncode == 0, done.stderr
    assert second.status()["metrics"]["version"] == "r0002"
    assert [r.version for r in registry.list_releases(PROFILE)] == ["r0001", "r0002"]
    assert registry.current_release(PROFILE).run_id == "manual__2026-11-28T09:00:00"


def test_the_same_adapter_from_another_run_is_not_released_twice(tmp_path: Path, run: Run) -> None:
    assert run.release().returncode == 0
    twin = make_run(tmp_path, "run2", seed=1)  # same seed: byte-identical adapter
    done = twin.release("manual__other")
    assert done.returncode == 0, done.stderr
    metrics = twin.status()["metrics"]
    assert (metrics["noop"], metrics["version"]) == (True, "r0001")


def test_a_tampered_adapter_is_refused_and_nothing_is_released(run: Run) -> None:
    adapter = run.train / "rwkv-1.pth"
    data = bytearray(adapter.read_bytes())
    data[len(data) // 2] ^= 0xFF
    adapter.write_bytes(bytes(data))
    done = run.release()
    assert done.returncode == 5, done.stderr
    assert "does not match its recorded sha256" in done.stderr and "'adapter'" in done.stderr
    assert not (run.releases / PROFILE).exists() or \
        not [p for p in (run.releases / PROFILE).iterdir() if p.is_dir()]
    status = run.status()
    assert status["status"] == "failed" and status["outputs"] == [] and status["exit_code"] == 5


def test_a_blocked_gate_decision_refuses_with_exit_7(tmp_path: Path) -> None:
    blocked = make_run(tmp_path, "bad", verdict="fail")
    done = blocked.release()
    assert done.returncode == 7, done.stderr
    assert "release gate blocked this release" in done.stderr
    assert "max_retention_increase' on suite 'lambada': measured 0.0129, required <= 0.001" \
        in done.stderr
    assert not [p for p in (blocked.releases / PROFILE).iterdir() if p.is_dir()]
    status = blocked.status()
    assert status["status"] == "blocked" and status["outputs"] == [] and status["exit_code"] == 7
    assert blocked.release().returncode == 7  # a retry does not record the block twice
    records = registry.list_blocked(PROFILE, blocked.releases)
    assert len(records) == 1 and records[0]["run_id"] == "manual__2026-11-27T12:00:00"
    assert "measured 0.0129, required <= 0.001" in records[0]["reasons"][0]


def test_a_merged_model_is_released_beside_the_adapter(tmp_path: Path, run: Run) -> None:
    merged = save_adapter(tmp_path / "merged.pth", 77)
    done = run.release("manual__merged", "--merged", str(merged))
    assert done.returncode == 0, done.stderr
    manifest = registry.get_release(PROFILE, "r0001").doc
    assert manifest["merged_model"]["sha256"] == sha256_file(merged)
    assert manifest["files"]["merged_model"] == "merged_model.pth"
    report = (run.releases / PROFILE / "r0001" / "report.md").read_text()
    assert "| Merged model | `merged_model.pth`" in report


def test_a_gate_decision_about_other_files_is_refused(tmp_path: Path, run: Run) -> None:
    other = make_run(tmp_path, "other", seed=3)
    done = subprocess.run([str(SCRIPT), *run.args()[:-8], "--gate", str(other.gate_file),
                           *run.args()[-8:]], capture_output=True, text=True, env=run.env,
                          timeout=120, check=False)
    assert done.returncode == 5, done.stderr
    assert "the gate decided on a different verdict file" in done.stderr


def test_a_failed_upstream_stage_is_refused(run: Run) -> None:
    rec = StageRecorder("train_adapter", run.train)
    rec.write("failed", "killed", 130)
    done = run.release()
    assert done.returncode == 3, done.stderr
    assert "train_adapter ended with status 'failed'" in done.stderr


def test_an_existing_version_is_never_overwritten(tmp_path: Path, run: Run) -> None:
    assert run.release().returncode == 0
    second = make_run(tmp_path, "run2", seed=2)
    done = second.release("manual__x", "--version", "r0001")
    assert done.returncode == 2, done.stderr
    assert "version r0001 already exists and versions are never overwritten" in done.stderr


def test_a_crash_while_building_leaves_no_half_release(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from peftflow.train import training_profile as profile

    def disk_full(doc: dict, path: Path) -> None:
        raise ResourceError(f"{path}: no space left on device (injected)")

    monkeypatch.setattr(lineage, "write_manifest", disk_full)
    request = publish.ReleaseRequest(
        profile=profile.load(run.profile), spec_path=run.spec, prepare_status=run.prepare,
        train_status=run.train, eval_status=run.evaluate, gate_path=run.gate_file,
        dag_id="rwkv7_smoke_cpu", run_id="manual__crash", try_number=1)
    with pytest.raises(ResourceError, match="injected"):
        publish.publish(request)
    assert [p.name for p in (run.releases / PROFILE).iterdir() if p.is_dir()] == []
    monkeypatch.undo()
    monkeypatch.setenv("PEFTFLOW_RELEASES_ROOT", str(run.releases))
    (run.releases / PROFILE / ".tmp-r0001-99999").mkdir()  # what a kill -9 leaves behind
    result = publish.publish(request)
    assert result.release.version == "r0001" and not result.noop
    assert not list((run.releases / PROFILE).glob(".tmp-*"))


def test_base_model_hash_is_cached_beside_the_model(run: Run) -> None:
    digest = lineage.cached_sha256(run.base)
    sidecar = json.loads(Path(f"{run.base}.sha256").read_text())
    assert sidecar["sha256"] == digest == sha256_file(run.base)
    stat = run.base.stat()
    assert (sidecar["bytes"], sidecar["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    Path(f"{run.base}.sha256").write_text(json.dumps({**sidecar, "sha256": "f" * 64}))
    assert lineage.cached_sha256(run.base) == "f" * 64  # trusted while size+mtime match
    os.utime(run.base, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert lineage.cached_sha256(run.base) == digest


def test_a_base_model_changed_since_training_is_refused(run: Run) -> None:
    save_adapter(run.base, 1234)
    done = run.release()
    assert done.returncode == 5, done.stderr
    assert "the base model changed since training" in done.stderr


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peftflow.cli.main", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def test_releases_cli_lists_shows_and_verifies(run: Run) -> None:
    assert run.release().returncode == 0
    listed = _cli(run.env, "releases", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["profile"], r["version"]) for r in rows] == [(PROFILE, "r0001")]
    table = _cli(run.env, "releases", "list", "--profile", PROFILE)
    assert "smoke-cpu" in table.stdout and "r0001" in table.stdout
    shown = _cli(run.env, "releases", "show", PROFILE, "r0001", "--verify")
    assert shown.returncode == 0, shown.stderr
    assert "pydoc_domain: loss 6.5 -> 5.61 (-13.69 %)" in shown.stdout
    released = run.releases / PROFILE / "r0001" / "adapter.pth"
    data = bytearray(released.read_bytes())
    data[len(data) // 2] ^= 0x01
    released.chmod(0o644)
    released.write_bytes(bytes(data))
    bad = _cli(run.env, "releases", "show", PROFILE, "r0001", "--verify")
    assert bad.returncode == 5
    assert "adapter.pth: sha256 differs from the manifest" in bad.stderr
    missing = _cli(run.env, "releases", "show", PROFILE, "r0042")
    assert missing.returncode == 3 and "release manifest not found" in missing.stderr


def test_two_runs_released_at_once_get_distinct_versions(tmp_path: Path, run: Run) -> None:
    second = make_run(tmp_path, "run2", seed=2)
    procs = [subprocess.Popen([str(SCRIPT), *r.args(run_id)], env=r.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r, run_id in ((run, "manual__a"), (second, "manual__b"))]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    releases = registry.list_releases(PROFILE)
    assert sorted(r.version for r in releases) == ["r0001", "r0002"]
    assert sorted(r.run_id for r in releases) == ["manual__a", "manual__b"]


def test_a_release_names_the_release_its_evaluation_compared_with(tmp_path: Path,
                                                                   run: Run) -> None:
    assert run.release().returncode == 0
    first = registry.get_release(PROFILE, "r0001")
    assert first.doc["baseline"] is None
    second = make_run(tmp_path, "run2", seed=2, baseline=first.metrics_path)
    done = second.release("manual__2026-11-28T09:00:00")
    assert done.returncode == 0, done.stderr
    manifest = registry.get_release(PROFILE, "r0002").doc
    assert manifest["baseline"] == {"profile": PROFILE, "version": "r0001",
                                    "metrics_sha256": sha256_file(first.metrics_path)}
    shown = _cli(run.env, "releases", "show", PROFILE, "r0002")
    assert shown.returncode == 0, shown.stderr
    assert f"  baseline  {PROFILE} r0001  metrics sha256 " in shown.stdout
    as_json = json.loads(_cli(run.env, "releases", "show", PROFILE, "r0002", "--json").stdout)
    assert as_json["baseline"]["version"] == "r0001"
    assert "  baseline  none (first release / no comparison)" in _cli(
        run.env, "releases", "show", PROFILE, "r0001").stdout


def test_baseline_metrics_that_are_no_release_are_refused(tmp_path: Path, run: Run) -> None:
    loose = tmp_path / "loose" / "metrics.json"
    loose.parent.mkdir()
    loose.write_text((run.evaluate / "metrics.json").read_text())
    other = make_run(tmp_path, "run2", seed=2, baseline=loose)
    done = other.release()
    assert done.returncode == 5, done.stderr
    assert "evaluate_adapter compared with these baseline metrics, but they are not an " \
           "intact release's (" in done.stderr
    assert not (run.releases / PROFILE).is_dir() or not any((run.releases / PROFILE).iterdir())
