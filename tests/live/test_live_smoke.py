"""The smoke DAG under the real services, on SQLite and on PostgreSQL: triggered by the CLI
and by REST, and a trigger with out-of-range params refused before any run exists."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from live_harness import Live
from live_scenarios import SMOKE

pytestmark = pytest.mark.live
STAGES = ("prepare_dataset", "train_adapter", "evaluate_adapter", "release_adapter")


def _events(live: Live, run_id: str, kind: str) -> list[str]:
    return [e.get("stage") or e.get("task_id") for e in live.audit_events(run_id)
            if e["event"] == kind]


def test_smoke_dag_triggered_by_the_cli_succeeds_and_releases(
        deployment: Live, measure: Callable[..., None]) -> None:
    from peftflow.store import audit_verify, schemas

    t0 = time.monotonic()
    run_id = deployment.trigger_cli(SMOKE, {"note": "live test via CLI"})
    leaks = _db_password_in_stages(deployment, run_id)
    deployment.wait_for(SMOKE, run_id, "success", timeout=600)
    took = time.monotonic() - t0  # trigger (CLI start-up included) to success
    assert leaks == [], f"the metadata DB password reached a stage's environment: {leaks}"
    if deployment.cluster is not None:
        logs = [p for p in deployment.logs.rglob("*.log")
                if deployment.cluster.password in p.read_text(errors="replace")]
        assert logs == [], f"the metadata DB password is in {logs}"
    manifest = deployment.release_for(SMOKE, run_id)
    path = manifest.pop("_path")
    schemas.check(manifest, "release_manifest", path)
    assert sorted(_events(deployment, run_id, "task_succeeded")) == sorted(STAGES)
    assert audit_verify.verify(deployment.audit_log) == []
    tis = deployment.task_instances(SMOKE, run_id)
    assert {t: ti["try_number"] for t, ti in tis.items()} == dict.fromkeys(tis, 1)
    durations = {t: round(float(ti["duration"] or 0), 1) for t, ti in tis.items()}
    note = deployment.wait_note(SMOKE, run_id)  # set by the run_summary teardown
    assert note.startswith(f"**Released smoke-cpu {manifest['version']}"), note
    assert "- train_adapter: ran (" in note and "live test via CLI" in note, note
    measure("smoke run via CLI (s)", deployment.kind, wall=round(took, 1), **durations,
            release=manifest["version"])


def _db_password_in_stages(live: Live, run_id: str) -> list[str]:
    """While the run goes on, look into every stage process's environment for the DB
    password (the PostgreSQL URL holds it)."""
    if live.cluster is None:
        return []
    seen: set[int] = set()
    leaks: list[str] = []
    last_check = deadline = time.monotonic()
    deadline += 600
    while time.monotonic() < deadline:
        for pid in set(live.stage_pids(run_id)) - seen:
            seen.add(pid)
            leaks += live.env_vars_holding(pid, live.cluster.password)
        if time.monotonic() - last_check > 5:
            last_check = time.monotonic()
            if live.run_state(SMOKE, run_id) in ("success", "failed"):
                break
        time.sleep(0.5)
    assert seen, "no stage process of the run was seen"
    return leaks


def _keys(live: Live, run_id: str, kinds: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    return {e["stage"]: (e["event"], e["details"]["cache_key"])
            for e in live.audit_events(run_id) if e["event"] in kinds and e.get("stage")}


def test_smoke_dag_triggered_by_rest_succeeds_and_reuses_finished_stages(
        deployment: Live, measure: Callable[..., None]) -> None:
    """After the CLI run, every stage with the same cache key is reused (a key differs only
    when code or inputs changed in between), and no adapter is released a second time."""
    from peftflow.release import registry

    earlier = [r for r in deployment.runs(SMOKE) if r["state"] == "success"]
    before = registry.current_release("smoke-cpu")
    run_id = deployment.trigger_rest(SMOKE, {"note": "live test via REST"})
    took = deployment.wait_for(SMOKE, run_id, "success", timeout=600)
    reused = []
    if earlier:
        old = _keys(deployment, earlier[-1]["dag_run_id"], ("task_succeeded", "task_reused"))
        new = _keys(deployment, run_id, ("task_started", "task_reused"))
        for stage in STAGES[:3]:
            event, key = new[stage]
            if event == "task_reused":
                reused.append(stage)
            else:
                assert key != old[stage][1], f"{stage} ran again with an unchanged cache key"
                print(f"{stage}: ran again, its code or inputs changed since the CLI run")
        after = registry.current_release("smoke-cpu")
        if len(reused) == 3:
            assert before is not None and after is not None and after.version == before.version
            note = deployment.wait_note(SMOKE, run_id)
            source = earlier[-1]["dag_run_id"]
            assert note.startswith("**No new release: this adapter is already released"), note
            assert f"- prepare_dataset: reused (nothing ran; result of run {source})" in note
    measure("smoke run via REST (s)", deployment.kind, wall=round(took, 1),
            reused=",".join(reused) or "none")


def test_the_trigger_form_needs_no_input_and_a_trigger_without_conf_succeeds(
        deployment: Live, measure: Callable[..., None]) -> None:
    """The UI marks a typed param required unless its type allows null, and keeps Trigger
    disabled while a required field is empty: every param must be optional or prefilled."""
    details = deployment.api(lambda: deployment.client._send(
        "GET", f"/api/v2/dags/{SMOKE}/details"))
    params = details["params"]
    assert {"note", "training_profile", "dataset_manifest", "force_rerun"} <= set(params)
    required_without_default = []
    for name, param in params.items():
        schema = param.get("schema") or {}
        types = schema.get("type")
        optional = "null" in types if isinstance(types, list) else types == "null"
        if not optional and param.get("value") in (None, ""):
            required_without_default.append(name)
        assert param.get("description"), f"{name} lost its description"
    assert required_without_default == [], params
    # the smoke spec allows no override: the param exists only as const false (hidden)
    assert params["override_gate"]["schema"].get("const") is False
    assert "override_reason" not in params
    run_id = deployment.trigger_cli(SMOKE, None)  # `airflow dags trigger DAG`, no --conf
    took = deployment.wait_for(SMOKE, run_id, "success", timeout=600)
    assert "Triggered by" in deployment.wait_note(SMOKE, run_id)
    measure("trigger without conf (s)", deployment.kind, wall=round(took, 1))


BAD_CONF: list[tuple[str, dict[str, Any]]] = [
    ("note longer than note_max_length", {"note": "x" * 501}),
    ("training_profile not in the enum",
     {"training_profile": "configs/profiles/rwkv7_1b5_lora.yaml"}),
    ("dataset_manifest not in the enum", {"dataset_manifest": "../../etc/passwd"}),
    ("force_rerun not a boolean", {"force_rerun": "yes please"}),
    ("override_gate on a spec that allows no override", {"override_gate": True}),
]


def test_out_of_range_params_are_rejected_and_no_run_is_created(
        deployment: Live, measure: Callable[..., None]) -> None:
    from peftflow.airflow.client import ApiError

    before = {r["dag_run_id"] for r in deployment.runs(SMOKE)}
    answers = {}
    for why, conf in BAD_CONF:
        with pytest.raises(ApiError) as refused:
            deployment.trigger_rest(SMOKE, conf)
        assert refused.value.status == 400, (why, str(refused.value))
        answers[why] = str(refused.value)[:160]
    for why, conf in BAD_CONF[:2]:
        done = deployment.airflow("dags", "trigger", SMOKE, "--conf", json.dumps(conf),
                                  check=False)
        assert done.returncode != 0, (why, done.stdout, done.stderr)
        assert "param" in (done.stdout + done.stderr).lower(), (why, done.stderr[-2000:])
    assert {r["dag_run_id"] for r in deployment.runs(SMOKE)} == before
    for why, text in answers.items():
        print(f"REST refused ({why}): {text}")
    measure("bad params refused", deployment.kind, rest=len(BAD_CONF), cli=2,
            runs_created=0)
