"""`dataset register/announce` asks Airflow who listens and says what each listener did
(against a loopback stand-in of the REST API; the real scheduler is in tests/live)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from peftflow.airflow import triggers
from peftflow.airflow.client import Client
from peftflow.store import audit

URI = "peftflow-dataset://docs"


class _Airflow(BaseHTTPRequestHandler):
    dags: ClassVar[dict[str, bool]] = {}  # dag_id -> is_paused
    created: ClassVar[list[dict[str, str]]] = []  # runs the "scheduler" creates
    posted: ClassVar[list[dict[str, Any]]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        if url.path == "/api/v2/assets":
            listeners = [{"dag_id": d} for d in type(self).dags]
            assets = [{"id": 7, "uri": URI + "/", "name": URI, "scheduled_dags": listeners}]
            self._answer(200, {"assets": assets if type(self).dags else []})
        elif url.path.startswith("/api/v2/dags/"):
            dag_id = url.path.rsplit("/", 1)[1]
            self._answer(200, {"dag_id": dag_id, "is_paused": type(self).dags[dag_id]})
        elif url.path == "/api/v2/assets/events":
            events = [{"id": 1, "asset_id": 7, "created_dagruns": type(self).created}]
            self._answer(200, {"asset_events": events if type(self).posted else []})
        else:
            self._answer(404, {"detail": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/auth/token":
            self._answer(201, {"access_token": "t"})
            return
        type(self).posted.append(body)
        self._answer(200, {"id": 1, "asset_id": body["asset_id"], "created_dagruns": []})

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
    _Airflow.dags, _Airflow.created, _Airflow.posted = {}, [], []
    server = HTTPServer(("127.0.0.1", 0), _Airflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Client(f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "train.manifest.json"
    path.write_text("{}")
    return path


def _last_audit() -> dict[str, Any]:
    return list(audit.events())[-1]


def test_an_unpaused_listener_reports_the_run_the_event_started(
        api: Client, manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _Airflow.dags = {"retrain": False}
    _Airflow.created = [{"dag_id": "retrain", "run_id": "asset_triggered__1"}]
    assert triggers.announce_dataset(manifest, "docs", "v2", client=api, wait_s=2)
    out = capsys.readouterr().out
    assert "retrain: started run asset_triggered__1" in out
    assert _Airflow.posted[0]["extra"]["version"] == "v2"
    assert _last_audit()["details"]["runs"] == {"retrain": "asset_triggered__1"}


def test_a_paused_listener_is_named_with_the_commands_that_start_it(
        api: Client, manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _Airflow.dags = {"retrain": True}
    assert not triggers.announce_dataset(manifest, "docs", "v2", client=api, wait_s=2)
    out = capsys.readouterr().out
    assert "retrain is paused: nothing starts" in out
    assert "airflow dags unpause retrain && peftflow dataset announce" in out
    assert _last_audit()["details"]["runs"] == {"retrain": "paused"}


def test_a_run_the_scheduler_has_not_created_yet_is_reported_as_queued(
        api: Client, manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _Airflow.dags = {"retrain": False}
    assert triggers.announce_dataset(manifest, "docs", "v2", client=api, wait_s=0.6)
    assert "retrain: the event is queued but no run was created yet" in capsys.readouterr().out


def test_no_listener_says_that_nothing_starts_and_how_to_add_one(
        api: Client, manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not triggers.announce_dataset(manifest, "docs", "v2", client=api, wait_s=0.6)
    assert "no DAG is scheduled on peftflow-dataset://docs" in capsys.readouterr().out
    assert not _Airflow.posted


def test_airflow_down_keeps_the_registration_and_prints_the_recovery_command(
        manifest: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PEFTFLOW_API_USER", "admin")
    monkeypatch.setenv("PEFTFLOW_API_PASSWORD", "pw")
    down = Client("http://127.0.0.1:9")  # discard port: nothing listens
    assert not triggers.announce_dataset(manifest, "docs", "v2", client=down, wait_s=0.1)
    err = capsys.readouterr().err
    assert "Airflow was not told" in err and "peftflow dataset announce" in err
    assert _last_audit()["outcome"] == "not_announced"
