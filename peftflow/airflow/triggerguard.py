"""The api-server's trigger guard: a bad trigger conf is refused before a run exists.

An ASGI middleware, registered by the peftflow Airflow plugin, that reads the body of
`POST /api/v2/dags/{dag_id}/dagRuns` (what the UI's Trigger button, the REST API and
airflowctl send) and, for a DAG that peftflow generated, applies peftflow.airflow.triggerconf. A bad
conf gets HTTP 400 with the reasons; everything else passes through untouched, byte for byte.
The guard answers only callers that may read the DAG: any other request passes on and gets
Airflow's own 401/403, so the guard never tells a stranger which params a DAG declares.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from peftflow.airflow import triggerconf

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TRIGGER_PATH = re.compile(r"/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/?$")
PEFTFLOW_TAG = "peftflow"
# A peftflow trigger body is a few hundred bytes (the note is capped at 500 characters); a
# bigger one is refused unread past this point instead of being buffered whole in memory.
MAX_BODY = 256 * 1024


class TriggerConfGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (TRIGGER_PATH.search(scope.get("path", ""))
                 if scope.get("type") == "http" and scope.get("method") == "POST" else None)
        if match is None:
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        replay = _replaying(body, complete, receive)
        try:
            problems = await _problems(scope, unquote(match["dag_id"]), body, complete)
        except Exception:  # the guard must never be why a trigger fails
            log.exception("peftflow trigger guard: check failed; passing the request on")
            problems = []
        if problems:
            await _refuse(send, problems)
        else:
            await self.app(scope, replay, send)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > MAX_BODY:
            return b"".join(chunks), False


def _replaying(body: bytes, complete: bool, receive: Receive) -> Receive:
    """A receive that hands the app the bytes already read, then the rest of the stream."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replay


async def _problems(scope: Scope, dag_id: str, body: bytes, complete: bool) -> list[str]:
    if not await _may_read(scope, dag_id):
        return []
    declared = await _declared_params(scope, dag_id)
    if declared is None:
        return []
    if not complete:
        return [f"the trigger body is larger than {MAX_BODY} bytes; a {dag_id} conf is a few "
                "hundred bytes: send only the declared params"]
    try:
        payload = json.loads(body)
    except ValueError:
        return []  # Airflow answers malformed JSON itself, with its own located message
    conf = payload.get("conf") if isinstance(payload, dict) else None
    if not isinstance(conf, dict):
        return []  # absent or not an object: Airflow's body validation answers it
    return triggerconf.conf_problems(dag_id, declared, conf)


async def _may_read(scope: Scope, dag_id: str) -> bool:
    """Whether Airflow would let this caller read the DAG (and so see its params anyway)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from fastapi import HTTPException
    from starlette.requests import Request

    request = Request(scope)
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else None
    token = token or request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        return False
    try:
        user = await resolve_user_from_token(token)
    except HTTPException:
        return False
    return bool(get_auth_manager().is_authorized_dag(method="GET", user=user,
                                                     details=DagDetails(id=dag_id)))


async def _declared_params(scope: Scope, dag_id: str) -> list[str] | None:
    """The params of a peftflow DAG, or None for any other DAG (or one Airflow lacks)."""
    from starlette.concurrency import run_in_threadpool

    def lookup() -> list[str] | None:
        from airflow.models.dagbag import DBDagBag
        from airflow.utils.session import create_session

        app = scope.get("app")
        bag = getattr(getattr(app, "state", None), "dag_bag", None) or DBDagBag()
        with create_session() as session:
            dag = bag.get_latest_version_of_dag(dag_id, session=session)
            if dag is None or PEFTFLOW_TAG not in (dag.tags or ()):
                return None
            return list(dag.params)

    return await run_in_threadpool(lookup)


async def _refuse(send: Send, problems: list[str]) -> None:
    body = json.dumps({"detail": "; ".join(problems)}).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
