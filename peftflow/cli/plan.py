"""`peftflow plan SPEC`: what triggering the DAG now would run, and what it would reuse.

A dry run: nothing is started and no artifact is written (only the base-model hash cache may
be filled). Stage by stage it builds the plan a task would build (argv, input hashes, cache
key) and looks the key up in the same cache the tasks use. A reused stage's recorded outputs
feed the next stage's plan exactly as XCom does in a run; after the first stage that would
run, later keys depend on outputs that do not exist yet, so those stages show no key. After a
stage whose inputs are rejected nothing runs: the later stages show `blocked (upstream)`.

`--dataset-event MANIFEST` plans a retrain run as the dataset event of that version would
start it: the event's extra is built exactly as `peftflow dataset register` announces it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.airflow import expand, triggers
from peftflow.airflow.expand import GATE_TASK
from peftflow.errors import ConfigError, PeftflowError
from peftflow.run import plan, stages
from peftflow.run import reuse as cache
from peftflow.run.runinfo import RunInfo
from peftflow.spec import validate
from peftflow.spec.model import Spec, SpecKind
from peftflow.store import paths

PARAMS = ("training_profile", "dataset_manifest", "force_rerun")
RUN_ID = "dry-run"  # only names the folders in the shown argv; a real run uses its own id
UPSTREAM_BLOCKED = "blocked_upstream"
SHOWN = {UPSTREAM_BLOCKED: "blocked (upstream)"}  # text output of an action, where it differs


@dataclass(frozen=True)
class Step:
    stage: str
    action: str  # reuse | run | blocked | blocked_upstream | gate
    detail: str
    cache_key: str | None = None
    argv: list[str] = field(default_factory=list)


def _params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in PARAMS:
            raise ConfigError(f"--param {pair!r}: use NAME=VALUE with NAME one of "
                              f"{', '.join(PARAMS)}")
        params[name] = value.lower() in {"1", "true", "yes"} if name == "force_rerun" else value
    return params


def dataset_event(spec: Spec, manifest: str) -> dict[str, Any]:
    """The extra of the asset event that registering `manifest` emits, for a retrain spec."""
    from peftflow.dataset.manifest import load_manifest

    if spec.kind is not SpecKind.RETRAIN:
        raise ConfigError(f"--dataset-event {manifest}: {paths.display_path(spec.path)} is "
                          f"a {spec.kind.value} spec, which no dataset event starts; plan "
                          "another dataset with --param dataset_manifest=... (one of its "
                          "trigger.allowed_manifests)")
    loaded = load_manifest(paths.resolve_ref(manifest))
    if loaded.name != spec.dataset_name:
        raise ConfigError(f"--dataset-event {manifest}: registers dataset {loaded.name!r}, but "
                          f"{spec.dag_id} is scheduled on "
                          f"{expand.dataset_asset_uri(str(spec.dataset_name))}; its event would "
                          "not start this DAG")
    return triggers.event_extra(loaded.path, loaded.name, loaded.version)


def _gate_detail(spec: Spec, run: RunInfo) -> str:
    detail = ("decides from quality.json and verdict.json of this run; blocks the release "
              "on a fail")
    if not spec.gate.compare_to_release:
        return detail
    from peftflow.release import registry

    try:
        name = plan.profile_name(spec, run)
        current = registry.current_release(name)
    except PeftflowError as exc:
        return f"{detail}; cannot tell the release it would compare with: {exc}"
    if current is None:
        return f"{detail}; no release of {name} yet, so no comparison with a release"
    return (f"{detail}; compares with release {current.profile} {current.version} "
            "(the current one now)")


def steps(spec: Spec, params: dict[str, Any],
          asset_extra: dict[str, Any] | None = None) -> list[Step]:
    """The stages of a run triggered now with `params` (or by an asset event), in order."""
    run = RunInfo(dag_id=spec.dag_id, run_id=RUN_ID, task_id="", try_number=1,
                  actor="asset" if asset_extra else settings.current_user(),
                  run_type="asset_triggered" if asset_extra else "manual", params=params,
                  asset_extra=dict(asset_extra or {}))
    upstream: dict[str, dict[str, Any]] = {}
    found: list[Step] = []
    waiting_for: str | None = None  # the first stage that runs: later keys are unknown
    blocked_by: str | None = None  # the stage whose inputs were rejected: nothing after runs
    for task_id in expand.task_order():
        if task_id == GATE_TASK:
            found.append(Step(GATE_TASK, UPSTREAM_BLOCKED if blocked_by else "gate",
                              f"{blocked_by} is blocked" if blocked_by else
                              _gate_detail(spec, run)))
            continue
        stage = stages.get(task_id)
        if blocked_by is not None:
            found.append(Step(stage.name, UPSTREAM_BLOCKED, f"{blocked_by} is blocked"))
            continue
        if waiting_for is not None:
            found.append(Step(stage.name, "run", f"after {waiting_for}: its inputs are "
                              "outputs that do not exist yet"))
            continue
        if stage.per_run:  # keyed on the run itself: never reused across runs
            found.append(Step(stage.name, "run", "when the gate passes: a new release, or "
                              "none if this adapter is already released"))
            continue
        try:
            the_plan = plan.build(stage.name, spec, run, upstream)
            for ref in the_plan.inputs.values():
                ref.verify()
        except PeftflowError as exc:
            found.append(Step(stage.name, "blocked", f"inputs rejected: {exc}"
                              + _event_hint(spec, params)))
            blocked_by = stage.name
            continue
        key = the_plan.cache_key()
        earlier = None if params.get("force_rerun") else cache.lookup(stage.name, key)
        if earlier is None:
            why = "force_rerun" if params.get("force_rerun") else "no earlier success with this key"
            found.append(Step(stage.name, "run", why, key, the_plan.argv))
            waiting_for = stage.name
            continue
        status_path = Path(earlier["_status_path"])
        found.append(Step(stage.name, "reuse", f"{status_path.parent} "
                          f"({earlier.get('finished_at', '?')})", key, the_plan.argv))
        upstream[stage.name] = plan.record(earlier, status_path, key, reused=True)
    return found


def _event_hint(spec: Spec, params: dict[str, Any]) -> str:
    """A retrain spec's rejected manifest param: the dataset event is what would pass it."""
    chosen = params.get("dataset_manifest")
    if spec.kind is not SpecKind.RETRAIN or not chosen:
        return ""
    return (f". A dataset event passes its manifest without that check: plan such a run "
            f"with --dataset-event {chosen}")


def cmd_plan(args: argparse.Namespace) -> int:
    spec = validate.load_spec(Path(args.spec))
    params = _params(args.param or [])
    extra = None
    if args.dataset_event:
        if params:
            raise ConfigError(f"--dataset-event with --param {', '.join(sorted(params))}: a "
                              "run started by a dataset event has no trigger params; leave "
                              "--param out")
        extra = dataset_event(spec, args.dataset_event)
    found = steps(spec, params, extra)
    if args.json:
        print(json.dumps([asdict(s) for s in found], indent=2))
    else:
        if extra:
            print(f"{spec.dag_id} ({paths.display_path(spec.path)}), started by the "
                  f"dataset event of {extra['name']}@{extra['version']} ({extra['manifest']}):")
        else:
            print(f"{spec.dag_id} ({paths.display_path(spec.path)}), triggered now:")
        if spec.kind is SpecKind.RETRAIN and not extra:
            print("  (a run started by a dataset event trains on that event's manifest; "
                  "this plan uses the spec's: plan an event with --dataset-event MANIFEST)")
        width = max(len(s.stage) for s in found)
        shown = [SHOWN.get(s.action, s.action) for s in found]
        action_width = max(7, *(len(a) for a in shown))
        for s, action in zip(found, shown, strict=True):
            key = f"key {s.cache_key[:12]}  " if s.cache_key else ""
            print(f"  {s.stage.ljust(width)}  {action.ljust(action_width)}  {key}{s.detail}")
            if args.argv and s.argv:
                print(f"  {' ' * (width + action_width + 4)}argv: {json.dumps(s.argv)}")
    return 1 if any(s.action == "blocked" for s in found) else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan", help="dry run: which stages a trigger now would reuse or run",
        description="Show, without running anything, what triggering the spec's DAG now would "
        "do: per stage its cache key and whether an earlier successful result is reused. "
        "Exit 1 when a stage's inputs would be rejected; the stages after it show "
        "`blocked (upstream)`.")
    p.add_argument("spec", help="a spec file")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help=f"a trigger param ({', '.join(PARAMS)}); repeatable")
    p.add_argument("--dataset-event", metavar="MANIFEST",
                   help="retrain specs: plan the run that the asset event of this registered "
                   "dataset version (a *.manifest.json) would start")
    p.add_argument("--argv", action="store_true", help="also print each stage's command")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_plan)
