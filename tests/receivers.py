"""Real receivers on loopback for the notification tests: an SMTP server (aiosmtpd) and an
HTTP server standing in for a Slack incoming webhook. Both keep what they received; the
test starts and stops them. The live suite adds their connections to the metadata DB with
`airflow connections add` (as a user would) when the deployment is created, ports chosen
then; the in-process tests give them as AIRFLOW_CONN_* variables."""

from __future__ import annotations

import email
import email.policy
import html
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SMTP_CONN = "live_smtp"
SLACK_CONN = "live_slack"
DOWN_SMTP_CONN = "live_smtp_down"  # ports where nothing listens: a receiver that is down
DOWN_SLACK_CONN = "live_slack_down"
# the webhook's credential: it must never show up in a log, a note or the audit trail
WEBHOOK_TOKEN = "T0LIVE/B0LIVE/live-webhook-secret-7f3a9c"
FROM = "peftflow-live@localhost"
CONNECTIONS_FILE = "notify-connections.json"  # in a live deployment's root: id -> JSON


def connections(smtp_port: int, slack_port: int, down_smtp: int,
                down_slack: int) -> dict[str, str]:
    """The four connections, id -> Airflow's JSON form (`airflow connections add --conn-json`,
    or the value of an AIRFLOW_CONN_<ID> variable)."""
    def smtp(port: int) -> str:
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                           "extra": {"from_email": FROM, "disable_ssl": True,
                                     "disable_tls": True, "timeout": 5, "retry_limit": 0}})

    def slack(port: int) -> str:
        return json.dumps({"conn_type": "slackwebhook",
                           "host": f"http://127.0.0.1:{port}/services",
                           "password": WEBHOOK_TOKEN})

    return {SMTP_CONN: smtp(smtp_port), SLACK_CONN: slack(slack_port),
            DOWN_SMTP_CONN: smtp(down_smtp), DOWN_SLACK_CONN: slack(down_slack)}


def port_of(conns: dict[str, str], conn: str) -> int:
    doc = json.loads(conns[conn])
    return int(doc.get("port") or doc["host"].rsplit(":", 1)[1].split("/")[0])


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    subject: str
    text: str  # the body as sent (HTML)

    @property
    def plain(self) -> str:
        """The body as a reader sees it: tags dropped, entities decoded."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.text))


@dataclass
class SmtpReceiver:
    port: int
    mails: list[Mail] = field(default_factory=list)
    _controller: Any = None

    def start(self) -> SmtpReceiver:
        from aiosmtpd.controller import Controller

        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
                parts = [p.get_content() for p in msg.walk()
                         if p.get_content_maintype() == "text"]
                receiver.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos),
                                           str(msg["subject"]), "\n".join(parts)))
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@dataclass
class WebhookReceiver:
    port: int
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size)
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {"_raw": body.decode("utf-8", "replace")}
                receiver.posts.append((self.path, doc))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")  # what Slack answers

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def texts(self) -> list[str]:
        """Each post's text as a reader sees it (Slack's &amp; &lt; &gt; decoded)."""
        return [html.unescape(str(doc.get("text", ""))) for _, doc in self.posts]
