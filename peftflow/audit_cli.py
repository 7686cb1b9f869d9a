"""`peftflow audit show|verify`: read and check the audit trail."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from peftflow import audit, cli


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit", help="show or verify the audit trail",
        description="The append-only, hash-chained audit trail of every task attempt and gate.",
    )
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="list events, optionally of one DAG and/or run")
    show.add_argument("--dag", metavar="DAG_ID", help="only events of this DAG id")
    show.add_argument("--run", metavar="RUN_ID", help="only events of this run id")
    show.add_argument("--json", action="store_true", help="one JSON event per line")
    show.add_argument("--log", metavar="PATH", help="audit log (default: settings audit_log)")
    show.set_defaults(func=_show)
    check = sub.add_parser("verify", help="check the hash chain; exit 1 naming each bad line")
    check.add_argument("--log", metavar="PATH", help="audit log (default: settings audit_log)")
    check.set_defaults(func=_verify)


HEADERS = ("seq", "ts", "event", "where", "details")


def _subject(event: dict[str, Any]) -> list[str]:
    """What the event is about when that lives in `details`: a dataset, release or switch."""
    details = event.get("details") or {}
    kind = str(event.get("event", ""))
    if kind.startswith("dataset_"):
        return [f"dataset={details.get('name', '?')}", f"version={details.get('version', '?')}"]
    if kind.startswith("release_"):
        return [f"release={details.get('profile', '?')}/{details.get('version', '?')}"]
    if kind == "profile_switched":
        return [f"profile={details.get('from', '?')}->{details.get('to', '?')}"]
    return []


def _row(event: dict[str, Any]) -> list[str]:
    where = "/".join(str(event[k]) for k in ("dag_id", "run_id", "task_id") if event.get(k))
    if event.get("try_number") is not None:
        where += f" try {event['try_number']}"
    extra = _subject(event)
    extra += [f"{k}={event[k]}" for k in ("actor", "outcome", "verdict") if event.get(k)]
    if event.get("duration_s") is not None:
        extra.append(f"{event['duration_s']:.1f}s")
    if event.get("note"):
        extra.append(f"note={event['note']!r}")
    return [str(event.get("seq", "?")), str(event.get("ts", "?")), str(event.get("event", "?")),
            where.strip() or "-", " ".join(extra)]


def _show(args: argparse.Namespace) -> int:
    path = audit.log_path(args.log)
    found = list(audit.events(path, dag_id=args.dag, run_id=args.run)) if path.exists() else []
    if not path.exists():
        print(f"{path}: no audit log yet (nothing has run)", file=sys.stderr)
    if args.json:
        for event in found:
            print(json.dumps(event, ensure_ascii=False))
        if not found:
            print("no audit events", file=sys.stderr)
        return 0
    cli.print_table(HEADERS, (_row(e) for e in found), empty="no audit events")
    if found:
        print(f"{len(found)} event(s) in {path}", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    path = audit.log_path(args.log)
    if not path.exists():
        print(f"error: {path}: audit log not found", file=sys.stderr)
        return 1
    problems = audit.verify(path)
    if problems:
        for problem in problems:
            print(problem)
        print(f"FAILED: {len(problems)} problem(s) in {path}")
        return 1
    count = sum(1 for _ in audit.events(path))
    print(f"OK: {count} events, chain intact ({path})")
    return 0
