"""eval_chart.png and loss_curve.png: asserted on the matplotlib figures, then on the files."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftflow.evaluate import chart
from peftflow.evaluate.verdict import Thresholds
from peftflow.train import plots

THRESHOLDS = Thresholds(min_domain_improvement=0.01, max_retention_increase=0.02)
BARS = [
    chart.SuiteChange("pydoc_domain", "domain", -0.03, (-0.035, -0.025), passed=True),
    chart.SuiteChange("lambada", "retention", 0.012, (0.004, 0.021), passed=True),
    chart.SuiteChange("wiki", "retention", 0.027, (0.015, 0.04), passed=False),
]


def _axes(bars: list[chart.SuiteChange] = BARS, thresholds: Thresholds = THRESHOLDS,
          title: str = "smoke-cpu r0003"):  # type: ignore[no-untyped-def]
    fig = chart.figure(bars, thresholds, title)
    (ax,) = fig.axes
    return ax


def test_bars_are_the_change_of_loss_per_suite_in_percent() -> None:
    ax = _axes()
    heights = [round(p.get_height(), 6) for p in ax.patches]
    assert heights == [-3.0, 1.2, 2.7]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["pydoc_domain\n(domain)", "lambada\n(retention)", "wiki\n(retention)"]
    assert "negative is better" in ax.get_ylabel()


def test_error_bars_span_the_95_percent_ci_of_each_suite() -> None:
    ax = _axes()
    (errorbars,) = [c for c in ax.containers if c.get_label().startswith("95 % CI")]
    _, _, (segments,) = errorbars.lines
    spans = [(round(s[0][1], 6), round(s[1][1], 6)) for s in segments.get_segments()]
    assert spans == [(-3.5, -2.5), (0.4, 2.1), (1.5, 4.0)]


def test_a_ci_that_misses_its_point_estimate_is_drawn_without_negative_lengths() -> None:
    odd = [chart.SuiteChange("d", "domain", -0.02, (-0.01, -0.005))]
    ax = _axes(odd)
    (errorbars,) = [c for c in ax.containers if c.get_label().startswith("95 % CI")]
    (segment,) = errorbars.lines[2][0].get_segments()
    assert (segment[0][1], segment[1][1]) == pytest.approx((-2.0, -0.5))


def test_the_y_axis_makes_a_three_percent_change_visible_and_shows_every_ci_and_gate() -> None:
    low, high = _axes().get_ylim()
    assert low < -3.5 and high > 4.0  # the lowest CI end and the highest one fit
    assert high - low < 10  # a few percent fill the axis instead of a sliver of 0..loss
    assert 3.0 / (high - low) > 0.3


def test_tiny_changes_do_not_blow_noise_up_to_the_full_axis() -> None:
    flat = [chart.SuiteChange("d", "domain", -0.0001, (-0.0002, 0.0))]
    low, high = _axes(flat, Thresholds(0.0, 0.05)).get_ylim()
    assert high - low >= chart.MIN_SPAN_PCT


def test_each_gate_threshold_is_a_labelled_horizontal_line_in_the_sign_of_the_bars() -> None:
    lines = {ln.get_label(): ln.get_ydata() for ln in _axes().get_lines()
             if "gate" in ln.get_label()}
    assert {label: list(y) for label, y in lines.items()} == {
        "domain gate: change <= -1.0 %": [-1.0, -1.0],
        "retention gate: change <= +2.0 %": [2.0, 2.0],
    }


def test_a_threshold_is_drawn_only_for_a_kind_of_suite_on_the_chart() -> None:
    domain_only = [BARS[0]]
    labels = [ln.get_label() for ln in _axes(domain_only).get_lines()]
    assert any(label.startswith("domain gate") for label in labels)
    assert not any(label.startswith("retention gate") for label in labels)


def test_a_zero_domain_threshold_is_labelled_without_a_minus_sign() -> None:
    (line,) = chart.gate_lines([BARS[0]], Thresholds(0.0, 0.05))
    assert (line.label, line.y) == ("domain gate: change <= +0.0 %", 0.0)


def test_bars_are_coloured_and_marked_by_the_suite_outcome() -> None:
    from matplotlib.colors import to_hex

    ax = _axes([*BARS, chart.SuiteChange("extra", "retention", 0.0, (0.0, 0.0))])
    colors = [to_hex(p.get_facecolor()) for p in ax.patches]
    assert colors == [chart.PASS_COLOR, chart.PASS_COLOR, chart.FAIL_COLOR, chart.UNJUDGED_COLOR]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["-3.00 % pass", "+1.20 % pass", "+2.70 % FAIL", "+0.00 %"]


def test_the_title_is_the_one_given() -> None:
    assert _axes(title="smoke-cpu candidate (run manual__1)").get_title() == \
        "smoke-cpu candidate (run manual__1)"


def test_changes_come_from_metrics_and_the_verdict_rules_of_each_suite() -> None:
    metrics = {"suites": {
        "pydoc_domain": {"kind": "domain", "relative_change": -0.03, "ci95": [-0.035, -0.025]},
        "lambada": {"kind": "retention", "relative_change": 0.03, "ci95": [0.01, 0.05]},
        "new": {"kind": "retention", "relative_change": 0.0, "ci95": [0.0, 0.0]},
    }}
    verdict = {
        "thresholds": {"min_domain_improvement": 0.01, "max_retention_increase": 0.02,
                       "baseline_tolerance": None},
        "rules": [
            {"rule": "min_domain_improvement", "suite": "pydoc_domain", "outcome": "pass"},
            {"rule": "max_retention_increase", "suite": "lambada", "outcome": "pass"},
            {"rule": "no_regression_vs_release", "suite": "lambada", "outcome": "fail"},
            {"rule": "suite_coverage", "suite": None, "outcome": "pass"},
        ],
    }
    bars = chart.changes(metrics, verdict)
    assert [(b.name, b.kind, b.change, b.ci95, b.passed) for b in bars] == [
        ("pydoc_domain", "domain", -0.03, (-0.035, -0.025), True),
        ("lambada", "retention", 0.03, (0.01, 0.05), False),  # any failed rule fails the suite
        ("new", "retention", 0.0, (0.0, 0.0), None),
    ]
    assert chart.thresholds_of(verdict) == THRESHOLDS


def test_render_writes_a_png_atomically(tmp_path: Path) -> None:
    out = chart.render(tmp_path / "eval_chart.png", BARS, THRESHOLDS, "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["eval_chart.png"]


def _records(steps: int) -> list[dict[str, float]]:
    return [{"loss": 10.0 - 0.05 * i, "t_cost": 2.0, "kt_s": 8.0} for i in range(steps)]


def _epoch_texts(ax) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    return [(t.get_text().strip(), t.get_position()[0]) for t in ax.texts
            if t.get_text().strip().startswith("epoch")]


def test_the_loss_curve_labels_each_epoch_counted_from_one_at_its_boundary() -> None:
    (ax,) = plots.loss_figure(_records(60), "smoke", steps_per_epoch=20).axes
    assert _epoch_texts(ax) == [("epoch 1", 0.5), ("epoch 2", 20.5), ("epoch 3", 40.5)]
    boundaries = [ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert boundaries == [20.5, 40.5]


def test_a_partly_trained_last_epoch_is_labelled_too() -> None:
    (ax,) = plots.loss_figure(_records(45), "smoke", steps_per_epoch=20).axes
    assert [label for label, _ in _epoch_texts(ax)] == ["epoch 1", "epoch 2", "epoch 3"]


def test_a_resume_point_names_the_finished_epoch_in_the_same_counting() -> None:
    records = _records(60)
    records[40]["resumed_from_epoch"] = 1  # 0-based: the second epoch had finished
    (ax,) = plots.loss_figure(records, "smoke", steps_per_epoch=20).axes
    assert "resumed after epoch 2" in [t.get_text() for t in ax.texts]


def test_loss_curve_writes_a_png_atomically(tmp_path: Path) -> None:
    out = plots.loss_curve(_records(10), tmp_path / "loss_curve.png", "smoke", 5)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["loss_curve.png"]
