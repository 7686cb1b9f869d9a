"""Do the connections a spec's channels name exist, with the type the channel needs?

For `peftflow doctor`: a channel whose connection is missing would only show up as a failed
delivery (audited) on the first run that ends. Reads Airflow's secrets backends in this
process (environment variables, then the metadata DB), the way the api-server resolves them
for a task. Never prints a password, a login or a webhook URL.
"""

from __future__ import annotations

from collections.abc import Iterable

from peftflow.spec.model import ChannelType, Spec

CONN_TYPES = {ChannelType.EMAIL: "smtp", ChannelType.SLACK: "slackwebhook"}
ADD_HINT = {
    ChannelType.EMAIL: "airflow connections add {id} --conn-type smtp --conn-host HOST "
                       "--conn-port 587 --conn-login USER --conn-password '...' "
                       "--conn-extra '{{\"from_email\": \"peftflow@example.com\"}}'",
    ChannelType.SLACK: "airflow connections add {id} --conn-type slackwebhook "
                       "--conn-password 'T0000/B0000/XXXX'",
}


def channel_checks(specs: Iterable[Spec]) -> list[tuple[str, str, str]]:
    """(name, level, detail) per distinct channel connection of the specs."""
    from airflow.models.connection import Connection

    seen: dict[tuple[ChannelType, str], list[str]] = {}
    for spec in specs:
        for channel in spec.notify.channels:
            seen.setdefault((channel.type, channel.connection), []).append(spec.dag_id)
    found = []
    for (kind, conn_id), dag_ids in sorted(seen.items()):
        name = f"notify {kind.value} {conn_id}"
        used = f"used by {', '.join(sorted(set(dag_ids)))}"
        try:
            conn = Connection.get_connection_from_secrets(conn_id)
        except Exception:  # not found, or a backend that cannot be read: both mean no send
            found.append((name, "warn", f"connection {conn_id!r} is not defined ({used}): its "
                          "messages will fail (audited, the runs are not affected). Fix: "
                          + ADD_HINT[kind].format(id=conn_id)))
            continue
        wanted = CONN_TYPES[kind]
        if conn.conn_type != wanted:
            found.append((name, "warn", f"connection {conn_id!r} has type {conn.conn_type!r}, "
                          f"a {kind.value} channel needs {wanted!r} ({used}). Fix: "
                          f"airflow connections delete {conn_id}, then "
                          + ADD_HINT[kind].format(id=conn_id)))
        elif kind is ChannelType.EMAIL and not conn.extra_dejson.get("from_email"):
            found.append((name, "warn", f"connection {conn_id!r} has no from_email in its "
                          f"extra ({used}): the mail cannot be sent. Fix: set it with airflow "
                          f"connections add ... --conn-extra '{{\"from_email\": \"...\"}}'"))
        elif kind is ChannelType.SLACK and not (conn.password or "").strip():
            found.append((name, "warn", f"connection {conn_id!r} has no webhook token in its "
                          f"password field ({used}). Fix: " + ADD_HINT[kind].format(id=conn_id)))
        else:
            found.append((name, "ok", f"defined ({wanted}, {used})"))
    return found
