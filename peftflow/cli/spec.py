"""`peftflow validate | render | list`: the spec commands, usable in CI and pre-commit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.airflow import edge, expand
from peftflow.cli import main as cli
from peftflow.errors import PeftflowError, Problem, SpecError
from peftflow.spec import validate
from peftflow.store import paths as store_paths


def _default_paths(paths: list[str]) -> list[Path]:
    return [Path(p) for p in paths] or [settings.get().project_root / "dag_specs"]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _orchestration_problems() -> list[Problem]:
    """configs/orchestration.yaml decides whether any DAG is built: a broken one is a
    problem of `validate` too, not only of the loader."""
    from peftflow.spec import orchestration

    path = settings.get().orchestration_config
    try:
        orchestration.load(path)
    except SpecError as exc:
        return exc.problems
    except PeftflowError as exc:
        return [Problem(store_paths.display_path(path), 1, 1, "$", str(exc))]
    except ValueError as exc:  # an unknown profile name that the schema let through
        return [Problem(store_paths.display_path(path), 1, 1, "$.active_profile", str(exc))]
    return []


def cmd_validate(args: argparse.Namespace) -> int:
    paths = _default_paths(args.paths)
    missing = [p for p in paths if not p.exists()]
    for path in missing:
        print(f"{path}:1:1: $: file or folder not found")
    config_problems = _orchestration_problems()
    for problem in config_problems:
        print(problem)
    result = validate.validate_paths([p for p in paths if p.exists()])
    for problem in result.problems:
        print(problem)
    failed = bool(result.errors or missing or config_problems)
    if args.quiet:
        return 1 if failed else 0
    valid = _plural(len(result.specs), "spec") + " valid"
    if failed:
        problems = len(result.problems) + len(missing) + len(config_problems)
        files = len(result.errors) + len(missing) + bool(config_problems)
        print(f"{_plural(problems, 'problem')} in {_plural(files, 'file')}"
              + (f", {valid}" if result.specs else ""))
    elif result.specs:
        print(valid)
    else:
        print(f"no specs in {', '.join(store_paths.display_path(p) for p in paths)}")
    return 1 if failed else 0


def cmd_render(args: argparse.Namespace) -> int:
    spec = validate.load_spec(Path(args.spec))
    config = expand.dag_config(spec, edge=edge.enabled())
    print(json.dumps(config, indent=2) if args.json else expand.render_yaml(config), end="")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    result = validate.validate_paths(_default_paths(args.paths))
    rows: list[dict[str, Any]] = []
    for spec in result.specs:
        if spec.kind.value == "retrain_on_new_dataset":
            schedule = f"on {expand.dataset_asset_uri(spec.dataset_name or '?')}"
        elif spec.schedule.enabled:
            schedule = f"cron '{spec.schedule.cron}' {spec.schedule.timezone}"
        else:
            schedule = "manual"
        rows.append({"spec": store_paths.display_path(spec.path), "dag_id": spec.dag_id,
                     "kind": spec.kind.value, "profile": spec.training_profile,
                     "schedule": schedule, "valid": True})
    for path, error in result.errors.items():
        rows.append({"spec": store_paths.display_path(path), "dag_id": "-", "kind": "-",
                     "profile": "-", "schedule": "-", "valid": False,
                     "problems": len(error.problems)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ("spec", "dag_id", "kind", "profile", "schedule", "status")
    cli.print_table(headers, ([*(row[h] for h in headers[:-1]), "valid" if row["valid"] else
                               f"INVALID: {_plural(row['problems'], 'problem')}, run peftflow "
                               "validate"] for row in rows), empty="no specs")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("validate", help="validate DAG specs (default: dag_specs/)",
                              description="Validate specs: JSON Schema plus semantic checks. "
                              "One line per problem: FILE:LINE:COL: $.path: message. Exit 0 "
                              "when all are valid, 1 otherwise.")
    p.add_argument("paths", nargs="*", help="spec files or folders (default: dag_specs/)")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    p.set_defaults(func=cmd_validate)
    p = subparsers.add_parser("render", help="print the dag-factory config a spec expands to")
    p.add_argument("spec", help="a spec file")
    p.add_argument("--json", action="store_true", help="JSON instead of YAML")
    p.set_defaults(func=cmd_render)
    p = subparsers.add_parser("list", help="list specs, dag ids and schedules")
    p.add_argument("paths", nargs="*", help="spec files or folders (default: dag_specs/)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_list)
