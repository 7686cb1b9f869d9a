"""The files a side of a comparison is read from: metrics.json, loss_data.jsonl, the profile.

Unusable metrics are an error (the comparison is about them); a loss file or a profile that
cannot be read is a warning appended to `warnings`, and that part is left out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow.errors import IntegrityError, MissingInputError, PeftflowError, SpecError
from peftflow.store import schemas, yamlmarks
from peftflow.store.hashing import sha256_file


@dataclass(frozen=True)
class Suite:
    """One suite of a metrics.json, as compared."""

    name: str
    kind: str  # domain | retention
    base_loss: float
    adapted_loss: float
    relative_change: float  # adapted/base - 1; negative is better
    ci95: tuple[float, float]  # bootstrap interval of relative_change
    data_sha256: str


@dataclass(frozen=True)
class ProfileRecord:
    """The training profile of a side: what was recorded, and what could be read."""

    name: str | None
    sha256: str | None  # as recorded by the side
    read_from: str | None  # the file the keys were read from
    recorded_copy: bool  # True: the release's own copy, not a file that may have changed
    values: Mapping[str, Any] | None  # flattened dotted keys; None when unreadable


def _nonfinite(path: str, tree: Any) -> tuple[str, float] | None:
    """JSON path and value of the first NaN or infinity in `tree` (Python's json reads them)."""
    if isinstance(tree, float) and not math.isfinite(tree):
        return path, tree
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) \
        if isinstance(tree, list) else ()
    return next((found for key, value in items
                 if (found := _nonfinite(yamlmarks.child_path(path, key), value))), None)


def read_metrics(path: Path, missing: str) -> tuple[dict[str, Any], tuple[Suite, ...]]:
    """metrics.json as evaluate_adapter writes it; a located error for anything else.
    `missing` says what an absent file means for this side and what to do."""
    if not path.exists():
        raise MissingInputError(f"{path}: metrics.json not found; {missing}")
    try:
        doc = json.loads(yamlmarks.read_limited(str(path), str(path)).decode("utf-8"))
        yamlmarks.check_data(doc, str(path))
    except SpecError as exc:
        raise IntegrityError(f"{exc}\n{path}: not usable evaluation metrics; rerun "
                             "evaluate_adapter") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise IntegrityError(f"{path}: metrics.json is not valid JSON ({exc}); rerun "
                             "evaluate_adapter") from None
    bad = _nonfinite("$", doc)
    problems = [f"{path}: {bad[0]}: {bad[1]} is not a finite number"] if bad else \
        [str(p) for p in schemas.problems(doc, "eval_metrics", str(path))]
    if problems:
        raise IntegrityError(f"{problems[0]}\n{path}: not valid evaluation metrics "
                             "(schemas/eval_metrics.schema.json); rerun evaluate_adapter")
    suites = tuple(Suite(name, s["kind"], float(s["base_loss"]), float(s["adapted_loss"]),
                         float(s["relative_change"]),
                         (float(s["ci95"][0]), float(s["ci95"][1])), s["data_sha256"])
                   for name, s in doc["suites"].items())
    return doc, suites


def read_losses(path: Path, warnings: list[str]) -> tuple[float, ...]:
    """Per-step `loss` of a loss_data.jsonl; unreadable lines are skipped with a warning."""
    if not path.is_file():
        warnings.append(f"{path}: not a file; its curve is not drawn")
        return ()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        warnings.append(f"{path}: cannot read the loss data ({exc}); its curve is not drawn")
        return ()
    losses: list[float] = []
    for number, line in enumerate(lines, start=1):
        try:
            loss = json.loads(line)["loss"] if line.strip() else None
        except (ValueError, TypeError, KeyError, IndexError):
            if number < len(lines):  # a torn last line is a killed writer, not a bad file
                warnings.append(f"{path}:{number}: not a JSON object with a `loss`; the curve "
                                "stops before this line")
            break
        if isinstance(loss, int | float) and not isinstance(loss, bool):
            losses.append(float(loss))
    nonfinite = sum(not math.isfinite(v) for v in losses)
    if nonfinite:
        warnings.append(f"{path}: {nonfinite} of {len(losses)} steps have a non-finite loss "
                        "(the training diverged?); they are gaps in the curve")
    if not losses:
        warnings.append(f"{path}: no loss values; its curve is not drawn")
    return tuple(losses)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def read_profile(name: str | None, recorded: str | None, copy: Path | None,
                 original: str | None, warnings: list[str]) -> ProfileRecord:
    """The profile's keys from the recorded copy, else from the file it was read from then."""
    if copy is not None and not copy.is_file():
        copy = None  # the release lost its copy (verify reports it); the original may do
    path = copy if copy is not None else Path(original) if original else None
    if path is None or not path.is_file():
        why = "no training profile is recorded" if path is None else f"{path}: not found"
        warnings.append(f"{why}; its config differences cannot be shown")
        return ProfileRecord(name, recorded, None, False, None)
    now = sha256_file(path)
    if copy is None and recorded and now != recorded:
        warnings.append(f"{path}: changed since it was recorded (sha256 {recorded[:12]}..., "
                        f"now {now[:12]}...); the config differences show the file as it is "
                        "now")
    try:
        data = yamlmarks.load_file(str(path)).data
    except PeftflowError as exc:
        warnings.append(f"{exc}; its config differences cannot be shown")
        return ProfileRecord(name, recorded, str(path), copy is not None, None)
    if not isinstance(data, Mapping):
        warnings.append(f"{path}: not a mapping of profile keys; its config differences "
                        "cannot be shown")
        return ProfileRecord(name, recorded, str(path), copy is not None, None)
    return ProfileRecord(name, recorded, str(path), copy is not None, flatten(data))
