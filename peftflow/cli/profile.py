"""`peftflow profile show | switch`: the exclusive orchestration profile."""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from peftflow.spec import orchestration
from peftflow.store import atomic, audit
from peftflow.store import status_record as status


def cmd_show(args: argparse.Namespace) -> int:
    config = orchestration.load()
    if args.quiet:
        print(config.active.value)
        return 0
    print(f"active orchestration profile: {config.active.value} ({config.path})")
    if config.switched_at:
        print(f"switched at {config.switched_at} by {config.switched_by}")
    return 0


def switch(target: str, actor: str) -> bool:
    """Make `target` the active profile; returns False when it already was."""
    wanted = orchestration.OrchestrationProfile(target)
    config = orchestration.load()
    if config.active is wanted:
        print(f"the active orchestration profile is already {wanted.value}")
        return False
    now = status.utc_now()
    atomic.write_text(config.path, (
        "# yaml-language-server: $schema=../schemas/orchestration.schema.json\n"
        "# The canonical execution path of this deployment: exactly one of airflow | "
        "mlops-lite.\n# Do not edit by hand to switch: run `./setup_airflow.sh "
        "--switch-profile <name>`, which\n# records the switch in the audit trail.\n"
        f"active_profile: {wanted.value}\nswitched_at: '{now}'\nswitched_by: '{actor}'\n"))
    audit.append_event({"event": "profile_switched", "actor": actor, "outcome": "success",
                        "details": {"from": config.active.value, "to": wanted.value}})
    print(f"switched the active orchestration profile: {config.active.value} -> {wanted.value}"
          " (recorded in the audit trail)")
    return True


def cmd_switch(args: argparse.Namespace) -> int:
    switch(args.profile, args.actor or getpass.getuser())
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("profile", help="show or switch the orchestration profile")
    actions = p.add_subparsers(dest="profile_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the active orchestration profile")
    show.add_argument("--quiet", action="store_true", help="print only its name")
    show.set_defaults(func=cmd_show)
    sw = actions.add_parser("switch", help="make airflow or mlops-lite the active profile")
    sw.add_argument("profile", choices=[p.value for p in orchestration.OrchestrationProfile])
    sw.add_argument("--actor", help="who switches (default: the current user)")
    sw.set_defaults(func=cmd_switch)
