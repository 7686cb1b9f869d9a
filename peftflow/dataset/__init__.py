"""Datasets: versioned manifests, quality rules, and JSONL -> RWKV binidx preparation.

Public API for other areas (the retrain-on-new-dataset trigger among them):
`register_dataset`, `load_manifest`, `Manifest`, `DataFile`. Attributes load lazily so that
tokeniser worker processes, which import submodules of this package, stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DataFile", "Manifest", "load_manifest", "register_dataset"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from peftflow.dataset import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'peftflow.dataset' has no attribute {name!r}")
