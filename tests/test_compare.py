"""`peftflow compare A B`: two real releases (scripts/release_adapter.sh on make_run's stage
outputs) and their runs, compared suite by suite, profile key by key and curve by curve."""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_release import PROFILE, Run, _cli, default_suites, make_run

from peftflow import entry
from peftflow.cli import main as cli
from peftflow.release.compare import chart
from peftflow.run.runinfo import safe_segment

DAG = "rwkv7_smoke_cpu"
RUN_A, RUN_B = "manual__2026-11-27T12:00:00", "manual__2026-11-28T09:00:00"
A, B = f"{PROFILE}/r0001", f"{PROFILE}/r0002"
Compare = Callable[..., tuple[int, str, str]]


@dataclass(frozen=True)
class Pair:
    tmp: Path
    a: Run  # released as r0001
    b: Run  # released as r0002: other suites, lr_init and micro_bsz, a shorter curve


def _losses(start: float, steps: int) -> list[float]:
    return [start - 0.02 * i + 0.05 * math.sin(i) for i in range(steps)]


def _b_suites() -> dict[str, dict]:
    suites = default_suites()
    del suites["lambada"]  # only in A
    suites["pydoc_domain"].update(adapted_loss=5.4, relative_change=-0.1692, ci95=[-0.18, -0.16])
    suites["humaneval"] = {**suites["pydoc_domain"], "kind": "retention", "adapted_loss": 7.3,
                           "relative_change": 0.0429, "ci95": [0.03, 0.05]}  # only in B
    return suites


def _roots(tmp: Path) -> dict[str, str]:
    return {"PEFTFLOW_RELEASES_ROOT": str(tmp / "releases"),
            "PEFTFLOW_ARTIFACT_ROOT": str(tmp / "artifacts"),
            "PEFTFLOW_MODELS_ROOT": str(tmp / "models"),  # where make_run puts the base model
            "PEFTFLOW_AUDIT_LOG": str(tmp / "audit.jsonl")}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _roots(tmp).items():
            mp.setenv(name, value)
        a = make_run(tmp, f"artifacts/{DAG}/{safe_segment(RUN_A)}", seed=1,
                     losses=_losses(3.6, 50))
        b = make_run(tmp, f"artifacts/{DAG}/{safe_segment(RUN_B)}", seed=2, suites=_b_suites(),
                     losses=_losses(3.4, 40),
                     profile_edits=[("lr_init: 0.02", "lr_init: 0.01"),
                                    ("micro_bsz: 4", "micro_bsz: 2")])
        for run, run_id in ((a, RUN_A), (b, RUN_B)):
            done = run.release(run_id)
            assert done.returncode == 0, done.stderr
        yield Pair(tmp, a, b)


@pytest.fixture()
def compare(pair: Pair, capsys: pytest.CaptureFixture[str]) -> Compare:
    """`peftflow compare ARGS` in-process: (exit code, stdout, stderr); never a traceback."""
    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = entry.run(cli._main, ["compare", *args])
        done = capsys.readouterr()
        assert "Traceback" not in done.err
        return code, done.out, done.err

    return call


def _rows(out: str, header: str) -> dict[str, list[str]]:
    """The table whose header row starts with `header`, keyed by its first cell."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


@contextlib.contextmanager
def _edited(path: Path, old: str, new: str) -> Iterator[None]:
    before = path.read_text()
    path.write_text(before.replace(old, new))
    try:
        yield
    finally:
        path.write_text(before)


def test_two_releases_are_compared_with_the_numbers_of_their_metrics_json(
        pair: Pair, compare: Compare, tmp_path: Path) -> None:
    code, out, _ = compare(A, B, "--json", "--png", str(tmp_path / "c.png"))
    assert code == 0
    doc = json.loads(out)
    metrics = [json.loads((pair.tmp / "releases" / PROFILE / v / "metrics.json").read_text())
               ["suites"] for v in ("r0001", "r0002")]
    rows = {row["suite"]: row for row in doc["suites"]}
    assert list(rows) == ["pydoc_domain", "lambada", "humaneval"]  # A's order, then B's own
    for row in rows.values():
        for side, suites in zip(("a", "b"), metrics, strict=True):
            if row[side] is not None:
                recorded = suites[row["suite"]]
                assert row[side] == {key: recorded[key] for key in (
                    "kind", "base_loss", "adapted_loss", "relative_change", "ci95")}
    domain = rows["pydoc_domain"]
    assert domain["change"] == metrics[1]["pydoc_domain"]["adapted_loss"] - \
        metrics[0]["pydoc_domain"]["adapted_loss"]
    assert domain["change_pct"] == pytest.approx(-0.21 / 5.61 * 100)
    assert domain["ci_overlap"] is False  # [-15, -12] % and [-18, -16] %
    assert (rows["lambada"]["only_in"], rows["lambada"]["b"]) == ("A", None)
    assert (rows["humaneval"]["only_in"], rows["humaneval"]["a"]) == ("B", None)
    assert doc["png"] == str(tmp_path / "c.png")
    assert (doc["a"]["label"], doc["b"]["label"]) == (A, B)


def test_the_table_sets_suites_side_by_side_with_changes_cis_and_their_overlap(
        compare: Compare, tmp_path: Path) -> None:
    code, out, _ = compare(A, B, "--png", str(tmp_path / "c.png"))
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["A", "release", A]
    assert "SUITE  KIND  " in re.sub(r" {2,}", "  ", out)
    rows = _rows(out, "SUITE")
    assert rows["pydoc_domain"] == ["domain", "5.6100", "5.4000", "-0.2100", "-3.74 %",
                                    "-13.69 %", "-16.92 %", "-15.00 .. -12.00 %",
                                    "-18.00 .. -16.00 %", "no"]
    assert rows["lambada"][:2] == ["retention", "7.0900"] and rows["lambada"][-1] == "only in A"
    assert rows["humaneval"][-1] == "only in B" and rows["humaneval"][2] == "7.3000"
    facts = _rows(out, "FACT")
    assert facts["dataset"] == ["pydoc-docs v1", "pydoc-docs v1", "yes"]
    assert facts["released as"] == [A, B, "no"]
    assert facts["training steps"] == ["50", "40", "no"]
    assert out.rstrip().endswith(f"loss curves: {tmp_path / 'c.png'}")


def test_the_png_overlays_both_loss_curves_with_a_legend_naming_a_and_b(
        compare: Compare, tmp_path: Path) -> None:
    from matplotlib import image

    png = tmp_path / "curves.png"
    assert compare(A, B, "--png", str(png))[0] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(png)
    assert pixels.shape == (450, 800, 4)  # chart.WIDTH_IN x HEIGHT_IN at chart.DPI
    rgb = (pixels[..., :3] * 255).round().reshape(-1, 3)
    for color in chart.COLORS:  # both curves are drawn, in A's and in B's colour
        wanted = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
        assert (abs(rgb - wanted).max(axis=1) <= 2).sum() > 200, color
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temp file left
    fig = chart.figure([(f"A: {A}", _losses(3.6, 50)), (f"B: {B}", [])], "t")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [f"A: {A}: loss per step (50 steps)", f"A: {A}: mean of 5 steps"]
    assert "no loss data: B: " + B in [t.get_text() for t in fig.axes[0].texts]


def test_the_profile_keys_that_differ_come_from_the_releases_own_copies(
        pair: Pair, compare: Compare, tmp_path: Path) -> None:
    png = str(tmp_path / "c.png")
    with _edited(pair.a.profile, "epoch_count: 2", "epoch_count: 9"):  # on disk, after release
        code, out, err = compare(A, B, "--png", png)
        doc = json.loads(compare(A, B, "--png", png, "--json")[1])
    assert code == 0 and "changed since" not in err
    assert "2 training-profile keys differ" in out
    assert _rows(out, "PROFILE KEY") == {"training.lr_init": ["0.02", "0.01"],
                                         "training.micro_bsz": ["4", "2"]}
    assert doc["config"]["identical"] is False
    assert doc["a"]["profile"]["recorded_copy"] is doc["b"]["profile"]["recorded_copy"] is True
    assert doc["a"]["profile"]["read_from"].endswith("r0001/profile.yaml")


def test_identical_profiles_are_said_to_be_identical_in_one_line(
        compare: Compare, tmp_path: Path) -> None:
    code, out, _ = compare(A, f"{DAG}/{RUN_A}", "--png", str(tmp_path / "c.png"))
    assert code == 0
    assert re.search(r"^training profiles are identical \(sha256 [0-9a-f]{12}\.\.\.\)$", out,
                     re.MULTILINE)
    assert "PROFILE KEY" not in out
    suites = _rows(out, "SUITE")
    assert suites["pydoc_domain"][3:5] == ["+0.0000", "+0.00 %"]
    assert suites["pydoc_domain"][-1] == suites["lambada"][-1] == "yes"
    assert _rows(out, "FACT")["released as"] == [A, A, "yes"]


def test_runs_are_named_by_dag_id_and_run_id_as_airflow_writes_it_or_by_their_folder(
        pair: Pair, compare: Compare, tmp_path: Path) -> None:
    code, out, err = compare(f"{DAG}/{RUN_A}", str(pair.b.work), "--json",
                             "--png", str(tmp_path / "c.png"))
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["a"]["kind"], doc["b"]["kind"]) == ("run", "run")
    assert doc["a"]["label"] == f"{DAG}/{safe_segment(RUN_A)}"
    assert doc["a"]["folder"] == str(pair.a.work.resolve())
    recorded = json.loads((pair.b.evaluate / "metrics.json").read_text())["suites"]
    assert {r["suite"]: r["b"]["adapted_loss"] for r in doc["suites"] if r["b"]} == \
        {name: s["adapted_loss"] for name, s in recorded.items()}
    assert [d["key"] for d in doc["config"]["differences"]] == ["training.lr_init",
                                                                "training.micro_bsz"]
    facts = {f["fact"]: f for f in doc["facts"]}
    assert facts["gate"]["a"] == "passed (eval pass, dataset pass)"
    assert "warning" not in err  # profiles unchanged, loss data present


def test_a_profile_changed_since_the_run_is_read_with_a_warning(
        pair: Pair, compare: Compare, tmp_path: Path) -> None:
    with _edited(pair.b.profile, "lr_init: 0.01", "lr_init: 0.005"):
        code, out, err = compare(f"{DAG}/{RUN_A}", f"{DAG}/{RUN_B}",
                                 "--png", str(tmp_path / "c.png"))
    assert code == 0
    assert f"warning: B ({DAG}/{safe_segment(RUN_B)}): {pair.b.profile}: changed since it " \
           "was recorded (sha256 " in err
    assert _rows(out, "PROFILE KEY")["training.lr_init"] == ["0.02", "0.005"]


def test_a_blocked_run_shows_its_gate_verdict_and_reasons(
        pair: Pair, compare: Compare, tmp_path: Path) -> None:
    blocked = make_run(pair.tmp, f"artifacts/{DAG}/manual__blocked", seed=5, verdict="fail")
    code, out, _ = compare(A, str(blocked.work), "--png", str(tmp_path / "c.png"))
    assert code == 0
    facts = _rows(out, "FACT")
    assert facts["gate"] == ["passed (eval pass, dataset pass)",
                             "blocked (eval fail, dataset pass)", "no"]
    assert facts["released as"][1] == "not released"
    assert "max_retention_increase' on suite 'lambada'" in facts["gate reasons"][1]


def test_an_older_release_without_loss_data_falls_back_to_its_training_run(
        pair: Pair, compare: Compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _roots(tmp_path).items():
        monkeypatch.setenv(name, value)
    old = make_run(tmp_path, "old")  # no loss data recorded: released without it
    assert old.release().returncode == 0
    (old.train / "loss_data.jsonl").write_text('{"loss": 3.0}\n{"loss": 2.5}\n')
    code, out, err = compare(A, f"{PROFILE}/r0001", "--png", str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c.png").is_file()
    assert "the release has no loss_data.jsonl (released before it was included); using the " \
           f"training run's {old.train / 'loss_data.jsonl'}" in err
    (old.train / "loss_data.jsonl").unlink()
    code, out, err = compare(A, f"{PROFILE}/r0001", "--png", str(tmp_path / "d.png"))
    assert code == 0 and "is gone too: no curve is drawn" in err
    assert "warning: no loss curves drawn: neither A nor B has loss data" in err
    assert out.rstrip().endswith("loss curves: not drawn (neither side has loss data)")
    assert not (tmp_path / "d.png").exists()


@pytest.mark.parametrize(("name", "code", "message"), [
    ("../r0001", 3, "names no release or run:\n  name: not two plain segments"),
    ("smoke-cpu/../../etc", 3, "'..' is never part of a name"),
    (f"{DAG}/..", 3, "path: no folder rwkv7_smoke_cpu/.."),
    ("smoke-cpu/r0042", 3, "releases of smoke-cpu: r0001, r0002; list them with `peftflow "
                           "releases list`"),
    ("nodag/manual__x", 3, "no runs of DAG nodag; DAGs with runs: rwkv7_smoke_cpu"),
    (f"{DAG}/manual__nope", 3, f"runs of {DAG}: manual__2026-11-27T12_00_00, "),
    ("", 2, "not a name of a release or run"),
    ("smoke-cpu/r\x1b[2J", 2, "'smoke-cpu/r\\x1b[2J': not a name"),
])
def test_a_name_that_matches_nothing_is_a_located_error(
        compare: Compare, name: str, code: int, message: str) -> None:
    got, out, err = compare(name, A)
    assert (got, out) == (code, "")
    assert err.startswith("error: ") and message in err, err


def test_a_hostile_name_run_as_a_user_runs_it_prints_no_traceback(pair: Pair) -> None:
    import os

    done = _cli(dict(os.environ), "compare", "../../../../../../etc/passwd", A)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ../../../../../../etc/passwd: is a file, neither a "
                                  "release nor a run;")
    assert "Traceback" not in done.stderr


def test_a_folder_that_is_no_run_or_release_is_refused_with_what_to_pass(
        pair: Pair, compare: Compare, tmp_path: Path) -> None:
    code, _, err = compare(str(tmp_path), A)
    assert code == 2 and "neither a release nor a run; pass a release folder (" in err
    code, _, err = compare(str(pair.a.evaluate), A)  # a stage folder: its run is meant
    assert code == 2 and err.rstrip().endswith(f", e.g. {pair.a.work}")


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "metrics.json is not valid JSON ("),
    (None, "$.suites.pydoc_domain.adapted_loss: nan is not a finite number"),
])
def test_metrics_that_are_not_json_or_hold_nan_are_refused_where_they_are(
        pair: Pair, compare: Compare, tmp_path: Path, text: str | None, message: str) -> None:
    broken = make_run(pair.tmp, f"artifacts/{DAG}/manual__broken-{bool(text)}", seed=6)
    metrics = broken.evaluate / "metrics.json"
    if text is None:  # what json.dumps writes for a diverged loss
        doc = json.loads(metrics.read_text())
        doc["suites"]["pydoc_domain"]["adapted_loss"] = float("nan")
        text = json.dumps(doc)
    metrics.write_text(text)
    code, out, err = compare(A, str(broken.work), "--png", str(tmp_path / "c.png"))
    assert (code, out) == (5, "")
    assert err.startswith(f"error: {metrics}") and message in err, err
    assert "rerun evaluate_adapter" in err


def test_a_missing_or_broken_loss_file_is_a_warning_and_the_other_curve_is_drawn(
        pair: Pair, compare: Compare, tmp_path: Path) -> None:
    bare = make_run(pair.tmp, f"artifacts/{DAG}/manual__bare", seed=7)
    code, _, err = compare(A, str(bare.work), "--png", str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c.png").is_file()
    assert f"{bare.train / 'loss_data.jsonl'}: not found (train_adapter has not written it)" \
        in err
    (bare.train / "loss_data.jsonl").write_text('garbage\n{"loss": 1.0}\n')
    code, _, err = compare(A, str(bare.work), "--png", str(tmp_path / "d.png"))
    assert code == 0
    assert f"{bare.train / 'loss_data.jsonl'}:1: not a JSON object with a `loss`" in err


def test_a_name_that_means_a_release_and_a_run_must_say_which(
        compare: Compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    (tmp_path / "artifacts" / PROFILE / "r0001" / "evaluate_adapter").mkdir(parents=True)
    code, _, err = compare(A, B)
    assert code == 2 and f"'{A}' is ambiguous: it names the release " in err
    assert f"write release:{A} or run:{A}" in err
    code, out, _ = compare(f"release:{A}", B, "--png", str(tmp_path / "c.png"))
    assert code == 0 and out.startswith(f"A  release  {A}")


def test_the_default_png_is_named_after_both_sides_in_the_current_folder(
        compare: Compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = compare(A, B)
    png = tmp_path / "compare-smoke-cpu_r0001-vs-smoke-cpu_r0002.png"
    assert code == 0 and png.is_file()
    assert f"loss curves: {png}" in out


def test_a_png_path_that_cannot_be_written_is_an_error(compare: Compare, tmp_path: Path) -> None:
    code, _, err = compare(A, B, "--png", str(tmp_path))  # a folder
    assert code == 2 and f"error: {tmp_path}: cannot write the PNG (" in err


def test_the_command_module_imports_no_plotting_or_torch() -> None:
    code = "import sys, peftflow.cli.compare; print(sorted({'matplotlib', 'torch'} & " \
           "{m.split('.')[0] for m in sys.modules}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
