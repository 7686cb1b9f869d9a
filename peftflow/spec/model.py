"""DAG specs (dag_specs/*.yaml) as typed, frozen objects, built only from validated data."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftflow.dataset.defaults import DEFAULT_MAX_DUPLICATE_FRACTION
from peftflow.spec.orchestration import OrchestrationProfile
from peftflow.store.paths import resolve_ref


class Stage(enum.StrEnum):
    """The names of the built-in stages; what each one is lives in peftflow.run.stages."""

    PREPARE = "prepare_dataset"
    TRAIN = "train_adapter"
    EVALUATE = "evaluate_adapter"
    RELEASE = "release_adapter"


GPU_POOL = "gpu"
# Facts validation derives from the files a spec references (not written by the user: the
# schema refuses unknown keys), kept with the spec's data so a cached spec has them too.
DERIVED_KEY = "__derived__"
DEFAULT_QUEUE = "gpu"  # the Edge queue of GPU tasks when the profile names none
DEVICE_KEYS = ("devices", "eval_devices")  # the profile's runtime keys that count GPUs
# Fixed, so a cron DAG never backfills from "now - something"; validation counts the backlog
# from it and the expansion writes it into every DAG.
START_DATE = "2026-01-01"


class SpecKind(enum.StrEnum):
    PROFILE = "profile"
    RETRAIN = "retrain_on_new_dataset"


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 1
    retry_delay_s: int = 30
    exponential_backoff: bool = False
    max_retry_delay_s: int = 3600


@dataclass(frozen=True)
class QualityRules:
    max_invalid_records: int = 0
    max_duplicate_fraction: float = DEFAULT_MAX_DUPLICATE_FRACTION
    max_over_ctx_fraction: float = 0.5
    allow_warn: bool = True


@dataclass(frozen=True)
class Gate:
    min_domain_improvement: float
    max_retention_increase: float
    quality: QualityRules
    compare_to_release: bool
    release_tolerance: float
    allow_override: bool


@dataclass(frozen=True)
class Schedule:
    enabled: bool = False
    cron: str | None = None
    timezone: str = "UTC"
    catchup: bool = False


@dataclass(frozen=True)
class TriggerPolicy:
    allowed_profiles: tuple[str, ...] = ()
    allowed_manifests: tuple[str, ...] = ()
    note_max_length: int = 500


class NotifyEvent(enum.StrEnum):
    """What a notification channel can be told. A run sends at most one outcome message."""

    RUN_FAILED = "run_failed"
    RETRIES_EXHAUSTED = "retries_exhausted"  # a run_failed whose stage used all its tries
    RELEASE_BLOCKED = "release_blocked"
    RELEASED = "released"
    TRAINING_OVERDUE = "training_overdue"


class ChannelType(enum.StrEnum):
    EMAIL = "email"  # apache-airflow-providers-smtp's SmtpNotifier
    SLACK = "slack"  # apache-airflow-providers-slack's SlackWebhookNotifier


@dataclass(frozen=True)
class NotifyChannel:
    type: ChannelType
    connection: str  # an Airflow connection id: the credentials live there, never in a spec
    events: frozenset[NotifyEvent]
    to: tuple[str, ...] = ()

    def wants(self, event: NotifyEvent) -> bool:
        if event in self.events:
            return True
        # a failure that used up its retries is still a failed run
        return event is NotifyEvent.RETRIES_EXHAUSTED and NotifyEvent.RUN_FAILED in self.events


@dataclass(frozen=True)
class Notify:
    channels: tuple[NotifyChannel, ...] = ()
    training_overdue_after_s: int | None = None


def _notify(data: dict[str, Any] | None) -> Notify:
    if not data:
        return Notify()
    channels = tuple(
        NotifyChannel(type=ChannelType(c["type"]), connection=c["connection"],
                      events=frozenset(NotifyEvent(e) for e in c.get("events", list(NotifyEvent))),
                      to=tuple(c.get("to", ())))
        for c in data["channels"])
    overdue = data.get("training_overdue_after_s")
    return Notify(channels, None if overdue is None else int(overdue))


@dataclass(frozen=True)
class Spec:
    dag_id: str
    kind: SpecKind
    description: str
    owner: str
    tags: tuple[str, ...]
    orchestration_profile: OrchestrationProfile
    training_profile: str  # relative to the project root
    dataset_manifest: str
    dataset_name: str | None
    eval_suites: tuple[str, ...]
    gate: Gate
    retries: dict[str, RetryPolicy]  # per built-in stage, and "default" for any other
    timeouts: dict[str, int]
    schedule: Schedule
    max_active_runs: int
    start_paused: bool  # resolved: the spec's value or the default of its kind
    trigger: TriggerPolicy
    path: Path  # the spec file
    sha256: str
    # Every file reference resolved once, at validation: name as written -> absolute path.
    # A trigger may choose any allowed profile or manifest, so each allowed one is here.
    profile_paths: dict[str, Path] = field(default_factory=dict)
    manifest_paths: dict[str, Path] = field(default_factory=dict)
    suite_paths: tuple[Path, ...] = ()
    # The most GPUs any allowed profile asks for, per runtime key ("devices" for training,
    # "eval_devices" for evaluation): a GPU task's pool slots, fixed when the DAG is parsed.
    max_devices: dict[str, int] = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE  # the Edge queue of the GPU tasks (its profile's runtime.queue)
    notify: Notify = field(default_factory=Notify)
    extra: dict[str, Any] = field(default_factory=dict)

    def retry_policy(self, stage: str) -> RetryPolicy:
        return self.retries.get(stage) or self.retries[DEFAULT_POLICY]


def default_start_paused(kind: SpecKind, schedule: Schedule) -> bool:
    """Paused only where unpausing would start work by itself: a cron DAG.

    A retrain DAG must be unpaused to hear dataset events (Airflow drops an asset event for a
    paused consumer), and a manual DAG only runs when someone triggers it, which should work
    the first time.
    """
    return kind is SpecKind.PROFILE and schedule.enabled


DEFAULT_POLICY = "default"


def _retries(data: dict[str, Any]) -> dict[str, RetryPolicy]:
    base = RetryPolicy(**data.get(DEFAULT_POLICY, {}))
    policies: dict[str, RetryPolicy] = {DEFAULT_POLICY: base}
    for stage in Stage:  # the built-in stages the schema knows; any other gets the default
        merged = {**base.__dict__, **data.get(stage.value, {})}
        policies[stage.value] = RetryPolicy(**merged)
    return policies


def from_data(data: dict[str, Any], path: Path, sha256: str) -> Spec:
    """Build a Spec from data that already passed schema validation."""
    gate = data["gate"]
    compare = gate.get("compare_to_release", {})
    kind = SpecKind(data.get("kind", "profile"))
    trigger = data.get("trigger", {})
    schedule = Schedule(**data.get("schedule", {"enabled": False}))
    return Spec(
        dag_id=data["dag_id"],
        kind=kind,
        description=data["description"],
        owner=data["owner"],
        tags=tuple(data.get("tags", [])),
        orchestration_profile=OrchestrationProfile(data["orchestration_profile"]),
        training_profile=data["training_profile"],
        dataset_manifest=data["dataset"]["manifest"],
        dataset_name=data["dataset"].get("name"),
        eval_suites=tuple(data["eval_suites"]),
        gate=Gate(
            min_domain_improvement=float(gate["domain"]["min_loss_improvement"]),
            max_retention_increase=float(gate["retention"]["max_loss_increase"]),
            quality=QualityRules(**gate.get("dataset_quality", {})),
            compare_to_release=kind is SpecKind.RETRAIN or bool(compare.get("enabled", False)),
            release_tolerance=float(compare.get("tolerance", 0.0)),
            allow_override=bool(gate.get("allow_override", False)),
        ),
        retries=_retries(data.get("retries", {})),
        timeouts={str(Stage(k)): int(v) for k, v in data.get("timeouts", {}).items()},
        schedule=schedule,
        max_active_runs=int(data.get("max_active_runs", 1)),
        start_paused=bool(data.get("start_paused", default_start_paused(kind, schedule))),
        trigger=TriggerPolicy(
            allowed_profiles=tuple(trigger.get("allowed_profiles", [])),
            allowed_manifests=tuple(trigger.get("allowed_manifests", [])),
            note_max_length=int(trigger.get("note_max_length", 500)),
        ),
        path=path,
        sha256=sha256,
        profile_paths={ref: resolve_ref(ref) for ref in (
            data["training_profile"], *trigger.get("allowed_profiles", []))},
        manifest_paths={ref: resolve_ref(ref) for ref in (
            data["dataset"]["manifest"], *trigger.get("allowed_manifests", []))},
        suite_paths=tuple(resolve_ref(ref) for ref in data["eval_suites"]),
        max_devices=dict(data.get(DERIVED_KEY, {}).get("max_devices", {})),
        queue=str(data.get(DERIVED_KEY, {}).get("queue", DEFAULT_QUEUE)),
        notify=_notify(data.get("notify")),
    )
