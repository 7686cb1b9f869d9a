"""The MLflow side: one MLflow run per Airflow run, found again by its tags.

A stage result that another MLflow run already holds (tag `peftflow.data.<stage>` = its cache
key) is linked (`peftflow.reused.<stage>` = that run's id), never logged twice. The tags that
say what a run holds are written last, with `peftflow.complete`, so a run cut off half-way is
never linked to; the next call deletes it and logs again. mlflow is imported here only.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import ConfigError
from peftflow.track._facts import RunFacts, StageData

KEY, COMPLETE, STATUS, FINGERPRINT = ("peftflow.key", "peftflow.complete",
                                      "peftflow.track_status", "peftflow.fingerprint")
_PLAIN = re.compile(r"[A-Za-z0-9_.:+-]+")  # values safe to quote in a search filter
# MLflow's limits per log_batch request
_PARAMS_PER_BATCH, _METRICS_PER_BATCH, _TAGS_PER_BATCH = 100, 1000, 100


@dataclass(frozen=True)
class Logged:
    status: str  # logged | linked
    run_id: str
    experiment: str
    message: str


def _client(uri: str) -> Any:
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise ConfigError(f"tracking is on (PEFTFLOW_TRACKING=mlflow) but the MLflow client "
                          f"cannot be imported ({exc}); pip install .[mlflow], or set "
                          "PEFTFLOW_TRACKING=off") from None
    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, name: str, artifact_root: Path | None) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(
                name, artifact_location=artifact_root.as_uri() if artifact_root else None))
        except MlflowException:  # another run's summary created it a moment ago
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise ConfigError(f"MLflow experiment {name!r} (id {found.experiment_id}) is deleted; "
                          f"restore it (mlflow experiments restore --experiment-id "
                          f"{found.experiment_id}) or set PEFTFLOW_MLFLOW_EXPERIMENT")
    return str(found.experiment_id)


def _search(client: Any, experiments: Sequence[str], tags: dict[str, str]) -> list[Any]:
    if not experiments or not all(_PLAIN.fullmatch(v) for v in tags.values()):
        return []
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return list(client.search_runs(list(experiments), filter_string=where, max_results=50,
                                   order_by=["attributes.start_time ASC"]))


def _holder(client: Any, experiments: list[str], stage: StageData) -> Any | None:
    """The complete MLflow run that holds this stage result, preferring the computing run."""
    found = _search(client, experiments, {f"peftflow.data.{stage.task_id}": stage.cache_key,
                                          COMPLETE: "true"})
    exact = [r for r in found if r.data.tags.get("peftflow.run_id") == stage.reused_from]
    return (exact or found or [None])[0]


def _experiments(client: Any, own: str, facts: RunFacts, cfg: settings.Tracking) -> list[str]:
    """Where an earlier run's MLflow run can be: this experiment and, when experiments are
    named after DAGs, the experiment of each DAG a reused result came from."""
    found = [own]
    if cfg.experiment is None:
        for dag in sorted({s.source_dag for s in facts.stages if s.source_dag} - {facts.dag_id}):
            exp = client.get_experiment_by_name(dag)
            if exp is not None and exp.lifecycle_stage == "active":
                found.append(str(exp.experiment_id))
    return found


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[i:i + size] for i in range(0, len(items), size))


def _plan(client: Any, facts: RunFacts, experiments: list[str]
          ) -> tuple[dict[str, str], list[StageData], list[str]]:
    """Tags that link reused results, the stages this run holds, and what to say about it."""
    tags: dict[str, str] = {}
    held: list[StageData] = []
    said: list[str] = []
    for stage in facts.stages:
        if stage.reused_from is not None:
            tags[f"peftflow.reused.{stage.task_id}.airflow_run_id"] = stage.reused_from
            holder = _holder(client, experiments, stage)
            if holder is not None:
                tags[f"peftflow.reused.{stage.task_id}"] = holder.info.run_id
                said.append(f"{stage.task_id} linked to MLflow run {holder.info.run_id} "
                            f"(Airflow run {stage.reused_from})")
                continue
            tags[f"peftflow.reused.{stage.task_id}"] = "untracked"
            if stage.metrics:
                said.append(f"{stage.task_id} was reused from run {stage.reused_from}, which "
                            "was never tracked: its data is logged here")
        tags[f"peftflow.data.{stage.task_id}"] = stage.cache_key
        held.append(stage)
    return tags, held, said


def _already(client: Any, facts: RunFacts, experiment: str, name: str) -> Logged | None:
    """The complete MLflow run of this Airflow run with the same records, if there is one;
    other runs of it are set aside (cut off half-way: deleted; outdated: unlinked)."""
    found = _search(client, [experiment], {KEY: facts.key})
    for run in found:
        tags = run.data.tags
        if tags.get(COMPLETE) == "true" and tags.get(FINGERPRINT) == facts.fingerprint:
            return Logged(tags.get(STATUS, "logged"), run.info.run_id, name,
                          f"already logged as MLflow run {run.info.run_id}; nothing changed")
    for run in found:
        if run.data.tags.get(COMPLETE) == "true":  # the Airflow run was cleared and ran again
            client.delete_tag(run.info.run_id, KEY)
            client.set_tag(run.info.run_id, "peftflow.superseded", "true")
        else:
            client.delete_run(run.info.run_id)
    return None


def log(facts: RunFacts, cfg: settings.Tracking) -> Logged:
    """Log one Airflow run; raises whatever MLflow raises (the caller reports it)."""
    from mlflow.entities import Metric, Param, RunTag

    client = _client(cfg.uri)
    name = cfg.experiment or facts.dag_id
    experiment = _experiment(client, name, cfg.artifact_root)
    done = _already(client, facts, experiment, name)
    if done is not None:
        return done
    links, held, said = _plan(client, facts, _experiments(client, experiment, facts, cfg))
    linked = len(held) < len(facts.stages)
    status = "linked" if linked and not any(s.metrics for s in held) else "logged"
    run = client.create_run(experiment, run_name=facts.run_id, tags={
        KEY: facts.key, "peftflow.dag_id": facts.dag_id, "peftflow.run_id": facts.run_id})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in facts.params.items()]
        metrics = [Metric(name_, value, now, step) for stage in held
                   for name_, history in stage.metrics.items() for step, value in history]
        for part in _chunks(params, _PARAMS_PER_BATCH):
            client.log_batch(run_id, params=list(part))
        for part in _chunks(metrics, _METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=list(part))
        if cfg.log_adapter:
            for stage in held:
                if stage.adapter:
                    client.log_artifact(run_id, stage.adapter, artifact_path="adapter")
        final = {**facts.tags, **links, FINGERPRINT: facts.fingerprint, STATUS: status,
                 COMPLETE: "true"}  # last: a run without it is never linked to
        tags = [RunTag(k, v) for k, v in final.items() if k != COMPLETE]
        for part in _chunks(tags, _TAGS_PER_BATCH):
            client.log_batch(run_id, tags=list(part))
        client.set_tag(run_id, COMPLETE, "true")
        client.set_terminated(run_id, "FINISHED" if facts.finished else "FAILED")
    except BaseException:
        # the tracker may be gone: then the next call finds this run incomplete and deletes it
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise
    steps = sum(len(h) for s in held for n, h in s.metrics.items() if n == "train/loss")
    suites = {n.split("/")[1] for s in held for n in s.metrics if n.startswith("eval/")}
    if steps or suites:
        said.insert(0, f"{steps} loss steps, {len(suites)} eval suite(s)")
    return Logged(status, run_id, name, f"{status} as MLflow run {run_id}: " + "; ".join(said))
