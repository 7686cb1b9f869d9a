"""`peftflow audit show|verify|init-key|rotate-key`: read and check the trail, manage its key."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from peftflow import settings
from peftflow.cli import main as cli
from peftflow.store import audit, audit_verify
from peftflow.store import audit_key as auditkey


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit", help="show or verify the audit trail",
        description="The append-only, hash-chained and signed audit trail of every task attempt "
                    "and gate.",
    )
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="list events, optionally of one DAG and/or run")
    show.add_argument("--dag", metavar="DAG_ID", help="only events of this DAG id")
    show.add_argument("--run", metavar="RUN_ID", help="only events of this run id")
    show.add_argument("--json", action="store_true", help="one JSON event per line")
    show.add_argument("--log", metavar="PATH", help="audit log (default: settings audit_log)")
    show.set_defaults(func=_show)
    check = sub.add_parser("verify", help="check chain, MACs, head and anchor; exit 1 naming "
                           "each bad line or the anchor that disagrees")
    check.add_argument("--log", metavar="PATH", help="audit log (default: settings audit_log)")
    check.set_defaults(func=_verify)
    init = sub.add_parser("init-key", help="create the audit key (0600) if there is none; "
                          "never replaces one")
    init.set_defaults(func=_init_key)
    rotate = sub.add_parser("rotate-key", help="retire the audit key into the keyring (old "
                            "events still verify) and start signing with a new one")
    rotate.add_argument("--log", metavar="PATH", help="log that records the rotation "
                        "(default: settings audit_log)")
    rotate.set_defaults(func=_rotate_key)


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
    if kind == "audit_key_rotated":
        return [f"key={details.get('from_key', '?')}->{details.get('to_key', '?')}"]
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
    report = audit_verify.check(path)
    if not path.exists() and not report.problems:
        print(f"error: {path}: audit log not found", file=sys.stderr)
        return 1
    for problem in report.problems:
        print(problem)
    for note in report.notes:
        print(f"note: {note}")
    if report.problems:
        print(f"FAILED: {len(report.problems)} problem(s) in {path}")
        return 1
    print(f"OK: {report.events} events, chain intact, MACs, head and anchor agree ({path})")
    return 0


def _init_key(args: argparse.Namespace) -> int:
    path = auditkey.key_path()
    auditkey.check_outside(path, settings.get().audit_log.resolve())
    key, created = auditkey.ensure_key(path)
    print(f"{'created' if created else 'kept the existing'} audit key {path} (id {key.id})")
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    event = audit.rotate_key(args.log)
    details = event["details"]
    print(f"rotated the audit key {auditkey.key_path()}: {details['from_key']} -> "
          f"{details['to_key']} (the old key is kept in "
          f"{auditkey.ring_path(auditkey.key_path())}); recorded as seq {event['seq']} in "
          f"{audit.log_path(args.log)}")
    return 0
