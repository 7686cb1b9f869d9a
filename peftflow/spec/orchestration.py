"""The exclusive orchestration profile (configs/orchestration.yaml): airflow or mlops-lite."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from peftflow import settings
from peftflow.errors import PolicyError
from peftflow.store import schemas, yamlmarks


class OrchestrationProfile(enum.StrEnum):
    AIRFLOW = "airflow"
    MLOPS_LITE = "mlops-lite"


@dataclass(frozen=True)
class OrchestrationConfig:
    active: OrchestrationProfile
    path: Path
    switched_at: str | None = None
    switched_by: str | None = None


def load(path: Path | None = None) -> OrchestrationConfig:
    path = path or settings.get().orchestration_config
    marked = yamlmarks.load_file(str(path))
    schemas.check(marked, "orchestration", str(path))
    data = marked.data
    return OrchestrationConfig(
        active=OrchestrationProfile(data["active_profile"]),
        path=path,
        switched_at=data.get("switched_at"),
        switched_by=data.get("switched_by"),
    )


def require_airflow_active(action: str) -> None:
    """Raise PolicyError unless the airflow profile is the active one."""
    config = load()
    if config.active is not OrchestrationProfile.AIRFLOW:
        raise PolicyError(
            f"{action} refused: the active orchestration profile is {config.active.value!r} "
            f"({config.path}), so Airflow must not run training. Run the mlops-lite runner, or "
            "switch with `./setup_airflow.sh --switch-profile airflow`."
        )
