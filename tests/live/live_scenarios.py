"""The specs, datasets and scripts each live test needs, written before the services start
(so one `airflow dags reserialize` registers every DAG at once). Invalid specs are written
only by the test about them (write_rejected): under Airflow 3.3 one invalid spec marks every
DAG of the loader file stale (see test_live_bad_input.py).

Specs are copies of dag_specs/rwkv7_smoke_cpu.yaml with another dag_id, profile or dataset.
Profiles live in tests/fixtures/live/profiles/. Everything else is written under the
deployment's temp root, which PEFTFLOW_ALLOWED_ROOTS admits.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILES = "tests/fixtures/live/profiles"
TINY = f"{PROFILES}/tiny_cpu.yaml"  # 5 steps x 1 epoch
FAULT = f"{PROFILES}/fault_cpu.yaml"  # 3 epochs of 10 steps, a checkpoint after each
RETRAIN_PROFILE = f"{PROFILES}/retrain_cpu.yaml"
SMOKE_DATA = ROOT / "data/smoke/pydoc-docs/v1/train.jsonl"
PWNED = Path(tempfile.gettempdir()) / "PWNED_peftflow_live"  # the brief's classic marker

SMOKE = "live_smoke"
LOAD = "live_load"
KILL_TRAIN = "live_kill_train"
KILL_SCHEDULER = "live_kill_scheduler"
NO_ARTIFACT = "live_no_artifact"
DISK_FULL = "live_disk_full"
BAD_LINES = "live_bad_lines"
HASH_MISMATCH = "live_hash_mismatch"
TOO_FEW = "live_too_few"
TOO_FEW_STATIC = "live_too_few_static"  # rejected when parsed (see write_rejected)
INJECTION = "live_injection"
INJECTION_ALL = "live_injection_all"  # rejected when parsed (hostile dag_id and all)
RETRAIN = "live_retrain"
BACKFILL = "live_backfill"
OVERRIDABLE = "live_overridable"  # gate.allow_override: true (the trigger guard's test)
RETRAIN_DATASET = "live-docs"
# The pause policy (spec start_paused, default paused only for cron DAGs) leaves exactly this
# DAG paused; unpausing a cron DAG with catchup off starts its latest run at once, so the
# backfill test unpauses it itself.
GPUS = "live_gpus"  # the 2-device deployment (write_gpus): 1-device runs
GPUS_PAIR = "live_gpus_pair"  # ... and a profile with runtime.devices: 2
FAKE_DEVICES = ("0", "1")
EDGE = "live_edge"  # the edge deployment (write_edge): GPU stages on two Edge workers
EDGE_FAULT = "live_edge_fault"  # ... a worker killed during training (checkpoints per epoch)
PAUSED_AT_START = (BACKFILL,)
# Notifications (test_live_notify.py): a release, a blocked gate, a failure whose retries run
# out, receivers that are down, and a deadline passed during training. Their own profile name,
# so the release asset peftflow-release://live-notify-cpu belongs to these runs alone.
NOTIFY_OK = "live_notify_ok"
NOTIFY_BLOCKED = "live_notify_blocked"
NOTIFY_FAILED = "live_notify_failed"  # train_adapter.sh exits 75 (retryable) for this DAG
NOTIFY_DOWN = "live_notify_down"
NOTIFY_SLOW = "live_notify_slow"
NOTIFY_PROFILE = "live-notify-cpu"
OVERDUE_AFTER_S = 12
CONSUMER = "live_release_consumer"  # a team's own DAG, scheduled on the release asset


def docs(start: int, count: int) -> list[str]:
    lines = SMOKE_DATA.read_text(encoding="utf-8").splitlines()
    return lines[start:start + count]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def register(path: Path, name: str, version: str) -> Path:
    from peftflow.dataset.manifest import register_dataset

    manifest, _ = register_dataset(path, name, version, source="tests/live")
    return Path(manifest)


def hostile(markers: Path, field: str) -> str:
    """Every shell trick we know, each one aimed at creating its own marker file."""
    m = {k: shlex.quote(str(markers / f"{field}-{k}")) for k in ("sub", "semi", "tick", "and")}
    return (f"x $(touch {m['sub']}) ; touch {m['semi']} `touch {m['tick']}` && touch "
            f"{m['and']} | tee {PWNED} ${{IFS}}$((1+1)) \"'")


def _spec(dag_id: str, profile: str = TINY, **changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "dag_specs/rwkv7_smoke_cpu.yaml").read_text())
    doc.update({"dag_id": dag_id, "training_profile": profile,
                "description": f"tests/live scenario {dag_id}", "tags": ["live-test"]})
    doc.update(changes)
    return dict(doc)


def _write(folder: Path, doc: dict[str, Any]) -> None:
    name = doc["dag_id"] if doc["dag_id"].isidentifier() else "hostile"
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def _double(scripts: Path, stage: str, dag_id: str, why: str, body: str) -> None:
    """scripts/<stage>.sh that runs `body` for DAG `dag_id` and the real stage for the rest."""
    real = shlex.quote(str(ROOT / "scripts" / f"{stage}.sh"))
    (scripts / f"{stage}.sh").write_text(
        "#!/usr/bin/env bash\n"
        f"# Test double (tests/live): {why} for one DAG.\n"
        "set -euo pipefail\n"
        f'if [[ "${{PEFTFLOW_DAG_ID:-}}" == "{dag_id}" ]]; then\n'
        f"{body}fi\n"
        f'exec {real} "$@"\n')


def _scripts(root: Path) -> Path:
    """A copy of scripts/ with two test doubles: prepare_dataset.sh exits 0 without writing
    anything for DAG live_no_artifact, train_adapter.sh fails with a resource error (75,
    retried) for live_notify_failed; every other DAG runs the real stages."""
    scripts = root / "scripts"
    shutil.copytree(ROOT / "scripts", scripts)
    _double(scripts, "prepare_dataset", NO_ARTIFACT, "succeeds without its artifact",
            '  echo "prepare_dataset (test double): exiting 0 without writing anything"\n'
            "  exit 0\n")
    _double(scripts, "train_adapter", NOTIFY_FAILED, "a resource failure (75, retried)",
            '  echo "train_adapter (test double): CUDA out of memory (simulated)" >&2\n'
            "  exit 75\n")
    return scripts


def _consumer_dag(root: Path) -> None:
    """The README's downstream DAG, writing each release it hears of to a file."""
    received = root / "received"
    (root / "project" / "dags" / f"{CONSUMER}.py").write_text(f'''"""A team's own DAG (tests/live).

It runs on each new {NOTIFY_PROFILE} release.
"""
import json
from pathlib import Path

from airflow.sdk import Asset, dag, task

RELEASES = Asset("peftflow-release://{NOTIFY_PROFILE}")


@dag(dag_id="{CONSUMER}", schedule=RELEASES, is_paused_upon_creation=False,
     tags=["live-test"])
def consumer():
    @task
    def deploy(triggering_asset_events=None):
        for event in triggering_asset_events[RELEASES]:
            out = Path({str(received)!r}) / (event.extra["version"] + ".json")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(event.extra))
            print("deploying", event.extra["version"], event.extra["manifest"])

    deploy()


consumer()
''')


def _notify_specs(root: Path, gate: dict[str, Any]) -> list[dict[str, Any]]:
    import receivers as rx

    profile = yaml.safe_load((ROOT / TINY).read_text())
    profile["name"] = NOTIFY_PROFILE
    (root / "notify_profile.yaml").write_text(yaml.safe_dump(profile))
    slow = yaml.safe_load((ROOT / FAULT).read_text())
    slow["name"] = "live-notify-slow-cpu"
    (root / "notify_slow_profile.yaml").write_text(yaml.safe_dump(slow))

    def channels(smtp: str, slack: str) -> dict[str, Any]:
        return {"channels": [{"type": "email", "connection": smtp, "to": ["team@example.com"]},
                             {"type": "slack", "connection": slack,
                              "events": ["run_failed", "release_blocked", "released"]}]}

    both = channels(rx.SMTP_CONN, rx.SLACK_CONN)
    fast_retry = {"default": {"retries": 1, "retry_delay_s": 1}}
    _consumer_dag(root)
    return [
        _spec(NOTIFY_OK, profile=str(root / "notify_profile.yaml"), notify=both),
        _spec(NOTIFY_BLOCKED, profile=str(root / "notify_profile.yaml"), notify=both,
              gate={**gate, "domain": {"min_loss_improvement": 0.99}}),
        _spec(NOTIFY_FAILED, profile=str(root / "notify_profile.yaml"), notify=both,
              retries=fast_retry),
        _spec(NOTIFY_DOWN, profile=str(root / "notify_profile.yaml"),
              notify=channels(rx.DOWN_SMTP_CONN, rx.DOWN_SLACK_CONN)),
        _spec(NOTIFY_SLOW, profile=str(root / "notify_slow_profile.yaml"),
              notify={"channels": [{"type": "slack", "connection": rx.SLACK_CONN,
                                    "events": ["training_overdue"]}],
                      "training_overdue_after_s": OVERDUE_AFTER_S}),
    ]


def write_all(root: Path, kind: str) -> list[str]:
    """Write the scenario files of a deployment; the DAG ids that must exist."""
    specs = root / "project" / "dag_specs"
    built = [SMOKE]
    profile = "configs/profiles/smoke_cpu.yaml"
    if kind != "sqlite":
        # PostgreSQL checks the database, not the training: the smoke profile with 10 steps
        # instead of 50 (same name, so the release assertions are shared), which keeps the
        # whole suite inside CI's time. SQLite runs the shipped profile.
        short = yaml.safe_load((ROOT / profile).read_text())
        short["training"].update(epoch_steps=10, epoch_count=1)
        profile = str(root / "smoke_short.yaml")
        Path(profile).write_text(yaml.safe_dump(short))
    smoke = _spec(SMOKE, profile=profile, description="Copy of the smoke spec (tests/live).")
    _write(specs, smoke)
    if kind != "sqlite":
        return built
    data, markers = root / "data", root / "markers"
    markers.mkdir()
    _scripts(root)
    # Bad input: malformed lines; data edited after registration; too few documents.
    good = docs(0, 60)
    bad = [*good[:20], '{"text": "unterminated', "not json at all", '{"topic": "no text"}',
           *good[20:]]
    bad_manifest = register(write_jsonl(data / "bad-lines/v1/train.jsonl", bad),
                            "live-bad-lines", "v1")
    edited = write_jsonl(data / "edited/v1/train.jsonl", good)
    edited_manifest = register(edited, "live-edited", "v1")
    text = edited.read_text(encoding="utf-8")
    i = text.index("the ")
    edited.write_text(text[:i] + "The " + text[i + 4:], encoding="utf-8")  # same size
    few_manifest = register(write_jsonl(data / "few/v1/train.jsonl", docs(0, 5)),
                            "live-few", "v1")
    retrain_v1 = register(write_jsonl(data / f"{RETRAIN_DATASET}/v1/train.jsonl",
                                      docs(0, 120)), RETRAIN_DATASET, "v1")
    # Shell injection: every free-text field of a spec and a profile carries it.
    inject_profile = yaml.safe_load((ROOT / TINY).read_text())
    inject_profile.update({"name": "live-inject-cpu",
                           "description": hostile(markers, "profile-description")})
    (root / "inject_profile.yaml").write_text(yaml.safe_dump(inject_profile))
    docs_by_id = [
        _spec(LOAD, max_active_runs=5),
        _spec(KILL_TRAIN, profile=FAULT),
        _spec(KILL_SCHEDULER, profile=FAULT),
        _spec(NO_ARTIFACT),
        _spec(DISK_FULL),
        _spec(BAD_LINES, dataset={"manifest": str(bad_manifest)}),
        _spec(HASH_MISMATCH, dataset={"manifest": str(edited_manifest)}),
        _spec(TOO_FEW, trigger={"note_max_length": 500,
                                "allowed_manifests": [str(few_manifest)]}),
        _spec(INJECTION, profile=str(root / "inject_profile.yaml"),
              description=hostile(markers, "description")),
        _spec(RETRAIN, profile=RETRAIN_PROFILE, kind="retrain_on_new_dataset",
              dataset={"name": RETRAIN_DATASET, "manifest": str(retrain_v1)},
              gate={**smoke["gate"], "compare_to_release": {"tolerance": 0.01}},
              max_active_runs=1),
        _spec(OVERRIDABLE, gate={**smoke["gate"], "allow_override": True}),
        _spec(BACKFILL, schedule={"enabled": True, "cron": "0 3 * * *", "timezone": "UTC",
                                  "catchup": False}),
        *_notify_specs(root, smoke["gate"]),
    ]
    for doc in docs_by_id:
        _write(specs, doc)
        built.append(doc["dag_id"])
    return built


def write_gpus(root: Path) -> list[str]:
    """The multi-GPU deployment: an inventory of two fake devices (the CPU trainer needs no
    GPU; the lease and the environment are what is tested), a DAG of 1-device runs and one
    whose profile trains on both devices."""
    (root / "devices.yaml").write_text("devices:\n" + "".join(
        f'  - {{id: "{d}"}}\n' for d in FAKE_DEVICES))
    pair = yaml.safe_load((ROOT / TINY).read_text())
    pair["name"] = "live-pair-cpu"
    pair["runtime"]["devices"] = 2
    (root / "pair_profile.yaml").write_text(yaml.safe_dump(pair))
    specs = root / "project" / "dag_specs"
    _write(specs, _spec(GPUS, max_active_runs=8))
    _write(specs, _spec(GPUS_PAIR, profile=str(root / "pair_profile.yaml")))
    return [GPUS, GPUS_PAIR]


def write_edge(root: Path) -> list[str]:
    """The edge deployment: the main host's inventory lists the two fake devices (pool gpu:
    2 slots, the cluster-wide cap); each Edge worker serves one of them."""
    (root / "devices.yaml").write_text("devices:\n" + "".join(
        f'  - {{id: "{d}"}}\n' for d in FAKE_DEVICES))
    specs = root / "project" / "dag_specs"
    _write(specs, _spec(EDGE, max_active_runs=8))
    _write(specs, _spec(EDGE_FAULT, profile=FAULT))
    return [EDGE, EDGE_FAULT]


def write_rejected(root: Path) -> list[Path]:
    """Two specs the loader must refuse: too few documents, and hostile text everywhere."""
    specs = root / "project" / "dag_specs"
    few = root / "data/few/v1/train.manifest.json"
    _write(specs, _spec(TOO_FEW_STATIC, dataset={"manifest": str(few)}))
    _write(specs, hostile_spec(root / "markers"))
    return [specs / f"{TOO_FEW_STATIC}.yaml", specs / "hostile.yaml"]


def hostile_spec(markers: Path) -> dict[str, Any]:
    """A spec with a shell-injection attempt in every string field: it must be rejected."""
    def h(field: str) -> str:
        return hostile(markers, field)

    return _spec(
        f"{INJECTION_ALL}$(touch {markers}/dag_id)", profile=f"x$(touch {markers}/p).yaml",
        description=h("description"), owner=h("owner"), tags=[h("tag")],
        dataset={"manifest": f"data/`touch {markers}/manifest`.manifest.json",
                 "name": h("dataset-name")},
        eval_suites=[f"configs/eval/;touch {markers}/suite;.yaml"],
        schedule={"enabled": True, "cron": f"0 3 * * * ; touch {markers}/cron",
                  "timezone": h("timezone")},
        trigger={"note_max_length": 10,
                 "allowed_manifests": [f"$(touch {markers}/allowed).manifest.json"]},
    )

