"""A small client of Airflow's REST API (v2), for triggering runs and emitting asset events.

Authentication: a JWT from POST /auth/token. Credentials come from PEFTFLOW_API_USER and
PEFTFLOW_API_PASSWORD, or from the password file that Airflow's SimpleAuthManager generates in
AIRFLOW_HOME. Tokens and passwords are never printed or logged.

HTTP is httpx, which Airflow itself uses. What is ours: the answers mapped onto peftflow's errors,
and a trigger that retries a server error with a run id chosen here.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx

from peftflow import settings
from peftflow.errors import PeftflowError, ResourceError

PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"  # noqa: S105 - a file name
TERMINAL = {"success", "failed"}
TIMEOUT_S = 30.0  # to connect, and then between any two bytes of the answer


class ApiError(PeftflowError):
    """The Airflow API refused a request; the message carries its status and detail."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"Airflow API answered {status}: {detail}")


@dataclass
class Client:
    """One api-server; logs in on the first request that needs a token."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    timeout_s: float = TIMEOUT_S
    _http: httpx.Client = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # trust_env=False: no proxy or .netrc named in the environment gets to see the token.
        # No keep-alive, as with urllib before: a POST never goes out on a connection that the
        # server is closing, and a Client that nobody closes holds no socket open.
        self._http = httpx.Client(timeout=self.timeout_s, follow_redirects=False,
                                  trust_env=False,
                                  limits=httpx.Limits(max_keepalive_connections=0),
                                  headers={"Accept": "application/json"})

    @classmethod
    def from_settings(cls) -> Client:
        s = settings.get()
        return cls(f"http://{s.api_host}:{s.api_port}")

    def _credentials(self) -> tuple[str, str]:
        user, password = settings.api_credentials()
        if user and password:
            return user, password
        path = settings.get().airflow_home / PASSWORD_FILE
        try:
            users = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise PeftflowError(f"no API credentials: set PEFTFLOW_API_USER/PASSWORD, or start "
                                f"the api-server once so that it writes {path}") from None
        name = user or ("admin" if "admin" in users else next(iter(users)))
        return name, str(users[name])

    def login(self) -> None:
        user, password = self._credentials()
        try:
            answer = self._send("POST", "/auth/token", {"username": user, "password": password},
                                auth=False)
        except ApiError as exc:
            # a 422 from FastAPI quotes the body it got back, and this body holds the password
            raise ApiError(exc.status, exc.detail.replace(password, "***")) from None
        self.token = str(answer["access_token"])

    def _send(self, method: str, path: str, body: Any = None, auth: bool = True,
              query: dict[str, Any] | None = None) -> Any:
        """One request; its JSON answer, or None when the answer is empty.

        ApiError for any answer but 2xx, ResourceError when no answer came.
        """
        headers: dict[str, str] = {}
        if auth:
            if self.token is None:
                self.login()
            headers["Authorization"] = f"Bearer {self.token}"
        content = None
        if body is not None:
            # json.dumps rather than httpx's json=, which refuses NaN: a diverged loss in a
            # conf or an asset event's extra goes out as before and the server decides.
            content = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            resp = self._http.request(method, self.base_url + path, content=content,
                                      params=query, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ResourceError(f"Airflow API at {self.base_url} unreachable ({exc}); "
                                "is the api-server running? (./setup_airflow.sh start)") from None
        except httpx.TransportError as exc:
            raise ResourceError(f"Airflow API at {self.base_url} gave no answer to {method} "
                                f"{path} ({exc!r}); it may still have done it, so look "
                                "before repeating it") from None
        if not resp.is_success:
            detail = (f"redirect to {resp.headers.get('location')}" if resp.is_redirect
                      else resp.text)
            raise ApiError(resp.status_code, detail[:2000])
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiError(resp.status_code, f"the answer is not JSON; is {self.base_url} "
                           f"Airflow's api-server? ({resp.text[:200]!r})") from None

    def unpause(self, dag_id: str) -> None:
        self._send("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None,
                note: str | None = None, attempts: int = 4) -> str:
        """Create a run; returns its run id.

        The run id is chosen here, so a retry after a transient server error (SQLite answers
        concurrent writers with "database is locked", which the API reports as a 500) can never
        create a second run: if the first attempt did go through, the retry gets 409.
        """
        stamp = dt.datetime.now(dt.UTC).isoformat()
        run_id = f"manual__{stamp}_{secrets.token_hex(4)}"
        body: dict[str, Any] = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        if note:
            body["note"] = note
        for attempt in range(attempts):
            try:
                return str(self._send("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                                      body)["dag_run_id"])
            except ApiError as exc:
                if exc.status == 409 and attempt > 0:
                    return run_id  # an earlier attempt created it
                if exc.status < 500 or attempt == attempts - 1:
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(run_id, safe="")
        return self._send("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")  # type: ignore[no-any-return]

    def set_note(self, dag_id: str, run_id: str, note: str) -> None:
        """Replace the run's note (Markdown in the UI; Airflow keeps at most 1000 chars)."""
        quoted = urllib.parse.quote(run_id, safe="")
        self._send("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}", {"note": note[:1000]},
                   query={"update_mask": "note"})

    def dag(self, dag_id: str) -> dict[str, Any]:
        return self._send("GET", f"/api/v2/dags/{dag_id}")  # type: ignore[no-any-return]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        answer = self._send("GET", f"/api/v2/dags/{dag_id}/dagRuns", query={"limit": 100})
        return list(answer["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        answer = self._send("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances")
        return list(answer["task_instances"])

    def wait(self, dag_id: str, run_id: str, timeout_s: float, poll_s: float = 2.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            state = str(self.run(dag_id, run_id)["state"])
            if state in TERMINAL:
                return state
            if time.monotonic() > deadline:
                return state
            time.sleep(poll_s)

    def asset(self, uri: str) -> dict[str, Any] | None:
        """The asset with this URI (id, scheduled_dags, ...), or None when Airflow has none."""
        answer = self._send("GET", "/api/v2/assets", query={"uri_pattern": uri, "limit": 100})
        for asset in answer.get("assets", []):
            # Airflow normalises the URI (adds a trailing slash); the name keeps ours.
            if asset.get("name") == uri or asset["uri"].rstrip("/") == uri.rstrip("/"):
                return dict(asset)
        return None

    def post_asset_event(self, asset_id: int, extra: dict[str, Any]) -> dict[str, Any]:
        return self._send("POST", "/api/v2/assets/events",  # type: ignore[no-any-return]
                          {"asset_id": asset_id, "extra": extra})

    def asset_event(self, asset_id: int, event_id: int) -> dict[str, Any] | None:
        """One event of an asset (with the runs it created so far), or None."""
        answer = self._send("GET", "/api/v2/assets/events",
                            query={"asset_id": asset_id, "order_by": "-timestamp", "limit": 20})
        return next((dict(e) for e in answer.get("asset_events", [])
                     if int(e["id"]) == event_id), None)
