"""`peftflow plan SPEC`: what triggering the DAG now would run, and what it would reuse.

A dry run: nothing is started and no artifact is written (only the base-model hash cache may
be filled). Stage by stage it builds the plan a task would build (argv, input hashes, cache
key) and looks the key up in the same cache the tasks use. A reused stage's recorded outputs
feed the next stage's plan exactly as XCom does in a run; after the first stage that would
run, later keys depend on outputs that do not exist yet, so those stages show no key.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peftflow import cache, plan, settings, validate
from peftflow.errors import ConfigError, PeftflowError
from peftflow.runinfo import RunInfo
from peftflow.spec import STAGES, Spec, SpecKind, Stage

PARAMS = ("training_profile", "dataset_manifest", "force_rerun")
RUN_ID = "dry-run"  # only names the folders in the shown argv; a real run uses its own id


@dataclass(frozen=True)
class Step:
    stage: str
    action: str  # reuse | run | blocked | gate
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


def steps(spec: Spec, params: dict[str, Any]) -> list[Step]:
    """The stages of a run triggered now with `params`, in order."""
    run = RunInfo(dag_id=spec.dag_id, run_id=RUN_ID, task_id="", try_number=1,
                  actor=settings.current_user(), run_type="manual", params=params,
                  asset_extra={})
    upstream: dict[Stage, dict[str, Any]] = {}
    found: list[Step] = []
    waiting_for: str | None = None  # the first stage that runs: later keys are unknown
    for stage in STAGES:
        if stage is Stage.RELEASE:
            found.append(Step("release_gate", "gate", "decides from quality.json and "
                              "verdict.json of this run; blocks the release on a fail"))
        if waiting_for is not None:
            found.append(Step(stage.value, "run", f"after {waiting_for}: its inputs are "
                              "outputs that do not exist yet"))
            continue
        if stage is Stage.RELEASE:  # keyed on the run itself: never reused across runs
            found.append(Step(stage.value, "run", "when the gate passes: a new release, or "
                              "none if this adapter is already released"))
            continue
        try:
            extra = {"baseline_metrics": plan.release_baseline(spec, run)}
            the_plan = plan.build(stage, spec, run, upstream, extra)
            for ref in the_plan.inputs.values():
                ref.verify()
        except PeftflowError as exc:
            found.append(Step(stage.value, "blocked", f"inputs rejected: {exc}"))
            waiting_for = stage.value
            continue
        key = the_plan.cache_key()
        earlier = None if params.get("force_rerun") else cache.lookup(stage.value, key)
        if earlier is None:
            why = "force_rerun" if params.get("force_rerun") else "no earlier success with this key"
            found.append(Step(stage.value, "run", why, key, the_plan.argv))
            waiting_for = stage.value
            continue
        status_path = Path(earlier["_status_path"])
        found.append(Step(stage.value, "reuse", f"{status_path.parent} "
                          f"({earlier.get('finished_at', '?')})", key, the_plan.argv))
        upstream[stage] = plan.record(earlier, status_path, key, reused=True)
    return found


def cmd_plan(args: argparse.Namespace) -> int:
    spec = validate.load_spec(Path(args.spec))
    found = steps(spec, _params(args.param or []))
    if args.json:
        print(json.dumps([asdict(s) for s in found], indent=2))
    else:
        print(f"{spec.dag_id} ({validate.display_path(spec.path)}), triggered now:")
        if spec.kind is SpecKind.RETRAIN:
            print("  (a run started by a dataset event trains on that event's manifest; "
                  "this plan uses the spec's, or --param dataset_manifest=...)")
        width = max(len(s.stage) for s in found)
        for s in found:
            key = f"key {s.cache_key[:12]}  " if s.cache_key else ""
            print(f"  {s.stage.ljust(width)}  {s.action:7s}  {key}{s.detail}")
            if args.argv and s.argv:
                print(f"  {' ' * width}           argv: {json.dumps(s.argv)}")
    return 1 if any(s.action == "blocked" for s in found) else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan", help="dry run: which stages a trigger now would reuse or run",
        description="Show, without running anything, what triggering the spec's DAG now would "
        "do: per stage its cache key and whether an earlier successful result is reused. "
        "Exit 1 when a stage's inputs would be rejected.")
    p.add_argument("spec", help="a spec file")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help=f"a trigger param ({', '.join(PARAMS)}); repeatable")
    p.add_argument("--argv", action="store_true", help="also print each stage's command")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_plan)
