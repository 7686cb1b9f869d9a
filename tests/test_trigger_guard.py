"""The trigger-conf rules and the api-server guard that applies them before a run exists
(the guard against a real api-server: tests/live/test_live_bad_input.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from peftflow.airflow import triggerconf, triggerguard

DECLARED = ["note", "training_profile", "dataset_manifest", "force_rerun", "override_gate",
            "override_reason"]


def test_a_conf_of_declared_params_has_no_problems() -> None:
    conf = {"note": "why", "force_rerun": True, "override_gate": True, "override_reason": "ok"}
    assert triggerconf.conf_problems("d", DECLARED, conf) == []


def test_an_unknown_key_is_named_with_the_declared_param_it_resembles() -> None:
    [problem] = triggerconf.conf_problems("d", DECLARED, {"force-rerun": True, "cmd": "x"})
    assert "'cmd', 'force-rerun' (did you mean 'force_rerun'?)" in problem
    assert "d accepts note, training_profile" in problem and "trigger again" in problem


def test_an_override_needs_a_reason_that_is_not_blank() -> None:
    for reason in (None, "", "  \t"):
        [problem] = triggerconf.conf_problems(
            "d", DECLARED, {"override_gate": True, "override_reason": reason})
        assert "override_gate is set without an override_reason" in problem
    assert triggerconf.conf_problems("d", DECLARED, {"override_gate": False}) == []


class _Inner:
    """The app behind the guard: records what reached it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _call(app: Any, method: str, path: str, chunks: list[bytes],
          headers: list[tuple[bytes, bytes]] | None = None) -> list[dict[str, Any]]:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers or [],
             "query_string": b""}
    asyncio.run(app(scope, receive, send))
    return sent


def test_requests_that_are_not_triggers_pass_through_unread() -> None:
    inner = _Inner()
    sent = _call(triggerguard.TriggerConfGuard(inner), "GET", "/api/v2/dags/d/dagRuns", [b""])
    assert inner.bodies == [b""] and sent[0]["status"] == 200


def test_an_anonymous_trigger_reaches_airflow_byte_for_byte_whatever_its_conf() -> None:
    """Without credentials the guard says nothing: Airflow answers 401 itself."""
    inner = _Inner()
    chunks = [b'{"logical_date": null, "conf": ', b'{"force-rerun": true}}']
    sent = _call(triggerguard.TriggerConfGuard(inner), "POST", "/api/v2/dags/d/dagRuns", chunks)
    assert inner.bodies == [b"".join(chunks)] and sent[0]["status"] == 200


def test_a_body_past_the_limit_is_handed_on_whole_when_the_guard_does_not_answer() -> None:
    inner = _Inner()
    chunks = [b"x" * 100_000] * 4  # 400 kB in four chunks, past MAX_BODY
    _call(triggerguard.TriggerConfGuard(inner), "POST", "/api/v2/dags/d/dagRuns", chunks)
    assert inner.bodies == [b"".join(chunks)]
