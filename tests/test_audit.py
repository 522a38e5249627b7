"""The audit on every backend: each read or deletion of another user's history (an admin's,
the operator key's) leaves one ``mes_audit`` row and one ``audit`` log line, a user's own
reads leave none, ``GET /api/v1/audit`` lists them, and nothing audited holds content."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from mes.api import Services, create_app
from mes.api.auth import Authenticator
from mes.config.settings import Settings
from mes.log import configure_logging
from mes.reader import HistoryReader
from mes.storage import audit

from . import newapi
from .factories import BASE_MS, chat, conversation, error
from .test_api_fuzz import CONFORMANCE

SECRET = "ZEBRA-7319-secret-words"  # in every message of user 1: must never be audited
ADMIN, OPERATOR = "user:10", "operator"


class Audited:
    """The app on real services, the cast of callers, and what the audit holds."""

    def __init__(self, client: TestClient, cast: newapi.Cast, storage: Any, capsys: Any) -> None:
        self.client, self.cast, self.storage, self._capsys = client, cast, storage, capsys

    def call(self, who: str, method: str, path: str, **kw: Any) -> Any:
        return self.client.request(method, path, headers=getattr(self.cast, who), **kw)

    def rows(self) -> list[dict[str, Any]]:
        """Every ``mes_audit`` row, oldest first, as stored (``detail`` as its JSON text)."""
        table = self.storage.catalog.audit
        with self.storage.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(table).order_by(table.c.id)).mappings()]

    def log_lines(self) -> list[dict[str, Any]]:
        """The ``audit`` lines logged since the last call."""
        lines = [json.loads(li) for li in self._capsys.readouterr().err.splitlines() if li.startswith("{")]
        return [li for li in lines if li["event"] == "audit"]


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written: capsys swaps it between a
    fixture's setup and the test."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture
def audited(backend, capsys) -> Iterator[Audited]:
    storage = backend.storage()
    cast = newapi.install(storage.engine)
    said = [{"role": "user", "content": f"tell me about {SECRET}"}]
    storage.writer.write(
        [chat("convA", said, f"{SECRET} is a zebra", user_id=1, request_id="req-a")]
        + [error("convA", said, message=f"refused: {SECRET}", user_id=1, ms=BASE_MS + 90_000)]
        + conversation("convB", 2, user_id=2)
        + conversation("convX", 1, user_id=10)  # the admin's own
    )
    auth = Authenticator(storage.engine, api_key=newapi.OPERATOR_KEY, cache_seconds=0)
    services = Services(HistoryReader(storage), auth, Settings.from_env(backend.env()))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(json=True)
    root.handlers[0].setStream(_Stderr())  # type: ignore[attr-defined]
    try:
        with TestClient(create_app(services=services), raise_server_exceptions=False) as client:
            capsys.readouterr()
            yield Audited(client, cast, storage, capsys)
    finally:
        root.handlers[:], root.level = handlers, level


def _answer_event_id(a: Audited, who: str, conversation_id: str, **params: Any) -> str:
    read = a.call(who, "GET", f"/api/v1/conversations/{conversation_id}", params=params).json()
    return str(read["messages"][-1]["event_id"])


def test_an_admins_reads_of_another_user_leave_one_row_and_one_log_line_each(audited):
    a = audited
    request_id = _answer_event_id(a, "a", "convA")  # user 1's own read: nothing
    reads = [
        ("/api/v1/conversations", {"user_id": 1}, "conversations", None),
        ("/api/v1/conversations/convA", {}, "conversation:convA", None),  # no user_id: its owner
        ("/api/v1/conversations/convA", {"request": request_id}, "conversation:convA",
         {"view": "request", "request": request_id}),
        ("/api/v1/conversations/convA/errors", {"user_id": 1}, "conversation:convA", {"view": "errors"}),
        ("/api/v1/errors", {"user_id": 1}, "errors", None),
        ("/api/v1/stats/conversations", {"user_id": 1}, "stats", None),
    ]  # fmt: skip
    for path, params, _, _ in reads:
        assert a.call("admin", "GET", path, params=params).status_code == 200, path
    rows, lines = a.rows(), a.log_lines()
    assert len(rows) == len(lines) == len(reads)
    for row, line, (path, _, resource, detail) in zip(rows, lines, reads, strict=True):
        assert (row["actor"], row["actor_user_id"], row["action"], row["target_user_id"]) == (
            ADMIN,
            10,
            "read",
            1,
        )
        assert (row["resource"], row["client"]) == (resource, "testclient"), path
        assert (json.loads(row["detail"]) if row["detail"] else None) == detail, path
        assert abs(row["at_ms"] - a.storage.calendar.now_ms()) < 60_000
        assert line["logger"] == "mes.audit" and line["mes"] is True and line["id"] == row["id"]
        for key in ("at_ms", "actor", "actor_user_id", "action", "target_user_id", "resource", "client"):
            assert line[key] == row[key], (path, key)
        assert line["detail"] == detail
    # the admin's own history, with or without user_id: nothing
    for params in ({}, {"user_id": 10}):
        assert a.call("admin", "GET", "/api/v1/conversations", params=params).status_code == 200
        assert a.call("admin", "GET", "/api/v1/stats/conversations", params=params).status_code == 200
    assert a.call("admin", "GET", "/api/v1/conversations/convX").status_code == 200
    assert len(a.rows()) == len(reads) and a.log_lines() == []


def test_the_operator_keys_reads_and_deletions_are_audited_as_operator(audited):
    a = audited
    assert a.call("operator", "GET", "/api/v1/conversations", params={"user_id": 2}).status_code == 200
    assert a.call("operator", "GET", "/api/v1/conversations/convB").status_code == 200
    assert a.call("operator", "DELETE", "/api/v1/conversations/convB").status_code == 200
    assert a.call("admin", "DELETE", "/api/v1/conversations/convA", params={"user_id": 1}).status_code == 200
    # attempts count: the deleted conversation read again answers 404, and is recorded
    assert a.call("operator", "GET", "/api/v1/conversations/convB", params={"user_id": 2}).status_code == 404
    got = [
        (r["actor"], r["actor_user_id"], r["action"], r["target_user_id"], r["resource"]) for r in a.rows()
    ]
    assert got == [
        (OPERATOR, None, "read", 2, "conversations"),
        (OPERATOR, None, "read", 2, "conversation:convB"),
        (OPERATOR, None, "delete", 2, "conversation:convB"),
        (ADMIN, 10, "delete", 1, "conversation:convA"),
        (OPERATOR, None, "read", 2, "conversation:convB"),
    ]
    assert [li["action"] for li in a.log_lines()] == ["read", "read", "delete", "delete", "read"]


def test_a_user_reading_or_deleting_their_own_history_records_nothing(audited):
    a = audited
    request_id = _answer_event_id(a, "a", "convA")
    for path, params in [
        ("/api/v1/conversations", {}),
        ("/api/v1/conversations", {"user_id": 1}),
        ("/api/v1/conversations/convA", {}),
        ("/api/v1/conversations/convA", {"request": request_id}),
        ("/api/v1/conversations/convA/errors", {}),
        ("/api/v1/errors", {}),
        ("/api/v1/stats/conversations", {}),
    ]:
        assert a.call("a", "GET", path, params=params).status_code == 200, path
    assert a.call("a_access", "GET", "/api/v1/conversations").status_code == 200
    # refused before anything is read: another user's (403), or not theirs (404): nothing either
    assert a.call("b", "GET", "/api/v1/conversations", params={"user_id": 1}).status_code == 403
    assert a.call("b", "GET", "/api/v1/conversations/convA").status_code == 404
    assert a.call("b", "DELETE", "/api/v1/conversations/convA", params={"user_id": 1}).status_code == 403
    assert a.call("admin", "GET", "/api/v1/conversations/nobody-has-it").status_code == 404
    assert a.call("a", "DELETE", "/api/v1/conversations/convA").status_code == 200
    assert a.rows() == [] and a.log_lines() == []


def test_the_audit_route_lists_newest_first_filters_and_pages(audited):
    a = audited
    day = 86_400_000
    for n, (actor, uid, action, target) in enumerate(
        [("user:10", 10, "read", 1), ("operator", None, "read", 2), ("cli", None, "erase", 1),
         ("user:100", 100, "delete", 2), ("user:10", 10, "read", 2)]
    ):  # fmt: skip
        audit.record(a.storage, actor=actor, actor_user_id=uid, action=action, target_user_id=target,
                     resource="conversations", client="cli" if actor == "cli" else "10.0.0.1",
                     detail={"rows": n} if action == "erase" else None, at_ms=BASE_MS + n * day)  # fmt: skip

    def listed(who: str = "admin", **params: Any) -> Any:
        r = a.call(who, "GET", "/api/v1/audit", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def at_days(body: Any) -> list[int]:
        return [(e["at_ms"] - BASE_MS) // day for e in body["entries"]]

    everything = listed()
    assert everything["object"] == "list" and not everything["has_more"]
    assert at_days(everything) == [4, 3, 2, 1, 0]
    first = everything["entries"][2]
    assert first == {
        "id": first["id"], "object": "audit.entry", "at": (BASE_MS + 2 * day) // 1000, "at_ms": BASE_MS + 2 * day,
        "actor": "cli", "actor_user_id": None, "action": "erase", "target_user_id": 1,
        "resource": "conversations", "client": "cli", "detail": {"rows": 2},
    }  # fmt: skip
    assert at_days(listed(user_id=1)) == [2, 0]
    assert at_days(listed(actor="user:10")) == [4, 0]
    assert at_days(listed(action="read")) == [4, 1, 0]
    assert at_days(listed(action="read", user_id=2)) == [4, 1]
    since, until = (BASE_MS + day) // 1000, (BASE_MS + 3 * day) // 1000
    assert at_days(listed(since=str(since), until=str(until))) == [2, 1]
    assert at_days(listed(since="2026-01-17T00:00:00Z")) == [4, 3, 2]
    # pages of two, by the cursor
    page, seen = listed(limit=2), []
    while True:
        seen += at_days(page)
        if not page["has_more"]:
            break
        assert page["last_id"] == page["entries"][-1]["id"]
        page = listed(limit=2, after=page["last_id"])
    assert seen == [4, 3, 2, 1, 0]
    assert listed(after=min(e["id"] for e in everything["entries"])) == {
        "object": "list", "entries": [], "has_more": False, "last_id": None, "limit": 50
    }  # fmt: skip
    assert listed("operator", user_id=2)["entries"]  # the operator key may read it too
    # who may not, and what is not a filter
    for who in ("a", "b", "a_access"):
        r = a.call(who, "GET", "/api/v1/audit")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", who
    assert a.call("none", "GET", "/api/v1/audit").status_code == 401
    for params in ({"action": "write"}, {"limit": 0}, {"limit": 101}, {"after": 0}, {"since": "yesterday"},
                   {"user_id": -1}, {"actor": "x" * 65}, {"actor": "a\x00b"}):  # fmt: skip
        r = a.call("admin", "GET", "/api/v1/audit", params=params)
        assert r.status_code == 400 and r.json()["error"]["message"], params
    assert len(a.rows()) == 5  # reading the audit is not itself audited
    # the answers are the ones the OpenAPI document declares, bodies included
    operation = schemathesis.openapi.from_asgi("/openapi.json", a.client.app)["/api/v1/audit"]["GET"]
    for who, query, status in [("admin", {"limit": 2}, 200), ("operator", {}, 200), ("b", {}, 403)]:
        case = operation.Case(headers=getattr(a.cast, who), query=query)
        response = case.call()
        assert response.status_code == status
        case.validate_response(response, checks=CONFORMANCE)


def test_a_long_resource_is_cut_to_its_column_and_kept_whole_in_detail(audited):
    a = audited
    long_id = "c" * 191
    audit.record(a.storage, actor="operator", actor_user_id=None, action="delete", target_user_id=3,
                 resource=f"conversation:{long_id}", client=None, detail={"rows": 1})  # fmt: skip
    ((entry,),) = [audit.list_entries(a.storage, target_user_id=3)]
    assert entry["resource"] == f"conversation:{long_id}"[:191]
    assert entry["detail"] == {"rows": 1, "resource": f"conversation:{long_id}"}
    with pytest.raises(ValueError, match="audit action"):
        audit.record(a.storage, actor="cli", actor_user_id=None, action="peek", target_user_id=3,
                     resource="user", client="cli")  # fmt: skip


def test_nothing_audited_holds_message_content(audited):
    a = audited
    request_id = _answer_event_id(a, "a", "convA")
    for path, params in [
        ("/api/v1/conversations", {"user_id": 1}),
        ("/api/v1/conversations/convA", {}),
        ("/api/v1/conversations/convA", {"request": request_id}),
        ("/api/v1/conversations/convA/errors", {}),
        ("/api/v1/errors", {"user_id": 1}),
        ("/api/v1/stats/conversations", {"user_id": 1}),
    ]:
        r = a.call("operator", "GET", path, params={**params, "user_id": 1})
        assert r.status_code == 200, path
    assert a.call("admin", "DELETE", "/api/v1/conversations/convA").status_code == 200
    rows, lines = a.rows(), a.log_lines()
    assert len(rows) == len(lines) == 7
    assert SECRET not in json.dumps(rows) and SECRET not in json.dumps(lines)
    assert SECRET not in json.dumps(a.call("admin", "GET", "/api/v1/audit").json())


def test_an_audit_that_cannot_be_written_refuses_the_read_with_a_503(audited):
    """No read of another user's history happens unaudited; a user's own reads go on."""
    a = audited
    with a.storage.engine.begin() as conn:
        conn.execute(text("DROP TABLE mes_audit"))
    r = a.call("admin", "GET", "/api/v1/conversations/convA")
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert SECRET not in r.text
    assert (
        a.call("operator", "DELETE", "/api/v1/conversations/convA", params={"user_id": 1}).status_code == 503
    )
    assert a.call("a", "GET", "/api/v1/conversations/convA").status_code == 200  # still there, readable
