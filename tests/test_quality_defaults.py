"""The dataset quality defaults: one Python constant, repeated in the DAG spec schema for
editors, and the same everywhere a default is offered (spec, stage option, rules)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from peftflow.dataset.defaults import DEFAULT_MAX_DUPLICATE_FRACTION
from peftflow.dataset.quality import Thresholds
from peftflow.spec.model import QualityRules
from peftflow.stages import prepare

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "dag_spec.schema.json"


def _schema_quality() -> dict[str, Any]:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    quality: dict[str, Any] = schema["properties"]["gate"]["properties"]["dataset_quality"]
    return dict(quality["properties"])


def test_the_schema_default_of_max_duplicate_fraction_is_the_python_constant() -> None:
    assert _schema_quality()["max_duplicate_fraction"]["default"] == DEFAULT_MAX_DUPLICATE_FRACTION


def test_the_spec_rules_and_the_stage_option_default_to_the_constant() -> None:
    args = prepare.build_parser().parse_args(["--manifest", "m", "--out", "o"])
    assert QualityRules().max_duplicate_fraction == DEFAULT_MAX_DUPLICATE_FRACTION
    assert Thresholds().max_duplicate_fraction == DEFAULT_MAX_DUPLICATE_FRACTION
    assert args.max_duplicate_fraction == DEFAULT_MAX_DUPLICATE_FRACTION


def test_every_schema_default_of_dataset_quality_is_the_spec_models_default() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(QualityRules)}
    schema = {name: prop["default"] for name, prop in _schema_quality().items()}
    assert schema == defaults
