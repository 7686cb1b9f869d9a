"""report.md: one sign convention, the perplexity note, plain-Markdown structure, its own chart."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_release import PROFILE, make_run  # the stage outputs a real release is built from

from peftflow.evaluate import chart
from peftflow.release import registry, report
from peftflow.stages import release as release_stage

CONVENTION = "Change is adapted/base - 1 of the mean per-token loss (nats); negative is better"


@dataclass(frozen=True)
class Released:
    folder: Path
    eval_folder: Path
    manifest: dict[str, Any]
    chart_titles: tuple[str, ...]


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Released]:
    """One release built in-process, recording the titles of the charts it drew."""
    tmp = tmp_path_factory.mktemp("report")
    titles: list[str] = []
    draw = chart.figure

    def spy(bars: Any, thresholds: Any, title: str) -> Any:
        titles.append(title)
        return draw(bars, thresholds, title)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFTFLOW_RELEASES_ROOT", str(tmp / "releases"))
        mp.setenv("PEFTFLOW_AUDIT_LOG", str(tmp / "audit.jsonl"))
        mp.setenv("PEFTFLOW_MODELS_ROOT", str(tmp / "models"))  # where make_run puts the model
        mp.setattr(chart, "figure", spy)
        run = make_run(tmp)
        assert release_stage.main(run.args()) == 0
        folder = run.releases / PROFILE / "r0001"
        manifest = json.loads((folder / registry.MANIFEST).read_text())
        yield Released(folder, run.evaluate, manifest, tuple(titles))


def test_the_release_redraws_its_eval_chart_titled_with_profile_and_version(
        released: Released) -> None:
    assert released.chart_titles == (f"{PROFILE} r0001",)
    drawn = (released.folder / "eval_chart.png").read_bytes()
    assert drawn[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn != (released.eval_folder / "eval_chart.png").read_bytes()
    assert "![Evaluation](eval_chart.png)" in (released.folder / report.REPORT).read_text()


def test_the_redrawn_chart_is_hashed_so_the_release_still_verifies(released: Released) -> None:
    release = registry.get_release(PROFILE, "r0001")
    assert registry.verify_release(release) == []
    assert "eval_chart.png" in released.manifest["files_sha256"]


def test_the_sign_convention_is_stated_once_and_the_gate_rules_use_it(
        released: Released) -> None:
    text = (released.folder / report.REPORT).read_text()
    assert text.count(CONVENTION) == 1
    assert "| pydoc_domain | domain | 37 | 4096 | 6.5 | 5.61 | 665.1 | 273.1 | -13.69 % |" in text
    assert "| min_domain_improvement | pydoc_domain | -13.69 % | change <= -1.00 % | pass |" \
        in text
    assert "| max_retention_increase | lambada | +1.29 % | change <= +5.00 % | pass |" in text
    # verdict.json's improvement (+0.1369 >= 0.01) would contradict the table's sign
    assert "0.1369" not in text and ">= 0.01" not in text


def test_perplexity_of_the_tiny_smoke_model_is_explained_in_one_line(
        released: Released) -> None:
    text = (released.folder / report.REPORT).read_text()
    (line,) = [line for line in text.splitlines() if "erplexity" in line]
    assert line.startswith("Perplexity is exp(loss)")
    assert "random 2-layer model over a 65,536-token vocabulary" in line
    assert "compare the change, not the absolute value" in line


@pytest.mark.parametrize(("rule", "measured", "required"), [
    ({"rule": "min_domain_improvement", "comparison": ">=", "threshold": 0.01, "value": 0.03},
     "-3.00 %", "change <= -1.00 %"),
    ({"rule": "min_domain_improvement", "comparison": ">=", "threshold": 0.0, "value": -0.002},
     "+0.20 %", "change <= +0.00 %"),
    ({"rule": "max_retention_increase", "comparison": "<=", "threshold": 0.02, "value": 0.013},
     "+1.30 %", "change <= +2.00 %"),
    ({"rule": "no_regression_vs_release", "comparison": "<=", "threshold": 5.7, "value": 5.61},
     "adapted loss 5.61", "adapted loss <= 5.7 (released, plus tolerance)"),
    ({"rule": "suite_coverage", "comparison": ">=", "threshold": 1.0, "value": 0.0},
     "0 suites", ">= 1"),
    ({"rule": "some_future_rule", "comparison": "<=", "threshold": 3, "value": 2},
     "2", "<= 3"),
])
def test_each_gate_rule_is_phrased_in_the_report_sign(rule: dict[str, Any], measured: str,
                                                      required: str) -> None:
    row = report.gate_row({**rule, "suite": "s", "outcome": "pass"})
    assert (row.measured, row.required) == (measured, required)


def _overridden(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as if a failed retention rule had been overridden."""
    doc = copy.deepcopy(manifest)
    gate = doc["gate"]
    rule = next(r for r in gate["eval_rules"] if r["rule"] == "max_retention_increase")
    rule.update(threshold=0.001, outcome="fail")
    detail = ("evaluation rule 'max_retention_increase' on suite 'lambada': measured 0.0129, "
              "required <= 0.001")
    gate["checks"] = [*gate["checks"], {"check": "eval_rule:max_retention_increase:lambada",
                                        "outcome": "fail", "detail": detail},
                      {"check": "dataset_quality", "outcome": "fail", "detail": "too few docs"}]
    gate.update(overridden=True, reasons=[detail, "too few docs"],
                override={"actor": "alice", "reason": "known flaky suite"})
    return doc


def test_an_override_names_the_failed_rules_in_the_same_sign(released: Released) -> None:
    text = report.render(_overridden(released.manifest))
    quote = "\n".join(line for line in text.splitlines() if line.startswith(">"))
    assert "**Released by override** of alice: known flaky suite." in quote
    assert "max_retention_increase on suite lambada: measured +1.29 %, required change <= " \
           "+0.10 %" in quote
    assert "too few docs" in quote and "required <= 0.001" not in quote
    assert "`dataset_quality`: **fail**: too few docs" in text
    assert "eval_rule:" not in text  # restated in the gate table, in the report's sign


def _unseparated_blocks(text: str) -> list[str]:
    """Lists and tables that start right under a line of another block (no blank line)."""
    def kind(line: str) -> str:
        if re.match(r"\s*([-*+]|\d+[.)])\s", line):
            return "list"
        if line.startswith("|"):
            return "table"
        return "blank" if not line.strip() else "other"

    lines = text.splitlines()
    return [f"line {i + 1}: {line!r} after {before!r}"
            for i, (before, line) in enumerate(zip(["", *lines], lines, strict=False))
            if kind(line) in ("list", "table") and kind(before) not in ("blank", kind(line))]


@pytest.mark.parametrize("variant", ["released", "overridden"])
def test_every_list_and_table_is_preceded_by_a_blank_line(released: Released,
                                                          variant: str) -> None:
    doc = released.manifest if variant == "released" else _overridden(released.manifest)
    text = report.render(doc)
    assert _unseparated_blocks(text) == []
    assert "\n\n\n" not in text  # and no runs of blank lines from template tags
    assert text.startswith("# Release ") and text.endswith("`\n")


def test_the_blank_line_rule_catches_a_list_glued_to_a_paragraph() -> None:
    assert _unseparated_blocks("Checks:\n- a\n- b\n\n| x |\n| --- |\n") == \
        ["line 2: '- a' after 'Checks:'"]


@pytest.mark.parametrize("variant", ["released", "overridden"])
def test_a_commonmark_renderer_turns_lists_and_tables_into_html(released: Released,
                                                                variant: str) -> None:
    markdown_it = pytest.importorskip("markdown_it")  # comes with rich; not a dependency
    doc = released.manifest if variant == "released" else _overridden(released.manifest)
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(report.render(doc))
    assert html.count("<table>") == 4  # summary, metrics, gate rules, lineage
    assert html.count("<ul>") == 2  # other gate checks, files in this folder
    assert html.count("<li>") == len(doc["files_sha256"]) + len(
        [c for c in doc["gate"]["checks"] if not c["check"].startswith("eval_rule:")])
    assert '<img src="eval_chart.png" alt="Evaluation" />' in html
    assert "<h2>Gate rules</h2>" in html
    assert not [line for line in html.splitlines() if line.startswith(("|", "- "))]
    if variant == "overridden":
        assert "<blockquote>" in html and html.index("</blockquote>") < html.index("<h2>")
