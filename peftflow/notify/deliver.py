"""Send one message to the spec's channels through Airflow's notifiers, at most once.

Channels are the providers' own notifiers (SmtpNotifier, SlackWebhookNotifier); their
credentials come from the Airflow connections the spec names, resolved by the notifier's
hook at send time (so they never pass through a spec, a log line or the audit trail).

Never raises: a channel that fails (receiver down, unknown connection, provider missing) is
a warning in the task log and a `notification_failed` audit event, and the run's outcome
stays what its stages decided. `once` makes a message go out at most once per key, even when
the task that sends it runs again: the first caller creates the claim file atomically.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow.notify.message import Message
from peftflow.spec.model import ChannelType, NotifyChannel, Spec
from peftflow.store import atomic, audit

log = logging.getLogger(__name__)

CLAIMS_DIR = "notifications"
SLACK_TIMEOUT_S = 10
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


@dataclass(frozen=True)
class Delivery:
    channel: str  # "email:<connection>" / "slack:<connection>"
    sent: bool
    error: str = ""


def _clean(error: BaseException) -> str:
    """An error without URLs (a webhook URL is its credential) or secret-looking values."""
    text = _URL.sub("<url>", f"{type(error).__name__}: {error}")
    return str(audit.redact({"error": text[:500]})["error"])


def _notifier(channel: NotifyChannel, message: Message) -> Any:
    if channel.type is ChannelType.EMAIL:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        body = html.escape(message.body)
        return SmtpNotifier(to=list(channel.to), smtp_conn_id=channel.connection,
                            subject=message.title,
                            html_content=f"<pre style=\"font-family: monospace\">{body}</pre>")
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    def mrkdwn(text: str) -> str:  # Slack's escaping: only &, < and > are special
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    # no retry handlers: slack_sdk's default one logs "Going to retry ... POST <url>", and
    # the webhook URL is the credential (Airflow masks it in task logs, not everywhere)
    return SlackWebhookNotifier(slack_webhook_conn_id=channel.connection,
                                text=f"*{mrkdwn(message.title)}*\n{mrkdwn(message.body)}",
                                timeout=SLACK_TIMEOUT_S, retry_handlers=[])


def _send_one(channel: NotifyChannel, message: Message,
              context: Mapping[str, Any]) -> Delivery:
    name = f"{channel.type.value}:{channel.connection}"
    try:
        # notify(), not __call__: __call__ would render the texts as Jinja templates, and
        # they carry user data (notes, error lines) that must be sent as written
        _notifier(channel, message).notify(dict(context))
    except Exception as exc:  # any failure of any provider: reported, never raised
        return Delivery(name, False, _clean(exc))
    return Delivery(name, True)


def _claim(claims: Path, key: str) -> Path | None:
    """The claim file for `key`, created now; None when an earlier caller holds it."""
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / f"{key}.json"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    os.close(fd)
    return path


def send(spec: Spec, message: Message, *, run_dir: Path, once: str,
         context: Mapping[str, Any], task_id: str, task_log: Any = None) -> list[Delivery]:
    """Send `message` to every channel of `spec` that wants it, once per `once` key."""
    out = task_log or log
    channels = [c for c in spec.notify.channels if c.wants(message.event)]
    if not channels:
        return []
    try:
        claim = _claim(run_dir / CLAIMS_DIR, once)
    except OSError as exc:
        out.warning("NOTIFY %s not sent: cannot record it in %s (%s)", message.event.value,
                    run_dir / CLAIMS_DIR, exc)
        return []
    if claim is None:
        out.info("NOTIFY %s already sent for this run (%s); not sending it again",
                 message.event.value, run_dir / CLAIMS_DIR / f"{once}.json")
        return []
    results = [_send_one(c, message, context) for c in channels]
    for channel, result in zip(channels, results, strict=True):
        if result.sent:
            out.info("NOTIFY %s sent via %s: %s", message.event.value, result.channel,
                     message.title)
        else:
            out.warning("NOTIFY %s NOT sent via %s (the run's outcome is unchanged): %s",
                        message.event.value, result.channel, result.error)
        _audit(message, channel, result, task_id)
    try:
        atomic.write_json(claim, {"event": message.event.value, "title": message.title,
                                  "deliveries": [r.__dict__ for r in results]})
    except OSError as exc:
        out.warning("could not write %s (%s)", claim, exc)
    return results


def _audit(message: Message, channel: NotifyChannel, result: Delivery, task_id: str) -> None:
    details: dict[str, Any] = {"kind": message.event.value, "channel": channel.type.value,
                               "connection": channel.connection, "title": message.title}
    if channel.to:
        details["recipients"] = len(channel.to)
    if result.error:
        details["error"] = result.error
    try:
        audit.append_event({
            "event": "notification_sent" if result.sent else "notification_failed",
            "dag_id": message.dag_id, "run_id": message.run_id, "task_id": task_id,
            "actor": "peftflow", "outcome": "sent" if result.sent else "failed",
            "details": details})
    except Exception as exc:  # the audit trail's own failure must not fail the run either
        log.warning("could not audit the notification (%s): %s", exc, json.dumps(details))
