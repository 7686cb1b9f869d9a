"""Datasets: versioned manifests, quality rules, and JSONL -> RWKV binidx preparation.

Public API for other areas (the retrain-on-new-dataset trigger among them):
`register_dataset`, `load_manifest`, `Manifest`. Kept import-light: worker processes
import submodules of this package.
"""

from __future__ import annotations

from peftflow.dataset.manifest import DataFile, Manifest, load_manifest, register_dataset

__all__ = ["DataFile", "Manifest", "load_manifest", "register_dataset"]
