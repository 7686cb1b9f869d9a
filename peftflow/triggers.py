"""Starting runs from outside Airflow: the asset event of a newly registered dataset version.

Why the REST API (POST /api/v2/assets/events) and not a producer task with outlets: the event
is emitted by the act of registering, which happens in a shell, not in a DAG. A producer DAG
would need a run (and a scheduler round trip) just to say "this file now exists", and its
outlets cannot carry which version was registered. The REST call is Airflow's public,
authenticated way to record an external asset change; the event's `extra` carries the
manifest path, name and version, which the retrain DAG reads from its triggering event.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from peftflow import audit, expand, settings, validate
from peftflow.airflow_api import Client
from peftflow.errors import PeftflowError
from peftflow.hashing import sha256_file


def event_extra(manifest_path: Path, name: str, version: str) -> dict[str, Any]:
    return {"manifest": validate.display_path(manifest_path), "name": name, "version": version,
            "manifest_sha256": sha256_file(manifest_path)}


def announce_dataset(manifest_path: Path, name: str, version: str,
                     client: Client | None = None) -> bool:
    """Emit the asset event of a new dataset version; False (with advice) when impossible."""
    uri = expand.dataset_asset_uri(name)
    extra = event_extra(manifest_path, name, version)
    try:
        (client or Client.from_settings()).asset_event(uri, extra)
    except PeftflowError as exc:
        print(f"warning: {name}@{version} is registered, but no asset event was emitted: {exc}"
              f"\n  when Airflow is up, emit it with: peftflow dataset announce {manifest_path}",
              file=sys.stderr)
        return False
    audit.append_event({"event": "dataset_registered", "actor": settings.current_user(),
                        "outcome": "announced", "details": {"asset": uri, **extra}})
    print(f"asset event emitted on {uri} (version {version}): retrain DAGs scheduled on it "
          "will start", file=sys.stderr)
    return True
