"""Bad input through the real DAGs (SQLite): malformed lines, data edited after registration,
too few documents, shell-injection text in specs, profiles and trigger params, invalid specs.
Bad data fails prepare_dataset permanently (no retry burned) and nothing is released; hostile
text is never executed (its marker files never appear)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from live_harness import Live
from live_scenarios import (
    BAD_LINES,
    HASH_MISMATCH,
    INJECTION,
    OVERRIDABLE,
    PWNED,
    SMOKE,
    TOO_FEW,
    TOO_FEW_STATIC,
    hostile,
    write_rejected,
)

from peftflow.airflow.loader import INVALID_PREFIX

pytestmark = [pytest.mark.live,
              pytest.mark.parametrize("deployment", ["sqlite"], indirect=True)]


def _no_markers(live: Live) -> None:
    made = sorted(p.name for p in (live.root / "markers").iterdir())
    assert made == [] and not PWNED.exists(), f"hostile text was executed: {made}"


def _failed_in_prepare(live: Live, dag_id: str, run_id: str, code: int) -> tuple[str, float]:
    took = live.wait_for(dag_id, run_id, "failed", timeout=300)
    tis = live.task_instances(dag_id, run_id)
    assert tis["prepare_dataset"]["state"] == "failed"
    assert tis["prepare_dataset"]["try_number"] == 1, "a permanent failure burned a retry"
    assert tis["train_adapter"]["state"] == "upstream_failed"
    log = live.task_log(dag_id, run_id, "prepare_dataset", 1)
    assert f"prepare_dataset exited {code} " in log, log[-3000:]
    assert live.releases_of(run_id) == []
    return log, took


def test_a_dataset_with_malformed_lines_fails_prepare_permanently_with_exit_4(
        deployment: Live, measure: Callable[..., None]) -> None:
    run_id = deployment.trigger_rest(BAD_LINES, {"note": "bad input: malformed lines"})
    log, took = _failed_in_prepare(deployment, BAD_LINES, run_id, 4)
    assert "line 21" in log and "line 23" in log, log[-3000:]  # the bad lines are named
    measure("bad input malformed lines", deployment.kind, exit_code=4, tries=1,
            run_wall_s=round(took, 1), outcome="failed, no release")


def test_data_edited_after_registration_fails_prepare_with_exit_5(
        deployment: Live, measure: Callable[..., None]) -> None:
    run_id = deployment.trigger_rest(HASH_MISMATCH, {"note": "bad input: edited data"})
    log, took = _failed_in_prepare(deployment, HASH_MISMATCH, run_id, 5)
    assert "sha256" in log.lower(), log[-3000:]
    measure("bad input hash mismatch", deployment.kind, exit_code=5, tries=1,
            run_wall_s=round(took, 1), outcome="failed, no release")


def test_too_few_documents_for_the_profile_fails_prepare_permanently(
        deployment: Live, measure: Callable[..., None]) -> None:
    few = str(deployment.root / "data/few/v1/train.manifest.json")
    run_id = deployment.trigger_rest(TOO_FEW, {"dataset_manifest": few,
                                               "note": "bad input: 5 documents"})
    log, took = _failed_in_prepare(deployment, TOO_FEW, run_id, 4)
    assert "20" in log and "5" in log, log[-3000:]  # needs 20 documents, has 5
    measure("bad input too few documents", deployment.kind, exit_code=4, tries=1,
            run_wall_s=round(took, 1), outcome="failed, no release")


def test_shell_injection_in_spec_profile_and_trigger_text_executes_nothing(
        deployment: Live, measure: Callable[..., None]) -> None:
    """The spec's description, the profile's description and the note carry $(...),
    backticks, ';', '&&' and '|': the run is inert and still succeeds. An extra conf key
    with the same text is refused by the api-server before a run exists; sent by the local
    `airflow dags trigger` (which the api-server never sees) it fails the first task."""
    from peftflow.airflow.client import ApiError

    markers = deployment.root / "markers"
    note = hostile(markers, "note")[:500]
    run_id = deployment.trigger_rest(INJECTION, {"note": note})
    took = deployment.wait_for(INJECTION, run_id, "success", timeout=600)
    _no_markers(deployment)
    notes = {e.get("note") for e in deployment.audit_events(run_id) if e.get("task_id")}
    assert notes == {note}, notes  # recorded verbatim, as data
    before = {r["dag_run_id"] for r in deployment.runs(INJECTION)}
    extra_conf = {"note": note, "cmd": hostile(markers, "conf-key")}
    with pytest.raises(ApiError) as refused:
        deployment.trigger_rest(INJECTION, extra_conf)
    assert refused.value.status == 400 and "unknown trigger param(s) 'cmd'" in str(refused.value)
    assert {r["dag_run_id"] for r in deployment.runs(INJECTION)} == before
    extra = "manual__cli_extra_key"
    deployment.airflow("dags", "trigger", INJECTION, "--run-id", extra,
                       "--conf", json.dumps(extra_conf))
    deployment.wait_for(INJECTION, extra, "failed", timeout=300)
    tis = deployment.task_instances(INJECTION, extra)
    assert tis["prepare_dataset"]["state"] == "failed" and tis["prepare_dataset"]["try_number"] == 1
    errors = [str(e.get("details", {}).get("error")) for e in deployment.audit_events(extra)
              if e["event"] == "task_failed"]
    assert any("unknown trigger param(s) 'cmd'" in e for e in errors), errors
    _no_markers(deployment)
    measure("bad input shell injection in spec/profile/params", deployment.kind,
            run_state="success", markers_created=0, run_wall_s=round(took, 1))


HOSTILE_CONF = [
    {"dataset_manifest": "../../../../etc/passwd"},
    {"dataset_manifest": f"data/$(touch {PWNED}).manifest.json"},
    {"training_profile": f"/etc/passwd; touch {PWNED}"},
    {"force_rerun": f"$(touch {PWNED})"},
]


def test_hostile_trigger_params_and_run_ids_are_rejected_before_any_run(
        deployment: Live, measure: Callable[..., None]) -> None:
    from peftflow.airflow.client import ApiError

    before = {r["dag_run_id"] for r in deployment.runs(SMOKE)}
    for conf in HOSTILE_CONF:
        with pytest.raises(ApiError) as refused:
            deployment.trigger_rest(SMOKE, conf)
        assert refused.value.status == 400, (conf, str(refused.value))
    guarded = {  # what Airflow's per-param validation passes and the trigger guard refuses
        "force-rerun": ({"force-rerun": True}, "'force-rerun' (did you mean 'force_rerun'?)"),
        "override": ({"override_gate": True, "override_reason": "  "},
                     "override_gate is set without an override_reason"),
    }
    for dag_id, (conf, message) in [(SMOKE, guarded["force-rerun"]),
                                    (OVERRIDABLE, guarded["override"])]:
        with pytest.raises(ApiError) as refused:
            deployment.trigger_rest(dag_id, conf)
        assert refused.value.status == 400 and message in str(refused.value), str(refused.value)
    anonymous = _post_anonymously(deployment, SMOKE, guarded["force-rerun"][0])
    assert anonymous[0] == 401 and "force_rerun" not in anonymous[1], anonymous
    cli = deployment.airflow("dags", "trigger", SMOKE, "--conf", json.dumps(HOSTILE_CONF[0]),
                             check=False)
    assert cli.returncode != 0, cli.stdout
    for run_id in ("../../escape", f"x; touch {PWNED}", "$(id)"):
        with pytest.raises(ApiError) as refused:
            deployment.api(lambda r=run_id: deployment.client._send(
                "POST", f"/api/v2/dags/{SMOKE}/dagRuns",
                {"dag_run_id": r, "logical_date": None, "conf": {}}))
        assert refused.value.status in (400, 422), (run_id, str(refused.value))
    assert {r["dag_run_id"] for r in deployment.runs(SMOKE)} == before
    assert deployment.runs(OVERRIDABLE) == []
    assert not (deployment.artifacts.parent / "escape").exists()
    _no_markers(deployment)
    measure("bad input hostile trigger params", deployment.kind,
            rest_refused=len(HOSTILE_CONF) + len(guarded) + 3, cli_refused=1, runs_created=0)


def _post_anonymously(live: Live, dag_id: str, conf: dict[str, Any]) -> tuple[int, str]:
    """A trigger without credentials: Airflow's own 401, never the guard's answer."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{live.client.base_url}/api/v2/dags/{dag_id}/dagRuns", method="POST",
        data=json.dumps({"logical_date": None, "conf": conf}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def rejected_specs(deployment: Live) -> Iterator[list[Path]]:
    """Two invalid specs in the DAG folder, registered; removed and re-registered after."""
    files = write_rejected(deployment.root)
    try:
        deployment.airflow("dags", "reserialize", timeout=300)
        yield files
    finally:
        for path in files:
            path.unlink(missing_ok=True)
        deployment.airflow("dags", "reserialize", timeout=300)


def _placeholder_doc(live: Live, spec: Path) -> str:
    """The docs of the marked DAG that stands for a broken spec (see peftflow/airflow/loader.py)."""
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in spec.stem.lower())
    path = f"/api/v2/dags/invalid_spec__{stem}/details"
    details = live.api(lambda: live.client._send("GET", path))
    assert "invalid-spec" in {t["name"] for t in details["tags"]}
    return str(details["doc_md"])


def test_invalid_specs_become_marked_placeholders_that_fail_and_execute_nothing(
        deployment: Live, rejected_specs: list[Path], measure: Callable[..., None]) -> None:
    """Each invalid spec becomes a paused DAG tagged invalid-spec carrying its problems
    (FILE:LINE:COL: $.path: message); triggered, it fails with them; nothing executes."""
    live = deployment
    dags = {d["dag_id"]: d for d in _dags(live)}
    few, hostile_dag = f"{INVALID_PREFIX}{TOO_FEW_STATIC}", f"{INVALID_PREFIX}hostile"
    assert TOO_FEW_STATIC not in dags
    for dag_id in (few, hostile_dag):
        assert dag_id in dags and dags[dag_id]["is_paused"], sorted(dags)
        assert "invalid-spec" in {t["name"] for t in dags[dag_id]["tags"]}
    docs = {d: str(live.api(lambda d=d: live.client._send("GET", f"/api/v2/dags/{d}/details"))
                   ["doc_md"]) for d in (few, hostile_dag)}
    assert f"{TOO_FEW_STATIC}.yaml:" in docs[few] and "lower epoch_steps" in docs[few], docs[few]
    for path in ("$.dag_id", "$.owner", "$.tags[0]", "$.training_profile", "$.dataset.name",
                 "$.eval_suites[0]"):
        assert "hostile.yaml:" in docs[hostile_dag] and path in docs[hostile_dag], path
    errors = live.api(lambda: live.client._send("GET", "/api/v2/importErrors"))
    assert errors["import_errors"] == [], errors  # an import error would stop every DAG
    live.api(lambda: live.client.unpause(hostile_dag))
    run_id = live.trigger_rest(hostile_dag, {})
    took = live.wait_for(hostile_dag, run_id, "failed", timeout=300)
    log = live.task_log(hostile_dag, run_id, "spec_problems", 1)
    assert "is not a valid spec" in log and "$.owner" in log, log[-3000:]
    validate = live.peftflow("validate", str(rejected_specs[1]), check=False)
    assert validate.returncode != 0 and "$.owner" in validate.stdout + validate.stderr
    _no_markers(live)
    lines = [line for line in docs[hostile_dag].splitlines() if "hostile.yaml:" in line]
    print("\n".join(lines))
    measure("bad input invalid specs", live.kind, placeholders=[few, hostile_dag],
            hostile_problems=len(lines), placeholder_run="failed",
            placeholder_run_s=round(took, 1), markers_created=0)


def test_an_invalid_spec_leaves_the_other_dags_schedulable(
        deployment: Live, rejected_specs: list[Path]) -> None:
    """Airflow 3.3 marks every DAG of a file with an import error stale and untriggerable:
    the loader must not turn a broken spec into one."""
    rows = deployment.db_rows("SELECT dag_id, is_stale, has_import_errors FROM dag", ())
    flags = {d: (bool(s), bool(e)) for d, s, e in rows if d in deployment.dag_ids}
    assert flags == dict.fromkeys(deployment.dag_ids, (False, False)), flags


def _dags(live: Live) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"limit": 100})
    answer = live.api(lambda: live.client._send("GET", f"/api/v2/dags?{query}"))
    return list(answer["dags"])
