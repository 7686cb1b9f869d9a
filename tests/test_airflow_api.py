"""The REST client against a small local stand-in of Airflow's API (loopback only)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from peftflow.airflow.client import ApiError, Client
from peftflow.errors import ResourceError


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


def test_two_server_errors_then_success_retry_with_the_same_run_id_and_a_growing_pause(
        api: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr("peftflow.airflow.client.time.sleep", pauses.append)
    _Api.answers = [(500, {"detail": "locked"}), (503, {"detail": "busy"}), (200, {})]
    run_id = api.trigger("d")
    assert [b["dag_run_id"] for b in _Api.bodies] == [run_id] * 3
    assert pauses == [0.5, 1.0]


def test_a_server_error_on_every_attempt_gives_up_after_four(
        api: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("peftflow.airflow.client.time.sleep", lambda s: None)
    _Api.answers = [(500, {"detail": "Database error"})] * 5
    with pytest.raises(ApiError, match="500: .*Database error"):
        api.trigger("d")
    assert len(_Api.bodies) == 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_refused_connection_is_a_resource_error_naming_the_url_and_not_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTFLOW_API_USER", "admin")
    monkeypatch.setenv("PEFTFLOW_API_PASSWORD", "hunter2-secret")
    down = Client(f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(ResourceError, match=f"{down.base_url} unreachable.*api-server running"
                       ) as refused:
        down.trigger("d")
    assert "hunter2-secret" not in str(refused.value)


def test_an_api_server_that_never_answers_is_a_resource_error_after_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The socket accepts (backlog) but nothing reads: a hang becomes an error a caller
    that must never fail (the run note) can catch."""
    monkeypatch.setenv("PEFTFLOW_API_USER", "admin")
    monkeypatch.setenv("PEFTFLOW_API_PASSWORD", "hunter2-secret")
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        client = Client(f"http://127.0.0.1:{mute.getsockname()[1]}", timeout_s=0.2)
        with pytest.raises(ResourceError, match="no answer to POST /auth/token.*ReadTimeout"
                           ) as silent:
            client.login()
    assert "hunter2-secret" not in str(silent.value)


class _EchoingLogin(BaseHTTPRequestHandler):
    """FastAPI's 422 quotes the body it was sent."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        raw = json.dumps({"detail": [{"msg": "Field required", "input": body}]}).encode()
        self.send_response(422)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_refused_login_names_the_status_but_never_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTFLOW_API_USER", "admin")
    monkeypatch.setenv("PEFTFLOW_API_PASSWORD", "hunter2-secret")
    server = HTTPServer(("127.0.0.1", 0), _EchoingLogin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(ApiError, match="422: .*Field required") as refused:
            client.run("d", "r")
    finally:
        server.shutdown()
        server.server_close()
    assert "hunter2-secret" not in str(refused.value) and "***" in str(refused.value)
    client.token = "tok-123"
    assert "tok-123" not in repr(client)
