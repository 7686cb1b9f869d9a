"""evaluate_adapter end to end: the smoke adapter, its verdict, and inputs that fail cleanly."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from peftflow import entry
from peftflow.evaluate import merge, suites
from peftflow.stages import evaluate as stage
from peftflow.store import schemas
from peftflow.store import status_record as status
from peftflow.train.tiny import init_tiny_rwkv7

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "profiles" / "smoke_cpu.yaml"
DOMAIN = ROOT / "configs" / "eval" / "pydoc_domain.yaml"
RETENTION = ROOT / "configs" / "eval" / "lambada_retention.yaml"
SEED = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))["model"]["init_seed"]


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root with the smoke base (L2 C128) and a wider L2 C192 model."""
    root = tmp_path_factory.mktemp("models")
    init_tiny_rwkv7(root / "smoke" / "rwkv7-tiny-L2-D128.pth", 2, 128, SEED)
    init_tiny_rwkv7(root / "smoke" / "rwkv7-tiny-L2-D192.pth", 2, 192, SEED)
    return root


@pytest.fixture
def env(models_root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("PEFTFLOW_MODELS_ROOT", str(models_root))
    return {**os.environ, "PEFTFLOW_MODELS_ROOT": str(models_root)}


def fabricated_adapter(path: Path, base: Path, r: int = 8, seed: int = 0) -> Path:
    """An adapter in RWKV-PEFT's layout (LoRA on att/ffn linears, ln* tensors), random values."""
    sd = torch.load(base, weights_only=True)
    gen = torch.Generator().manual_seed(seed)
    adapter = {}
    for key, weight in sd.items():
        if key.endswith(("att.receptance.weight", "att.key.weight", "att.value.weight",
                         "att.output.weight", "ffn.key.weight", "ffn.value.weight")):
            prefix = key.removesuffix(".weight")
            adapter[prefix + ".lora_A"] = torch.randn(r, weight.shape[1], generator=gen) * 0.01
            adapter[prefix + ".lora_B"] = torch.randn(weight.shape[0], r, generator=gen) * 0.01
        elif ".ln" in key or key.startswith("ln_out"):
            adapter[key] = weight * 1.01
    torch.save(adapter, path)
    return path


def profile_for_width(tmp_path: Path, width: int) -> Path:
    data = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    data["model"].update(n_embd=width, base_model=f"smoke/rwkv7-tiny-L2-D{width}.pth")
    path = tmp_path / f"smoke_d{width}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def small_retention_suite(tmp_path: Path, documents: int = 8) -> Path:
    data = yaml.safe_load(RETENTION.read_text(encoding="utf-8"))
    data["data"]["path"] = str(RETENTION.parent / data["data"]["path"])
    data["max_documents"] = documents
    path = tmp_path / "small_retention.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run_inprocess(*argv: str | Path) -> int:
    return entry.run(stage.main, [str(a) for a in argv])


def run_script(env: dict[str, str], *argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / "evaluate_adapter.sh"), *map(str, argv)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def assert_failed_cleanly(out: Path, code: int) -> dict[str, Any]:
    assert not (out / "verdict.json").exists()
    assert not (out / "metrics.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    doc = status.read(out)
    assert (doc["status"], doc["exit_code"], doc["outputs"]) == ("failed", code, [])
    return doc


# --- inputs that must fail cleanly (fast: they fail before any model is scored) ---------------

def test_missing_adapter_fails_with_exit_3_and_no_verdict(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    code = run_inprocess("--profile", SMOKE, "--adapter", tmp_path / "rwkv-1.pth", "--suite",
                         DOMAIN, "--suite", RETENTION, "--out", out)
    assert code == 3
    assert "rwkv-1.pth: adapter checkpoint not found" in capsys.readouterr().err
    assert_failed_cleanly(out, 3)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_adapter_fails_with_exit_5_and_no_verdict(
    env: dict[str, str], models_root: Path, tmp_path: Path, damage: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    adapter = fabricated_adapter(tmp_path / "rwkv-1.pth", models_root / "smoke" /
                                 "rwkv7-tiny-L2-D128.pth")
    data = adapter.read_bytes()
    adapter.write_bytes(b"\x00garbage" * 64 if damage == "garbage" else data[: len(data) // 3])
    out = tmp_path / "eval"
    out.mkdir()
    (out / "verdict.json").write_text('{"verdict": "pass"}')  # left by an earlier run
    code = run_inprocess("--profile", SMOKE, "--adapter", adapter, "--suite", DOMAIN,
                         "--suite", RETENTION, "--out", out)
    assert code == 5
    assert "is not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert_failed_cleanly(out, 5)


def test_suite_whose_sha256_does_not_match_fails_with_exit_5_and_no_verdict(
    env: dict[str, str], models_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = fabricated_adapter(tmp_path / "rwkv-1.pth", models_root / "smoke" /
                                 "rwkv7-tiny-L2-D128.pth")
    suite = small_retention_suite(tmp_path)
    suite.write_text(suite.read_text().replace("4aa8d02c", "00000000"))
    out = tmp_path / "eval"
    code = run_inprocess("--profile", SMOKE, "--adapter", adapter, "--suite", DOMAIN,
                         "--suite", suite, "--out", out)
    assert code == 5
    assert "$.data.sha256: " in capsys.readouterr().err
    assert_failed_cleanly(out, 5)


def test_adapter_of_an_l2_c128_model_on_a_c192_base_fails_with_exit_5_and_no_verdict(
    env: dict[str, str], models_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = fabricated_adapter(tmp_path / "rwkv-1.pth", models_root / "smoke" /
                                 "rwkv7-tiny-L2-D128.pth")
    out = tmp_path / "eval"
    code = run_inprocess("--profile", profile_for_width(tmp_path, 192), "--adapter", adapter,
                         "--suite", DOMAIN, "--suite", RETENTION, "--out", out)
    assert code == 5
    err = capsys.readouterr().err
    assert "the adapter was trained on a different architecture" in err
    assert_failed_cleanly(out, 5)


def test_base_model_that_differs_from_the_profile_fails_with_exit_5(
    env: dict[str, str], models_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = fabricated_adapter(tmp_path / "rwkv-1.pth", models_root / "smoke" /
                                 "rwkv7-tiny-L2-D128.pth")
    data = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    data["model"]["base_model"] = "smoke/rwkv7-tiny-L2-D192.pth"  # profile still says C128
    prof = tmp_path / "wrong_base.yaml"
    prof.write_text(yaml.safe_dump(data), encoding="utf-8")
    code = run_inprocess("--profile", prof, "--adapter", adapter, "--suite", DOMAIN,
                         "--suite", RETENTION, "--out", tmp_path / "eval")
    assert code == 5
    assert "base model is L2 C192 V65536, but profile" in capsys.readouterr().err


def test_baseline_tolerance_without_baseline_metrics_is_a_config_error(
    env: dict[str, str], tmp_path: Path
) -> None:
    code = run_inprocess("--profile", SMOKE, "--adapter", tmp_path / "a.pth", "--suite", DOMAIN,
                         "--out", tmp_path / "eval", "--baseline-tolerance", "0.01")
    assert code == 2
    assert_failed_cleanly(tmp_path / "eval", 2)


def test_write_merged_onto_the_base_model_is_refused_and_leaves_it_intact(
    env: dict[str, str], models_root: Path, tmp_path: Path
) -> None:
    base = models_root / "smoke" / "rwkv7-tiny-L2-D128.pth"
    before = base.read_bytes()
    adapter = fabricated_adapter(tmp_path / "rwkv-1.pth", base)
    code = run_inprocess("--profile", SMOKE, "--adapter", adapter, "--suite", DOMAIN,
                         "--suite", RETENTION, "--out", tmp_path / "eval", "--write-merged", base)
    assert code == 2
    assert base.read_bytes() == before
    assert_failed_cleanly(tmp_path / "eval", 2)


def test_check_suite_command_reports_documents_and_hash_mismatches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peftflow.cli import main as cli

    assert entry.run(cli._main, ["eval", "check-suite", str(DOMAIN), str(RETENTION)]) == 0
    docs = suites.tokenize(suites.load(DOMAIN), suites.encoder())
    assert f"ok pydoc-domain (domain): {len(docs.windows)} documents, {docs.tokens} tokens" in \
        capsys.readouterr().out
    bad = small_retention_suite(tmp_path)
    bad.write_text(bad.read_text().replace("4aa8d02c", "00000000"))
    assert entry.run(cli._main, ["eval", "check-suite", str(bad)]) == 5
    assert "data sha256 is now 4aa8d02c" in capsys.readouterr().out


# --- the smoke adapter, trained for real with the cpu-reference backend ------------------------

@pytest.fixture(scope="module")
def smoke_adapter(smoke_run: tuple[subprocess.CompletedProcess[str], Path, float]) -> Path:
    """The smoke LoRA adapter, trained for real once per session (tests/conftest.py)."""
    result, out, _ = smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(status.outputs_of(status.read(out))["adapter"].path)


@pytest.fixture(scope="module")
def smoke_eval(smoke_adapter: Path, models_root: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke-eval")
    env = {**os.environ, "PEFTFLOW_MODELS_ROOT": str(models_root)}
    done = run_script(env, "--profile", SMOKE, "--adapter", smoke_adapter, "--suite", DOMAIN,
                      "--suite", RETENTION, "--out", out, "--threads", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "documents" in done.stderr and "tokens/s" in done.stderr  # progress lines
    return out


@pytest.mark.slow
def test_smoke_adapter_lowers_the_domain_loss_and_passes(smoke_eval: Path) -> None:
    metrics, verdict = read(smoke_eval / "metrics.json"), read(smoke_eval / "verdict.json")
    schemas.check(metrics, "eval_metrics", "metrics.json")
    schemas.check(verdict, "verdict", "verdict.json")
    domain = metrics["suites"]["pydoc-domain"]
    assert domain["adapted_loss"] < domain["base_loss"]
    assert domain["ci95"][1] < 0  # the gain is larger than the document-to-document noise
    expected = suites.tokenize(suites.load(DOMAIN), suites.encoder())
    assert (domain["documents"], domain["tokens"]) == (len(expected.windows), expected.tokens)
    assert metrics["adapter"]["scaling"] == 16 / 8  # alpha/r of the smoke profile
    assert verdict["verdict"] == "pass" and verdict["reasons"] == []
    assert [r["rule"] for r in verdict["rules"]] == ["min_domain_improvement",
                                                     "max_retention_increase"]
    doc = status.read(smoke_eval)
    assert doc["status"] == "success" and doc["exit_code"] == 0
    assert {o["name"] for o in doc["outputs"]} == {"metrics", "verdict", "eval_chart"}
    assert {"profile", "adapter", "base_model", "suite:pydoc-domain"} <= \
        {i["name"] for i in doc["inputs"]}
    assert doc["metrics"]["verdict"] == "pass" and doc["metrics"]["tokens_per_s"] > 0
    assert (smoke_eval / "eval_chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert verdict["metrics_sha256"] == status.outputs_of(doc)["metrics"].sha256


@pytest.mark.slow
def test_threshold_just_above_the_measured_gain_flips_the_verdict_to_fail(
    smoke_adapter: Path, smoke_eval: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """A fail verdict is a successful stage (exit 0); the reason names rule, suite and values."""
    domain = read(smoke_eval / "metrics.json")["suites"]["pydoc-domain"]
    gain = (domain["base_loss"] - domain["adapted_loss"]) / domain["base_loss"]
    threshold = gain + 1e-4
    out = tmp_path / "eval"
    done = run_script(env, "--profile", SMOKE, "--adapter", smoke_adapter, "--suite", DOMAIN,
                      "--suite", small_retention_suite(tmp_path), "--out", out, "--threads", "1",
                      "--min-domain-improvement", repr(threshold))
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = read(out / "verdict.json")
    assert verdict["verdict"] == "fail"
    assert verdict["reasons"] == [
        f"min_domain_improvement on suite 'pydoc-domain': relative loss improvement "
        f"(base-adapted)/base {gain:.6g} violates the threshold >= {threshold:.6g}"
    ]
    assert status.read(out)["status"] == "success"
    assert "verdict: fail" in done.stdout


@pytest.mark.slow
def test_merged_model_is_written_and_judged_against_the_released_metrics(
    smoke_adapter: Path, smoke_eval: Path, models_root: Path, env: dict[str, str],
    tmp_path: Path,
) -> None:
    out, merged_path = tmp_path / "eval", tmp_path / "release" / "merged.pth"
    done = run_script(env, "--profile", SMOKE, "--adapter", smoke_adapter, "--suite", DOMAIN,
                      "--suite", small_retention_suite(tmp_path), "--out", out, "--threads", "1",
                      "--baseline-metrics", smoke_eval / "metrics.json",
                      "--baseline-tolerance", "0", "--write-merged", merged_path)
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = read(out / "verdict.json")
    regression = [r for r in verdict["rules"] if r["rule"] == "no_regression_vs_release"]
    assert [(r["suite"], r["outcome"]) for r in regression] == [("pydoc-domain", "pass")]
    assert "scored other tokens" in verdict["notes"][0]  # 8 retention documents instead of 64
    assert status.outputs_of(status.read(out))["merged_model"].path == str(merged_path)
    merged = torch.load(merged_path, weights_only=True)
    base = torch.load(models_root / "smoke" / "rwkv7-tiny-L2-D128.pth", weights_only=True)
    adapter = merge.load_checkpoint(smoke_adapter, "adapter")
    key = "blocks.1.att.value"
    expected = base[key + ".weight"] + adapter[key + ".lora_B"] @ adapter[key + ".lora_A"] * 2.0
    torch.testing.assert_close(merged[key + ".weight"], expected)
    assert set(merged) == set(base)


def test_stage_script_runs_from_any_directory(tmp_path: Path) -> None:
    done = subprocess.run([str(ROOT / "scripts" / "evaluate_adapter.sh"), "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "--min-domain-improvement" in done.stdout
