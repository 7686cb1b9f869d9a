"""What the operators do when a task runs (kept out of operators/ so parsing stays cheap)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from peftflow import settings
from peftflow.airflow import expand
from peftflow.airflow.task import GateTask, LoggingTask, StageTask
from peftflow.child import TERM_GRACE_S, Child
from peftflow.errors import ConfigError, IntegrityError, PeftflowError
from peftflow.exitcodes import ExitCode, classify
from peftflow.outcome import Outcome
from peftflow.run import device_lease, lease, plan, runinfo, stages
from peftflow.run import reuse as cache
from peftflow.spec import orchestration, validate
from peftflow.spec.model import Spec, Stage
from peftflow.store import audit
from peftflow.store import status_record as status

GATE_TASK = "release_gate"


def _event(run: runinfo.RunInfo, event: str, **fields: Any) -> None:
    audit.append_event({"event": event, "dag_id": run.dag_id, "run_id": run.run_id,
                  "task_id": run.task_id, "try_number": run.try_number, "actor": run.actor,
                  "note": run.note, **fields})


def _refs(refs: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": n, "sha256": r.sha256 if hasattr(r, "sha256") else r["sha256"]}
            for n, r in refs.items()]


def _load(spec_file: str, run: runinfo.RunInfo, what: str) -> Spec:
    try:
        orchestration.require_airflow_active(what)
        spec = validate.load_spec(Path(spec_file))
        check_params(spec, run.params)
        return spec
    except PeftflowError as exc:
        _event(run, "task_failed", outcome="failed", details={"error": str(exc)})
        raise AirflowFailException(str(exc)) from None


def check_params(spec: Spec, params: dict[str, Any]) -> None:
    """The trigger-conf rules (peftflow.airflow.triggerconf) for runs the api-server's guard did not
    see: checked when the first task starts, before any work."""
    from peftflow.airflow import triggerconf

    problems = triggerconf.conf_problems(spec.dag_id, expand.trigger_params(spec), params)
    if problems:
        raise ConfigError("; ".join(problems))


def _upstream(context: Context, stage: str) -> dict[str, dict[str, Any]]:
    ti = context["ti"]
    return {s.name: ti.xcom_pull(task_ids=s.name) for s in stages.before(stage)}


def _extra(context: Context, stage: str, spec: Spec, upstream: dict[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    definition = stages.get(stage)
    if definition.after_gate:
        gate = context["ti"].xcom_pull(task_ids=GATE_TASK) or {}
        extra["gate_decision"] = gate.get("decision_path")
    return extra


def run_stage(op: StageTask, context: Context) -> dict[str, Any]:
    stage = stages.get(op.stage).name
    run = runinfo.from_context(context)
    spec = _load(op.spec_file, run, f"the {stage} task")
    try:
        upstream = _upstream(context, stage)
        the_plan = plan.build(stage, spec, run, upstream, _extra(context, stage, spec, upstream))
        for ref in the_plan.inputs.values():
            ref.verify()  # the hashes upstream recorded must still hold
    except PeftflowError as exc:
        _event(run, "task_failed", stage=stage, outcome="failed",
               details={"error": str(exc), "phase": "inputs"})
        raise AirflowFailException(f"{stage}: inputs rejected: {exc}") from None
    key = the_plan.cache_key()
    forced = bool(run.params.get("force_rerun"))
    earlier = None if forced else cache.lookup(stage, key)
    if earlier is not None:
        op.log.info("REUSED %s: nothing was run; the successful result of run %s with the same "
                    "cache key %s is used (%s). Trigger with force_rerun to run it again.",
                    stage, earlier["_run_id"], key[:12], earlier["_status_path"])
        _event(run, "task_reused", stage=stage, outcome="reused",
               inputs=_refs(the_plan.inputs), outputs=_refs(status.outputs_of(earlier)),
               details={"cache_key": key, "status_path": earlier["_status_path"],
                        "reused_from": earlier["_run_id"]})
        return plan.record(earlier, Path(earlier["_status_path"]), key, reused=True)
    if forced:
        op.log.info("force_rerun is set: not reusing earlier results")
    tick = None
    if stage == Stage.TRAIN:  # notify.training_overdue_after_s, checked while it trains
        from peftflow.notify import overdue

        tick = overdue.watch(spec, dag_id=run.dag_id, run_id=run.run_id,
                             try_number=run.try_number, run_dir=run.run_dir(),
                             context=context, task_log=op.log)
    record = _execute(op, stage, run, the_plan, key, _preferred_devices(stage, upstream), tick)
    if stage == Stage.RELEASE:
        _release_event(op, context, run, record)
    return record


def _release_event(op: LoggingTask, context: Context, run: runinfo.RunInfo,
                   record: dict[str, Any]) -> None:
    """A new version is an event on the asset peftflow-release://<profile> (through the
    task's asset alias), so a team's own DAG scheduled on it starts with the version in
    its extra. A no-op release (this adapter is already out) makes no event."""
    from airflow.sdk import Asset, AssetAlias

    m = record.get("metrics") or {}
    if m.get("noop") or not m.get("version"):
        return
    manifest = (record.get("outputs") or {}).get("release_manifest", {}).get("path")
    uri = expand.release_asset_uri(str(m["profile"]))
    extra = {"profile": m["profile"], "version": m["version"], "manifest": manifest,
             "release_dir": m.get("release_dir"), "dag_id": run.dag_id, "run_id": run.run_id}
    context["outlet_events"][AssetAlias(expand.RELEASE_ALIAS)].add(Asset(uri), extra=extra)
    op.log.info("asset event %s: version %s (manifest %s)", uri, m["version"], manifest)


def _preferred_devices(stage: str, upstream: dict[str, dict[str, Any]]) -> str:
    """The cards the run's previous GPU stage leased on this host, if it ran here: evaluating
    on the GPU that just trained finds the page cache (and the card) warm."""
    if not stages.get(stage).gpu:
        return ""
    for earlier in reversed(stages.before(stage)):
        devices = (upstream.get(earlier.name) or {}).get("devices") if earlier.gpu else None
        if devices and devices.get("host") == settings.host_name():
            return ",".join(str(d) for d in devices.get("ids", []))
    return ""


def _execute(op: StageTask, stage: str, run: runinfo.RunInfo, the_plan: plan.StagePlan,
             key: str, prefer_devices: str = "",
             on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    the_plan.out_dir.mkdir(parents=True, exist_ok=True)
    _event(run, "task_started", stage=stage, inputs=_refs(the_plan.inputs),
           details={"cache_key": key})
    op.log.info("running %s", the_plan.argv)
    env = settings.child_env({"PEFTFLOW_DAG_ID": run.dag_id, "PEFTFLOW_RUN_ID": run.run_id,
                              "PEFTFLOW_TRY_NUMBER": str(run.try_number),
                              device_lease.PREFER_ENV: prefer_devices})
    orphan = lease.reclaim(the_plan.out_dir, grace_s=TERM_GRACE_S)
    if orphan is not None:  # an earlier try whose watcher died is still running here
        op.log.warning("stopped process group %d of try %d, still running in %s",
                       orphan.pid, orphan.try_number, the_plan.out_dir)
        _event(run, "orphan_stopped", stage=stage, outcome="stopped",
               details={"pid": orphan.pid, "try_number": orphan.try_number})
    child = Child(the_plan.argv, env, settings.get().project_root)
    op.adopt(child)
    lease.write(the_plan.out_dir, child.pid, run.try_number)
    def show(line: str) -> None:
        op.log.info("%s", line)

    try:
        finished = child.wait(on_line=show, on_tick=on_tick)
    except BaseException:
        child.stop()  # execution_timeout or kill: take the whole group down
        _event(run, "task_failed", stage=stage, outcome="interrupted")
        raise
    finally:
        op.adopt(None)
        lease.clear(the_plan.out_dir)
    code = classify(finished.returncode)
    if code is not ExitCode.OK:
        tail = "\n".join(finished.tail[-8:])
        message = (f"{stage} exited {finished.returncode} ({code.name}, "
                   f"{'retryable' if code.retryable else 'permanent'}):\n{tail}")
        # the last lines say why (out of memory, a traceback's last line): the run summary's
        # notification quotes them; the audit trail redacts secret-looking values in them
        _event(run, "task_failed", stage=stage, outcome="failed",
               details={"exit_code": finished.returncode, "class": code.name,
                        "output_tail": [line[:300] for line in finished.tail[-5:]]})
        raise (AirflowException if code.retryable else AirflowFailException)(message)
    try:
        doc = check_outputs(stage, the_plan.out_dir)
    except PeftflowError as exc:
        _event(run, "task_failed", stage=stage, outcome="failed",
               details={"error": str(exc), "phase": "outputs"})
        raise AirflowFailException(f"{stage} exited 0 but its artifacts are not "
                                   f"valid: {exc}") from None
    status_path = the_plan.out_dir / status.STATUS_FILE
    cache.store(stage, key, status_path, run.run_id)
    _event(run, "task_succeeded", stage=stage, outcome="success",
           inputs=_refs(the_plan.inputs), outputs=_refs(status.outputs_of(doc)),
           duration_s=doc.get("duration_s"),
           details={"cache_key": key, **({"devices": doc["devices"]} if doc.get("devices")
                                         else {})})
    if stage == Stage.RELEASE:  # the release itself, as `audit show` and the summary name it
        m = doc.get("metrics", {})
        _event(run, "release_noop" if m.get("noop") else "release_published",
               stage=stage, outcome="noop" if m.get("noop") else "success",
               verdict="released", details={k: m.get(k) for k in (
                   "profile", "version", "release_dir", "released_by_run")})
    return plan.record(doc, status_path, key, reused=False)


def check_outputs(stage: str, out_dir: Path) -> dict[str, Any]:
    """The after-check: a schema-valid success status whose every output verifies."""
    doc = status.read(out_dir)
    if doc["stage"] != stage:
        raise IntegrityError(f"{out_dir}/status.json belongs to {doc['stage']!r}, "
                             f"not {stage!r}")
    if doc["status"] != "success":
        raise IntegrityError(f"{out_dir}/status.json says {doc['status']!r}")
    outputs = status.outputs_of(doc)
    missing = [n for n in stages.get(stage).outputs if n not in outputs]
    if missing:
        raise IntegrityError(f"{out_dir}/status.json lists no {', '.join(missing)} output")
    for ref in outputs.values():
        ref.verify()
    return doc


def run_gate(op: GateTask, context: Context) -> dict[str, Any]:
    from peftflow.release import gate

    run = runinfo.from_context(context)
    spec = _load(op.spec_file, run, "the release gate")
    upstream = _upstream(context, Stage.RELEASE)
    try:
        quality = plan.upstream_outputs(upstream.get(Stage.PREPARE), Stage.PREPARE)["quality"]
        verdict = plan.upstream_outputs(upstream.get(Stage.EVALUATE), Stage.EVALUATE)["verdict"]
        quality.verify()
        verdict.verify()
    except (PeftflowError, KeyError) as exc:
        _event(run, "gate_blocked", outcome="blocked", details={"error": str(exc)})
        raise AirflowFailException(
            f"release blocked: the gate cannot read its inputs: {exc}") from exc
    override = None
    if run.params.get("override_gate"):
        override = gate.Override(allowed_by_spec=spec.gate.allow_override, actor=run.actor,
                                 reason=str(run.params.get("override_reason") or ""))
    decision = gate.decide(Path(quality.path), Path(verdict.path),
                           allow_warn=spec.gate.quality.allow_warn, override=override)
    out = run.stage_dir(GATE_TASK) / "gate_decision.json"
    gate.write_decision(decision, out)
    baseline = _gate_baseline(op, upstream.get(Stage.EVALUATE))
    for line in gate.log_lines(decision, baseline,
                               compare_to_release=spec.gate.compare_to_release):
        op.log.info("GATE %s", line)
    prof = plan.profile_name(spec, run)
    if not decision.release:
        gate.record_block(decision, profile=prof, dag_id=run.dag_id, run_id=run.run_id)
        _event(run, "gate_blocked", outcome="blocked", verdict=Outcome.FAIL.value,
               details={"reasons": decision.reasons})
        raise AirflowFailException("release blocked by the gate:\n- " +
                                   "\n- ".join(decision.reasons))
    _event(run, "gate_override" if decision.overridden else "gate_passed",
           outcome=Outcome.PASS.value, verdict=Outcome.PASS.value,
           details={"reasons": decision.reasons})
    return {"decision_path": str(out), "release": True, "overridden": decision.overridden}


def _gate_baseline(op: LoggingTask, eval_record: dict[str, Any] | None) -> str | None:
    """"<profile> <version>" of the release the evaluation compared with, if it did."""
    from peftflow.release import lineage

    try:
        found = lineage.baseline_release(status.read(Path((eval_record or {})["status_path"])))
    except (PeftflowError, KeyError) as exc:
        op.log.warning("GATE cannot tell which release the evaluation compared with: %s", exc)
        return None
    return None if found is None else f"{found['profile']} {found['version']}"
