"""Spec -> dag-factory config, built as plain data (never by templating YAML text).

The config uses dag-factory's own `__type__` notation for Airflow objects, so `peftflow render`
can print exactly what the loader hands to dag-factory, and dag-factory's `cast_with_type`
turns it into objects.
"""

from __future__ import annotations

from typing import Any

from peftflow.airflow import edge as edge_profile
from peftflow.run import stages
from peftflow.spec.model import START_DATE, Spec, SpecKind, Stage

STAGE_OPERATOR = "operators.stage.StageOperator"
GATE_OPERATOR = "operators.gate.ReleaseGateOperator"
SUMMARY_OPERATOR = "operators.summary.RunSummaryOperator"
GATE_TASK = "release_gate"
SUMMARY_TASK = "run_summary"
DATASET_ASSET_SCHEME = "peftflow-dataset"
RELEASE_ASSET_SCHEME = "peftflow-release"
# release_adapter's outlet: the asset (one per profile) is only known when the task runs, as a
# trigger may choose another allowed profile, so the task adds the event through this alias
RELEASE_ALIAS = "peftflow-releases"


def dataset_asset_uri(name: str) -> str:
    """The Airflow asset of a dataset: one per dataset name, an event per new version."""
    return f"{DATASET_ASSET_SCHEME}://{name}"


def release_asset_uri(profile: str) -> str:
    """The Airflow asset of a training profile's releases: an event per new version."""
    return f"{RELEASE_ASSET_SCHEME}://{profile}"


def _seconds(value: int) -> dict[str, Any]:
    return {"__type__": "datetime.timedelta", "seconds": value}


def _param(default: Any, description: str, **schema: Any) -> dict[str, Any]:
    return {"__type__": "airflow.sdk.Param", "default": default, "description": description,
            **schema}


def trigger_params(spec: Spec) -> dict[str, Any]:
    """Airflow Params of the manual-trigger form; Airflow rejects bad values before a run."""
    # Optional params allow null: the trigger form marks every typed param without "null" as
    # required and keeps its Trigger button disabled while such a field is empty.
    params: dict[str, Any] = {
        "note": _param(None, "Free-text note for the audit trail and the run note (why this "
                       "run). Optional.", type=["null", "string"],
                       maxLength=spec.trigger.note_max_length),
        "training_profile": _param(
            spec.training_profile, "Training profile to use (only those the spec allows).",
            type="string", enum=[spec.training_profile, *spec.trigger.allowed_profiles]),
        "dataset_manifest": _param(
            spec.dataset_manifest, "Dataset version (manifest) to train on."
            + (" A run started by a dataset event uses the event's manifest instead."
               if spec.kind is SpecKind.RETRAIN else ""),
            type="string", enum=[spec.dataset_manifest, *spec.trigger.allowed_manifests]),
    }
    params["force_rerun"] = _param(
        False, "Run every stage again even when an identical earlier result could be reused.",
        type="boolean")
    if not spec.gate.allow_override:
        # declared (const, so the form hides it) only so that Airflow refuses a trigger
        # asking for an override before a run exists, instead of a run blocking later
        params["override_gate"] = _param(
            False, "Not allowed by this spec (gate.allow_override is false).",
            type="boolean", const=False)
    else:
        params["override_gate"] = _param(
            False, "Release even if the gate fails (audited; needs override_reason).",
            type="boolean")
        params["override_reason"] = _param(
            None, "Why the gate is overridden (required with override_gate).",
            type=["null", "string"], maxLength=500)
    return params


def _schedule(spec: Spec) -> Any:
    if spec.kind is SpecKind.RETRAIN:
        assert spec.dataset_name  # guaranteed by validation
        return [dataset_asset_uri(spec.dataset_name)]
    if not spec.schedule.enabled:
        return "none"
    return {"__type__": "airflow.sdk.CronTriggerTimetable", "__args__": [spec.schedule.cron],
            "timezone": spec.schedule.timezone}


def _task(spec: Spec, stage: stages.StageDef, upstream: str | None,
          edge: bool) -> dict[str, Any]:
    policy = spec.retry_policy(stage.name)
    task: dict[str, Any] = {
        "operator": STAGE_OPERATOR,
        "stage": stage.name,
        "spec_file": str(spec.path),
        "retries": policy.retries,
        "retry_delay": _seconds(policy.retry_delay_s),
        "retry_exponential_backoff": 2.0 if policy.exponential_backoff else 0.0,
        "max_retry_delay": _seconds(policy.max_retry_delay_s),
    }
    if stage.pool:
        task["pool"] = stage.pool
        task["pool_slots"] = stage.pool_slots(spec)
    if edge and stage.gpu:
        # the edge profile: Airflow's EdgeExecutor hands it to a worker serving the queue;
        # Edge counts pool_slots against the worker's concurrency (= its GPUs)
        task["executor"] = edge_profile.EDGE_EXECUTOR
        task["queue"] = spec.queue
    if stage.name == Stage.RELEASE:
        task["outlets"] = [{"__type__": "airflow.sdk.AssetAlias", "name": RELEASE_ALIAS}]
    if stage.name in spec.timeouts:
        task["execution_timeout"] = _seconds(spec.timeouts[stage.name])
    if upstream:
        task["dependencies"] = [upstream]
    return task


def _doc(spec: Spec) -> str:
    rows = "\n".join(f"| `{s.name}` | {spec.retry_policy(s.name).retries} |"
                     f" {s.pool or 'default'} |" for s in stages.all_stages())
    return (
        f"# {spec.dag_id}\n\n{spec.description}\n\n"
        f"Generated by peftflow from `{spec.path.name}` (sha256 `{spec.sha256[:12]}`). "
        f"Profile `{spec.training_profile}`, dataset `{spec.dataset_manifest}`.\n\n"
        f"Gate: domain loss must improve by >= {spec.gate.min_domain_improvement:.1%}, "
        f"retention loss may rise by <= {spec.gate.max_retention_increase:.1%}"
        + (", and no suite may be worse than the current release" if spec.gate.compare_to_release
           else "") + ".\n\n| stage | retries | pool |\n| --- | --- | --- |\n" + rows + "\n"
    )


def task_order() -> tuple[str, ...]:
    """The run's chain of task ids: the stage table in order, the gate before the first stage
    that runs only after it (the release). The run_summary teardown follows the last."""
    order: list[str] = []
    for stage in stages.all_stages():
        if stage.after_gate and GATE_TASK not in order:
            order.append(GATE_TASK)
        order.append(stage.name)
    return tuple(order)


def dag_config(spec: Spec, edge: bool = False) -> dict[str, Any]:
    """The dag-factory config of one spec: {dag_id: {...}}; with `edge`, as the edge
    deployment profile routes it (GPU stages to the EdgeExecutor)."""
    tasks: dict[str, Any] = {}
    upstream: str | None = None
    for task_id in task_order():
        if task_id == GATE_TASK:
            tasks[GATE_TASK] = {"operator": GATE_OPERATOR, "spec_file": str(spec.path),
                                "retries": 0, "dependencies": [upstream] if upstream else []}
        else:
            tasks[task_id] = _task(spec, stages.get(task_id), upstream, edge)
        upstream = task_id
    # A teardown: it runs after every outcome and does not decide the run's state.
    tasks[SUMMARY_TASK] = {"operator": SUMMARY_OPERATOR, "spec_file": str(spec.path),
                           "retries": 0, "dependencies": [upstream]}
    return {
        spec.dag_id: {
            "description": spec.description,
            "tags": sorted({"peftflow", *spec.tags}),
            "schedule": _schedule(spec),
            "start_date": START_DATE,
            "catchup": spec.schedule.catchup,
            "max_active_runs": spec.max_active_runs,
            "is_paused_upon_creation": spec.start_paused,
            "default_args": {"owner": spec.owner, "depends_on_past": False},
            "params": trigger_params(spec),
            "doc_md": _doc(spec),
            "render_template_as_native_obj": False,
            "tasks": tasks,
        }
    }


def render_yaml(config: dict[str, Any]) -> str:
    """The config as YAML (libyaml when available): what `peftflow render` prints."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return str(yaml.dump(config, Dumper=dumper, sort_keys=False, allow_unicode=True, width=100))
