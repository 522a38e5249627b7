"""The HTTP API on every backend: the access matrix, pagination, errors, injection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from mes.api import Services, create_app
from mes.api.auth import Authenticator
from mes.config.settings import Settings
from mes.reader import HistoryReader

from . import newapi
from .factories import BASE_MS, conversation, error

ROUTES = {
    "list": ("GET", "/api/v1/conversations"),
    "get_a": ("GET", "/api/v1/conversations/convA"),
    "get_b": ("GET", "/api/v1/conversations/convB"),
    "stats": ("GET", "/api/v1/stats/conversations"),
    "errors": ("GET", "/api/v1/errors"),
    "errors_a": ("GET", "/api/v1/conversations/convA/errors"),
}


class Api:
    def __init__(self, client: TestClient, cast: newapi.Cast, storage: Any, services: Services) -> None:
        self.client, self.cast, self.storage, self.services = client, cast, storage, services

    def call(self, who: str, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.client.request(method, path, headers={**getattr(self.cast, who), **(headers or {})}, **kw)


@pytest.fixture
def api(backend) -> Iterator[Api]:
    storage = backend.storage()
    cast = newapi.install(storage.engine)
    storage.writer.write(
        conversation("convA", 2, user_id=1)
        + [error("convA", [{"role": "user", "content": "too fast"}], user_id=1, ms=BASE_MS + 90_000)]
        + conversation("convA2", 1, user_id=1, ms=BASE_MS + 3_600_000)
        + conversation("convB", 2, user_id=2)
    )
    settings = Settings.from_env(backend.env())
    auth = Authenticator(storage.engine, api_key=newapi.OPERATOR_KEY, cache_seconds=0)
    services = Services(HistoryReader(storage), auth, settings)
    with TestClient(create_app(services=services), raise_server_exceptions=False) as client:
        yield Api(client, cast, storage, services)


DENIED = ("none", "disabled_user", "disabled_token", "expired_token", "deleted_token", "a_access_wrong_user")


def test_access_matrix(api):
    """Who gets what, on every read route."""
    for who in DENIED:
        for name, (method, path) in ROUTES.items():
            r = api.call(who, method, path)
            assert r.status_code == 401, (who, name, r.status_code, r.text)
            assert r.json()["error"]["message"], (who, name)
    for who in ("a", "a_access", "a_short_key", "a_channel_suffix"):
        assert api.call(who, "GET", "/api/v1/conversations").json()["conversations"][0]["user_id"] == 1
        assert {c["id"] for c in api.call(who, "GET", "/api/v1/conversations").json()["conversations"]} == {
            "convA",
            "convA2",
        }
        assert api.call(who, *ROUTES["get_a"]).status_code == 200, who
        assert api.call(who, *ROUTES["get_b"]).status_code == 404, who  # B's: as if it did not exist
        assert api.call(who, "GET", "/api/v1/conversations/convB/errors").status_code == 404
        assert api.call(who, *ROUTES["stats"]).json()["total_conversations"] == 2
        assert [e["conversation_id"] for e in api.call(who, *ROUTES["errors"]).json()["errors"]] == ["convA"]
        assert api.call(who, "GET", "/api/v1/conversations", params={"user_id": 2}).status_code == 403
        assert api.call(who, "GET", "/api/v1/stats/conversations", params={"user_id": 2}).status_code == 403
        assert api.call(who, "GET", "/api/v1/conversations", params={"user_id": 1}).status_code == 200
    b = api.call("b", "GET", "/api/v1/conversations").json()
    assert [c["id"] for c in b["conversations"]] == ["convB"]
    assert api.call("b", *ROUTES["get_a"]).status_code == 404
    for who in ("admin", "root", "operator"):
        listed = api.call(who, "GET", "/api/v1/conversations", params={"user_id": 2}).json()
        assert [c["id"] for c in listed["conversations"]] == ["convB"], who
        got = api.call(who, *ROUTES["get_b"]).json()  # no user_id: whoever owns it
        assert got["conversation"]["user_id"] == 2 and len(got["messages"]) == 5
        assert (
            api.call(who, "GET", "/api/v1/stats/conversations", params={"user_id": 1}).json()["total_errors"]
            == 1
        )
    assert api.call("admin", "GET", "/api/v1/conversations").json()["conversations"] == []  # their own: none
    r = api.call("operator", "GET", "/api/v1/conversations")
    assert r.status_code == 400 and "user_id" in r.json()["error"]["message"]


def test_delete_only_what_is_yours(api):
    assert api.call("b", "DELETE", "/api/v1/conversations/convA").status_code == 404
    assert api.call("b", "DELETE", "/api/v1/conversations/convA", params={"user_id": 1}).status_code == 403
    assert api.call("a", *ROUTES["get_a"]).status_code == 200  # still there
    nothing = api.call("b", "DELETE", "/api/v1/conversations/no-such-thing")
    assert (
        nothing.status_code == 404
        and nothing.json() == api.call("b", "DELETE", "/api/v1/conversations/convA").json()
    )
    for who in DENIED:
        assert api.call(who, "DELETE", "/api/v1/conversations/convA").status_code == 401
    r = api.call("a", "DELETE", "/api/v1/conversations/convA")
    assert r.status_code == 200 and r.json()["message"]
    assert api.call("a", *ROUTES["get_a"]).status_code == 404
    assert api.call("a", "DELETE", "/api/v1/conversations/convA").status_code == 404  # repeat: harmless
    assert api.call("a", *ROUTES["stats"]).json()["total_conversations"] == 1
    assert api.call("a", *ROUTES["errors"]).json()["errors"] == []
    assert api.call("admin", "DELETE", "/api/v1/conversations/convB").status_code == 200
    assert api.call("b", *ROUTES["stats"]).json()["total_messages"] == 0


def test_seed_response_keys_and_pagination(api):
    r = api.call("a", "GET", "/api/v1/conversations", params={"limit": 1})
    body = r.json()
    assert r.status_code == 200 and body["has_more"] and body["first_id"] == body["last_id"] == "convA2"
    nxt = api.call("a", "GET", "/api/v1/conversations", params={"limit": 1, "after": body["last_id"]}).json()
    assert [c["id"] for c in nxt["conversations"]] == ["convA"] and not nxt["has_more"]
    assert [
        c["id"]
        for c in api.call("a", "GET", "/api/v1/conversations", params={"offset": 1}).json()["conversations"]
    ] == ["convA"]
    msgs = api.call("a", "GET", "/api/v1/conversations/convA", params={"limit": 2}).json()["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[-1]["content"] == "answer 1"
    stats = api.call("a", *ROUTES["stats"]).json()
    for key in (
        "total_conversations",
        "total_messages",
        "total_tokens",
        "models_used",
        "daily_message_count",
    ):
        assert key in stats
    assert stats["daily_message_count"] == {"2026-01-15": 8}
    window = {"since": "2026-01-15T16:30:00Z", "until": str(BASE_MS // 1000 + 7200)}
    assert [
        c["id"] for c in api.call("a", "GET", "/api/v1/conversations", params=window).json()["conversations"]
    ] == ["convA2"]
    assert api.call("a", "GET", "/api/v1/conversations", params={"model": "gpt-4o"}).json()["conversations"]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"offset": -1}, {"order": "sideways"},
     {"after": "not-mine"}, {"since": "yesterday"}, {"since": "nan"}, {"until": "1e30"},
     {"user_id": -5}, {"user_id": 2**40}, {"model": "x" * 500}],
)  # fmt: skip
def test_bad_requests_get_a_400_with_a_message(api, params):
    r = api.call("a", "GET", "/api/v1/conversations", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"]


def test_bad_ids_and_unknown_routes_are_4xx(api):
    assert api.call("a", "GET", "/api/v1/conversations/" + "x" * 300).status_code in (400, 404, 422)
    assert api.call("a", "GET", "/api/v1/conversations/a%00b").status_code == 400
    assert (
        api.call("a", "GET", "/api/v1/stats/conversations", params={"since": "2026-13-01"}).status_code == 400
    )
    assert api.call("a", "GET", "/nope").status_code == 404
    assert api.call("a", "PUT", "/api/v1/conversations").status_code == 405


INJECTIONS = [
    "' OR '1'='1",
    "convA' OR 1=1 --",
    "1; DROP TABLE mes_conversations; --",
    '" OR ""="',
    "convB`; DELETE FROM users; #",
    "%' OR user_id=2 --",
    "\\'; SELECT pg_sleep(5); --",
    "convA/**/UNION/**/SELECT/**/*/**/FROM/**/tokens",
]


def test_sql_injection_in_every_parameter_is_inert(api):
    engine = api.storage.engine
    before = set(inspect(engine).get_table_names())
    for s in INJECTIONS:
        from urllib.parse import quote

        for method, path in [("GET", f"/api/v1/conversations/{quote(s, safe='')}"),
                             ("DELETE", f"/api/v1/conversations/{quote(s, safe='')}"),
                             ("GET", f"/api/v1/conversations/{quote(s, safe='')}/errors")]:  # fmt: skip
            r = api.call("a", method, path)
            assert r.status_code in (400, 404), (s, r.status_code, r.text)
        for param in ("after", "model", "since", "until", "order", "user_id", "limit", "offset"):
            r = api.call("a", "GET", "/api/v1/conversations", params={param: s})
            assert r.status_code == 400 or (r.status_code == 200 and r.json()["conversations"] == []), (
                param,
                s,
            )
        for param in ("since", "until", "user_id"):
            assert api.call("a", "GET", "/api/v1/stats/conversations", params={param: s}).status_code == 400
        assert (
            api.call(
                "none", "GET", "/api/v1/conversations", headers={"Authorization": f"Bearer sk-{s}"}
            ).status_code
            == 401
        )
        assert (
            api.call(
                "none", "GET", "/api/v1/conversations", headers={"Authorization": s, "New-Api-User": "1"}
            ).status_code
            == 401
        )
    assert set(inspect(engine).get_table_names()) == before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM users")).scalar_one() == 5
        assert conn.execute(text("SELECT COUNT(*) FROM mes_conversations")).scalar_one() == 3
    assert len(api.call("b", *ROUTES["get_b"]).json()["messages"]) == 5


def test_revoked_token_stops_working_after_the_cache_window(backend):
    storage = backend.storage()
    cast = newapi.install(storage.engine)
    now = [0.0]
    auth = Authenticator(storage.engine, cache_seconds=5, clock=lambda: now[0])
    header = cast.a["Authorization"]
    assert auth.authenticate(header).user_id == 1
    newapi.disable_token(storage.engine, "a" * 48)
    assert auth.authenticate(header).user_id == 1  # cached: no round trip
    now[0] = 5.1
    with pytest.raises(Exception, match="disabled"):
        auth.authenticate(header)


def test_health_readiness_and_metrics(api):
    assert api.client.get("/healthz").json()["status"] == "ok"
    assert api.client.get("/healthz", headers={"X-Request-ID": "req-42"}).headers["x-request-id"] == "req-42"
    assert len(api.client.get("/healthz").headers["x-request-id"]) == 16  # made up when not given
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    api.call("a", "GET", "/api/v1/conversations")
    metrics = api.client.get("/metrics").text
    assert 'mes_api_request_seconds_count{method="GET",route="/api/v1/conversations",status="200"}' in metrics
    spec = api.client.get("/openapi.json").json()
    assert "/api/v1/stats/conversations" in spec["paths"]
