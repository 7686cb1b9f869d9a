"""`peftflow audit show|verify`: read and check the audit trail."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from peftflow import audit


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


def _row(event: dict[str, Any]) -> str:
    where = "/".join(str(event[k]) for k in ("dag_id", "run_id", "task_id") if event.get(k))
    if event.get("try_number") is not None:
        where += f" try {event['try_number']}"
    extra = [f"{k}={event[k]}" for k in ("actor", "outcome", "verdict") if event.get(k)]
    if event.get("duration_s") is not None:
        extra.append(f"{event['duration_s']:.1f}s")
    if event.get("note"):
        extra.append(f"note={event['note']!r}")
    return f"{event.get('seq', '?'):>5} {event.get('ts', '?')} {event.get('event', '?'):<18} " \
           f"{where} {' '.join(extra)}".rstrip()


def _show(args: argparse.Namespace) -> int:
    path = audit.log_path(args.log)
    if not path.exists():
        print(f"{path}: no audit log yet (nothing has run)", file=sys.stderr)
        return 0
    count = 0
    for event in audit.events(path, dag_id=args.dag, run_id=args.run):
        count += 1
        print(json.dumps(event, ensure_ascii=False) if args.json else _row(event))
    if not args.json:
        print(f"{count} event(s) in {path}", file=sys.stderr)
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
        print(f"FAILED: {len(problems)} problem(s) in {path}", file=sys.stderr)
        return 1
    count = sum(1 for _ in audit.events(path))
    print(f"OK: {count} events, chain intact ({path})")
    return 0
