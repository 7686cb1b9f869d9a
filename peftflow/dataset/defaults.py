"""The dataset rules' defaults, in a module of their own: the spec model reads them on every
DAG parse, and the rules module (dataclasses, reports) costs more to import than a constant."""

from __future__ import annotations

# Share of exact-duplicate records tolerated. The one default: the spec's
# gate.dataset_quality, the rules and prepare_dataset's option read it, and
# schemas/dag_spec.schema.json repeats it for editors (a test keeps the two equal).
DEFAULT_MAX_DUPLICATE_FRACTION = 0.05
