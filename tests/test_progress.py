"""Progress lines: counted from 1, short and parseable, and an ETA that warm-up cannot inflate."""

from __future__ import annotations

import io
import random
import re
import subprocess
from pathlib import Path

import pytest

from peftflow.progress import Progress, Rate, duration

ETA = re.compile(r"ETA (\?|\d+s|\d+m\d\ds|\d+h\d\dm)$")


class Clock:
    """A synthetic monotonic clock: tests say how long each step takes."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _parse(text: str) -> float:
    """Seconds from duration()'s format."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match and text, text
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _run(step_times: list[float], clock: Clock, rate: Rate) -> list[tuple[int, float, float]]:
    """Feed the steps; after each: (steps done, ETA shown in seconds, true time left)."""
    seen = []
    for done, seconds in enumerate(step_times, start=1):
        clock.now += seconds
        rate.update(done)
        left = rate.remaining()
        seen.append((done, -1.0 if left is None else left, sum(step_times[done:])))
    return seen


@pytest.mark.parametrize("first", [30.0, 300.0])
def test_eta_after_a_slow_first_step_stays_within_2x_once_10_percent_is_done(
        first: float) -> None:
    clock = Clock()
    steps = [first] + [1.0] * 199
    rate = Rate(len(steps), clock=clock)
    for done, shown, truth in _run(steps, clock, rate):
        if done >= len(steps) // 10 and truth > 0:
            assert truth / 2 <= shown <= truth * 2, (done, shown, truth)


def test_eta_follows_noisy_steps_within_2x() -> None:
    clock, rng = Clock(), random.Random(7)
    steps = [45.0] + [rng.uniform(0.5, 1.5) for _ in range(99)]
    rate = Rate(len(steps), clock=clock)
    for done, shown, truth in _run(steps, clock, rate):
        if done >= 10 and truth > 5:
            assert truth / 2 <= shown <= truth * 2, (done, shown, truth)


def test_eta_of_uneven_chunks_counts_work_not_updates() -> None:
    """prepare_dataset reports bytes per chunk; a chunk of twice the bytes takes twice as long."""
    clock, rng = Clock(), random.Random(3)
    sizes = [rng.choice([1_000_000, 4_000_000]) for _ in range(60)]
    total = sum(sizes)
    rate = Rate(total, clock=clock)
    done = 0
    clock.now += 20.0  # worker start-up before the first chunk lands
    for i, size in enumerate(sizes):
        if i:
            clock.now += size / 10_000_000  # 10 MB/s
        done += size
        rate.update(done)
        truth = (total - done) / 10_000_000
        if done >= total / 10 and truth > 0:
            left = rate.remaining()
            assert left is not None and truth / 2 <= left <= truth * 2, (i, left, truth)


def test_eta_is_unknown_until_a_second_step_and_zero_at_the_end() -> None:
    clock = Clock()
    rate = Rate(3, clock=clock)
    clock.now += 10
    rate.update(1)
    assert rate.eta() == "?"
    assert rate.per_second() == pytest.approx(0.1)  # throughput since the start meanwhile
    clock.now += 1
    rate.update(2)
    assert rate.eta() == "1s" and rate.per_second() == pytest.approx(1.0)
    clock.now += 1
    rate.update(3)
    assert rate.eta() == "0s"


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.2, "0s"), (42.4, "42s"), (59.6, "1m00s"), (425, "7m05s"), (7380, "2h03m"),
])
def test_durations_are_short_and_parseable(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown
    assert abs(_parse(shown) - seconds) <= 60


def test_progress_prints_at_most_every_interval_on_stderr_style_stream() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = Progress("train_adapter", every=5.0, stream=stream, clock=clock)
    for _ in range(12):
        clock.now += 1
        progress.maybe(lambda elapsed: f"{elapsed:.0f}s in")
    progress.maybe(lambda elapsed: "done", force=True)
    assert stream.getvalue().splitlines() == ["[train_adapter] 5s in", "[train_adapter] 10s in",
                                              "[train_adapter] done"]


def test_training_progress_counts_epochs_and_steps_from_one(
        smoke_run: tuple[subprocess.CompletedProcess[str], Path, float]) -> None:
    result, _, _ = smoke_run
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if " step " in line]
    assert lines[0].startswith("[train_adapter] epoch 1/2 step 1/25 loss "), lines[0]
    assert lines[-1].startswith("[train_adapter] epoch 2/2 step 25/25 loss "), lines[-1]
    assert not any(re.search(r"epoch 0/|step 0/", line) for line in lines)
    for line in lines:
        assert re.search(r"tokens/s \d+ ", line) and ETA.search(line), line
    assert lines[-1].endswith("ETA 0s")
