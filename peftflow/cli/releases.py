"""`peftflow releases list|show|blocked`: read the release registry."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from peftflow.exitcodes import ExitCode


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "releases", help="list and inspect released adapters",
        description="Released adapters under <releases_root>/<profile>/<version>/.",
    )
    sub = parser.add_subparsers(dest="releases_command", metavar="ACTION", required=True)
    show_list = sub.add_parser("list", help="every release, oldest first")
    show_list.add_argument("--profile", metavar="P", help="only releases of this profile")
    show_list.add_argument("--json", action="store_true", help="one JSON object per line")
    show_list.set_defaults(func=_list)
    show = sub.add_parser("show", help="one release's manifest")
    show.add_argument("profile", metavar="PROFILE")
    show.add_argument("version", metavar="VERSION")
    show.add_argument("--json", action="store_true", help="print the manifest as JSON")
    show.add_argument("--verify", action="store_true",
                      help="rehash every file of the release; exit 5 on a mismatch")
    show.set_defaults(func=_show)
    blocked = sub.add_parser("blocked", help="runs the release gate blocked, oldest first")
    blocked.add_argument("--profile", metavar="P", help="only this profile")
    blocked.add_argument("--json", action="store_true", help="one JSON object per line")
    blocked.set_defaults(func=_blocked)


def _summary(release: Any) -> dict[str, Any]:
    return {
        "profile": release.profile, "version": release.version,
        "created_at": release.created_at, "dag_id": release.dag_id, "run_id": release.run_id,
        "adapter_sha256": release.adapter_sha256, "overridden": release.doc["gate"]["overridden"],
        "dir": str(release.dir), "manifest": str(release.manifest_path),
        "metrics": str(release.metrics_path),
    }


def _list(args: argparse.Namespace) -> int:
    from peftflow.cli import main as cli
    from peftflow.release import registry

    found, problems = registry.scan(args.profile)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.json:
        for release in found:
            print(json.dumps(_summary(release), ensure_ascii=False))
        if not found:
            print(f"no releases under {registry.root_dir()}", file=sys.stderr)
        return 0
    rows = [(r["profile"], r["version"], r["created_at"], f"{r['dag_id']}/{r['run_id']}",
             r["adapter_sha256"][:12], "override" if r["overridden"] else "passed")
            for r in map(_summary, found)]
    cli.print_table(("profile", "version", "created_at", "run", "adapter", "gate"), rows,
                    empty=f"no releases under {registry.root_dir()}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from peftflow.release import registry

    release = registry.get_release(args.profile, args.version)
    if args.json:
        print(json.dumps(release.doc, indent=2, ensure_ascii=False))
    else:
        doc = release.doc
        print(f"{release.profile} {release.version}  created {release.created_at}")
        print(f"  folder    {release.dir}")
        print(f"  adapter   {release.adapter_path}  sha256 {release.adapter_sha256}")
        print(f"  base      {doc['base_model']['path']}  sha256 {doc['base_model']['sha256']}")
        print(f"  dataset   {doc['dataset']['name']} {doc['dataset']['version']}")
        print(f"  run       {release.dag_id} / {release.run_id} "
              f"(try {doc['airflow']['try_number']})")
        print(f"  commit    {doc['project']['commit']}"
              + (" (dirty)" if doc["project"]["dirty"] else ""))
        gate = "override" if doc["gate"]["overridden"] else "passed"
        print(f"  gate      {gate}: eval {doc['gate']['eval_verdict']}, "
              f"dataset {doc['gate']['quality_verdict']}")
        if "baseline" not in doc:
            print("  baseline  not recorded (released before baselines were recorded)")
        elif doc["baseline"] is None:
            print("  baseline  none (first release / no comparison)")
        else:
            base = doc["baseline"]
            print(f"  baseline  {base['profile']} {base['version']}  "
                  f"metrics sha256 {base['metrics_sha256']}")
        for name, suite in sorted(doc["metrics"].items()):
            change = suite.get("relative_change")
            shown = f"{change * 100:+.2f} %" if isinstance(change, int | float) else "-"
            print(f"  suite     {name}: loss {suite.get('base_loss')} -> "
                  f"{suite.get('adapted_loss')} ({shown})")
        print(f"  report    {release.dir / doc['files']['report']}")
    if args.verify:
        problems = registry.verify_release(release)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            return int(ExitCode.INTEGRITY)
        print(f"OK: {len(release.doc['files_sha256'])} files match the manifest",
              file=sys.stderr)
    return 0


def _blocked(args: argparse.Namespace) -> int:
    from peftflow.cli import main as cli
    from peftflow.release import registry

    records = registry.list_blocked(args.profile)
    if args.json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
        if not records:
            print("no blocked releases", file=sys.stderr)
        return 0
    rows = []
    for record in records:
        reasons = record.get("reasons") or ["-"]
        first = [str(record.get("ts")), str(record.get("profile")),
                 f"{record.get('dag_id')}/{record.get('run_id')}"]
        rows.append([*first, reasons[0]])
        rows.extend(["", "", "", reason] for reason in reasons[1:])
    cli.print_table(("ts", "profile", "run", "reasons"), rows, empty="no blocked releases")
    return 0
