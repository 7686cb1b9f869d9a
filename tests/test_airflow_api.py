"""The REST client against a small local stand-in of Airflow's API (loopback only)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from peftflow.airflow.client import ApiError, Client


class _Api(BaseHTTPRequestHandler):
    answers: ClassVar[list[tuple[int, dict[str, Any]]]] = []
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/auth/token":
            self._answer(201, {"access_token": "t"})
            return
        type(self).bodies.append(body)
        status, answer = type(self).answers.pop(0)
        self._answer(status, answer or {"dag_run_id": body["dag_run_id"]})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    monkeypatch.setenv("PEFTFLOW_API_USER", "admin")
    monkeypatch.setenv("PEFTFLOW_API_PASSWORD", "pw")
    _Api.answers, _Api.bodies = [], []
    server = HTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Client(f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()


def test_trigger_retries_a_database_error_with_the_same_run_id(api: Client) -> None:
    _Api.answers = [(500, {"detail": {"reason": "Database error"}}), (200, {})]
    run_id = api.trigger("d", {"note": "x"})
    assert [b["dag_run_id"] for b in _Api.bodies] == [run_id, run_id]
    assert _Api.bodies[0]["logical_date"] is None


def test_a_retry_that_finds_the_run_already_created_returns_it(api: Client) -> None:
    _Api.answers = [(500, {"detail": "locked"}), (409, {"detail": "exists"})]
    run_id = api.trigger("d")
    assert run_id == _Api.bodies[0]["dag_run_id"] and len(_Api.bodies) == 2


def test_a_rejected_trigger_is_not_retried(api: Client) -> None:
    _Api.answers = [(400, {"detail": "Invalid input for param note"})]
    with pytest.raises(ApiError, match="400"):
        api.trigger("d", {"note": "x" * 10_000})
    assert len(_Api.bodies) == 1
