"""The HTTP API against hostile or unusual input (issue 16): ids with any character,
times out of range, made-up methods and paths, a database that is down, a large ingest."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from mes.api import Services, create_app
from mes.api.auth import Authenticator
from mes.config.settings import Settings
from mes.embedded import free_port
from mes.producer import Producer
from mes.reader import HistoryReader
from mes.storage import Storage

from . import newapi
from .factories import BASE_MS, conversation, error
from .netproxy import Proxy

# Ids the contract allows (1-191 characters of anything) that a path can mangle.
ODD_IDS = [
    "../../etc",  # the report's: slashes and dot segments
    "..",
    "a/b",
    "x",
    "x/errors",  # ends like the errors route
    "trailing/",
    "/leading",
    "100% sure %2F",  # a percent sign, and the text of an escape
    "what? #1 & more",  # query and fragment delimiters, spaces
    "a+b=c;d,e",
    "会话/😀 ünïcode",
    "z" * 191,
]


def enc(conversation_id: str) -> str:
    """The id as one path segment, every reserved character escaped (dots too)."""
    return quote(conversation_id, safe="").replace(".", "%2E")


class Client:
    def __init__(self, client: TestClient, cast: newapi.Cast, storage: Any) -> None:
        self.http, self.cast, self.storage = client, cast, storage

    def call(self, who: str, method: str, path: str, **kw: Any) -> Any:
        return self.http.request(method, path, headers=getattr(self.cast, who), **kw)


def _client(
    storage: Any, settings: Settings, reader: HistoryReader | None = None, **services: Any
) -> TestClient:
    auth = Authenticator(storage.engine, api_key=newapi.OPERATOR_KEY, cache_seconds=0)
    svc = Services(reader or HistoryReader(storage), auth, settings, **services)
    return TestClient(create_app(services=svc), raise_server_exceptions=False)


@pytest.fixture
def odd(backend) -> Iterator[Client]:
    """User 1 has a conversation (and a failed request) under each of ``ODD_IDS``."""
    storage = backend.storage()
    cast = newapi.install(storage.engine)
    events = []
    for n, cid in enumerate(ODD_IDS):
        events += conversation(cid, 2, user_id=1, ms=BASE_MS + n * 60_000)
        events.append(
            error(cid, [{"role": "user", "content": f"failed {n}"}], user_id=1, ms=BASE_MS + n * 60_000 + 1)
        )
    storage.writer.write(events)
    with _client(storage, Settings.from_env(backend.env())) as client:
        yield Client(client, cast, storage)


# -- ids ----------------------------------------------------------------------------------
def test_every_route_serves_ids_with_any_character(odd):
    """Percent-encoded ids reach GET, errors and DELETE, on real rows of every backend."""
    listed = odd.call("a", "GET", "/api/v1/conversations", params={"limit": 100}).json()["conversations"]
    assert sorted(c["id"] for c in listed) == sorted(ODD_IDS)
    for cid in ODD_IDS:
        path = f"/api/v1/conversations/{enc(cid)}"
        got = odd.call("a", "GET", path)
        assert got.status_code == 200, (cid, got.status_code, got.text)
        assert got.json()["conversation_id"] == cid and len(got.json()["messages"]) == 5
        errors = odd.call("a", "GET", path + "/errors")
        assert errors.status_code == 200, (cid, errors.text)
        assert errors.json()["conversation_id"] == cid and len(errors.json()["errors"]) == 1
        assert odd.call("b", "GET", path).status_code == 404  # someone else's: as if none
        assert odd.call("b", "DELETE", path).status_code == 404
    for cid in ODD_IDS:
        path = f"/api/v1/conversations/{enc(cid)}"
        deleted = odd.call("a", "DELETE", path)
        assert deleted.status_code == 200 and deleted.json()["conversation_id"] == cid, (cid, deleted.text)
        assert odd.call("a", "GET", path).status_code == 404
    assert odd.call("a", "GET", "/api/v1/conversations").json()["conversations"] == []


def test_an_unencoded_slash_is_part_of_the_id_and_a_literal_errors_suffix_is_the_errors_route(odd):
    """The rule ``ConversationRoute`` documents: ``x/errors`` is x's errors, ``x%2Ferrors`` an id."""
    assert odd.call("a", "GET", "/api/v1/conversations/a/b").json()["conversation_id"] == "a/b"
    assert odd.call("a", "GET", "/api/v1/conversations/a/b/errors").json()["conversation_id"] == "a/b"
    errors_of_x = odd.call("a", "GET", "/api/v1/conversations/x/errors").json()
    assert errors_of_x["object"] == "list" and errors_of_x["conversation_id"] == "x"
    conv = odd.call("a", "GET", "/api/v1/conversations/x%2Ferrors").json()
    assert conv["object"] == "conversation" and conv["conversation_id"] == "x/errors"
    assert (
        odd.call("a", "GET", "/api/v1/conversations/x%2Ferrors/errors").json()["conversation_id"]
        == "x/errors"
    )
    assert odd.call("a", "DELETE", "/api/v1/conversations/x/errors").status_code == 405  # the errors route's
    assert odd.call("a", "GET", "/api/v1/conversations/x").status_code == 200  # not deleted by that


def test_ids_the_contract_refuses_get_a_400(odd):
    for path in (
        "/api/v1/conversations/" + "z" * 192,
        "/api/v1/conversations/a%00b",
        "/api/v1/conversations/%FF%FE",
    ):
        for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/errors")):
            r = odd.call("a", method, path + suffix)
            assert r.status_code == 400 and r.json()["error"]["message"], (method, path, r.text)


# -- times --------------------------------------------------------------------------------
TIME_ROUTES = ("/api/v1/conversations", "/api/v1/errors")
OUT_OF_RANGE = [
    "0001-01-01T00:00:00+01:00",  # valid ISO, but year 0 in UTC
    "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
    "9999-12-31T23:59:59Z",  # the next day's midnight in TZ is no date
    "0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "253402300799",
    "-1",
]


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_times_out_of_range_get_a_400_on_every_route(odd, value):
    for route in TIME_ROUTES:
        for name in ("since", "until"):
            r = odd.call("a", "GET", route, params={name: value})
            assert r.status_code == 400, (route, name, value, r.status_code, r.text)
            assert "out of range" in r.json()["error"]["message"]


def test_the_ends_of_the_time_range_are_served(odd):
    for route in TIME_ROUTES:
        r = odd.call(
            "a", "GET", route, params={"since": "1970-01-01T00:00:00Z", "until": "9998-12-31T23:59:59Z"}
        )
        assert r.status_code == 200, (route, r.text)
    for since, until in (("0001-01-01", "9999-12-31"), ("9999-12-31", None)):
        assert (
            odd.call(
                "a", "GET", "/api/v1/stats/conversations", params={"since": since, "until": until}
            ).status_code
            == 200
        )


_moments = st.builds(
    lambda d, minutes: (
        d.isoformat()
        + ("Z" if minutes is None else f"{'+-'[minutes < 0]}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}")
    ),
    st.datetimes(),
    st.one_of(st.none(), st.integers(-(24 * 60 - 1), 24 * 60 - 1)),
)


@pytest.mark.parametrize("tz", ["UTC", "Pacific/Kiritimati", "Etc/GMT+12"])
def test_no_time_or_day_gives_a_server_error(backend, tz):
    """Any ISO date-time with any offset, or day, in any parameter: 200 or 400, in any TZ."""
    storage = backend.storage(tz=tz)
    cast = newapi.install(storage.engine)
    storage.writer.write(conversation("t", 1, user_id=1) + [error("t", [{"role": "user", "content": "x"}])])

    @settings(max_examples=40, deadline=None)
    @given(moment=_moments, day=st.dates(), which=st.sampled_from(["since", "until"]))
    @example(moment="0001-01-01T00:00:00+01:00", day=dt.date.min, which="since")
    @example(moment="9999-12-31T23:59:59-14:00", day=dt.date.max, which="until")
    def check(client: TestClient, moment: str, day: Any, which: str) -> None:
        for route in TIME_ROUTES:
            r = client.get(route, params={which: moment}, headers=cast.a)
            assert r.status_code in (200, 400), (route, which, moment, r.status_code, r.text)
        r = client.get("/api/v1/stats/conversations", params={which: day.isoformat()}, headers=cast.a)
        assert r.status_code == 200, (which, day, r.text)

    with _client(storage, Settings.from_env(backend.env(TZ=tz))) as client:
        check(client)


# -- metrics ------------------------------------------------------------------------------
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}


def _series(text: str) -> set[tuple[str, str, str]]:
    out = set()
    for family in text_string_to_metric_families(text):
        if family.name == "mes_api_request_seconds":
            out |= {(s.labels["method"], s.labels["route"], s.labels["status"]) for s in family.samples
                    if s.name.endswith("_count")}  # fmt: skip
    return out


def _flood(client: TestClient, rng: random.Random, n: int) -> None:
    for _ in range(n):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
        path = "/" + "/".join(
            "".join(rng.choices(string.ascii_lowercase + "%2F", k=6)) for _ in range(rng.randint(1, 4))
        )
        client.request(method, path)
        client.request(method, "/api/v1/conversations/" + path.lstrip("/"))
        client.get(path)
        client.get("/api/v1/conversations/" + path.lstrip("/"))  # an id route: 401, labelled by template


def test_metrics_labels_stay_bounded_under_made_up_methods_and_paths(tmp_path):
    """Made-up methods and random paths, unauthenticated, do not add series to /metrics."""
    env = {"MES_SQL_DSN": f"sqlite:///{tmp_path / 'mes.db'}", "MES_DATA_DIR": str(tmp_path / "data")}
    storage = Storage.open(Settings.from_env(env).database)
    rng = random.Random(16)
    with _client(storage, Settings.from_env(env)) as client:
        client.get("/metrics")  # its own series, before the first look
        _flood(client, rng, 150)
        first = client.get("/metrics").text
        _flood(client, rng, 150)
        second = client.get("/metrics").text
    storage.close()
    series = _series(second)
    templates = set(client.app.openapi()["paths"]) | {"/metrics", "/openapi.json", "/docs", "/redoc"}
    assert {m for m, _r, _s in series} <= HTTP_METHODS | {"other"}
    assert {r for _m, r, _s in series} <= templates | {"unmatched"}, {r for _m, r, _s in series} - templates
    assert _series(first) == series  # the second flood added nothing
    assert len(second) < len(first) + 2_000  # (counts grow by a few digits)


# -- readiness ----------------------------------------------------------------------------
def test_readiness_names_what_is_down_and_nothing_else(server_backend):
    """A database and a Redis that are down: 503 naming them, no host, port, user or driver."""
    target_host, target_port = server_backend.address
    proxy = Proxy(target_host, target_port)
    dsn = server_backend.proxied_dsn(proxy.port)
    env = server_backend.env(MES_SQL_DSN=dsn, MES_DAILY_PARTITION="true")
    settings_ = Settings.from_env(env)
    storage = Storage.open(settings_.database)
    dead_redis_port = free_port()
    dead_redis = redis.Redis(host="127.0.0.1", port=dead_redis_port, socket_connect_timeout=1)
    reader = HistoryReader(storage)  # it reads the catalog now, while the database is up
    try:
        with _client(storage, settings_, reader) as client:
            assert client.get("/readyz").json() == {"status": "ready", "checks": {"database": "ok"}}
        proxy.cut()
        with _client(storage, settings_, reader, redis=dead_redis) as client:
            r = client.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unavailable" and body["down"] == ["database", "redis"]
        assert body["checks"] == {"database": "unavailable", "redis": "unavailable"}
        lowered = r.text.lower()
        for leak in ("127.0.0.1", "localhost", str(proxy.port), str(target_port), str(dead_redis_port),
                     "root", "postgres", "mysql", "pymysql", "psycopg", "operationalerror", "error ",
                     "connect", "refused", "password", "sqlalchemy"):  # fmt: skip
            assert leak not in lowered, (leak, r.text)
    finally:
        proxy.close()
        storage.close()


# -- ingest -------------------------------------------------------------------------------
def test_a_large_ingest_is_parsed_and_checked_off_the_event_loop(tmp_path, redis_server, monkeypatch):
    """A 15 MB body of 1,000 events is accepted whole, and neither its parsing nor its
    checks run on the event loop's thread (where they would stall every other request)."""
    from mes.api.routes import ingest

    env = {"MES_SQL_DSN": f"sqlite:///{tmp_path / 'mes.db'}", "MES_DATA_DIR": str(tmp_path / "data"),
           "REDIS_CONN_STRING": redis_server.url, "MES_SPOOL_DIR": str(tmp_path / "spool")}  # fmt: skip
    settings_ = Settings.from_env(env)
    storage = Storage.open(settings_.database)
    producer = Producer(settings_.producer)
    on_loop: list[str] = []

    def on_the_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    class WatchedOrjson:
        JSONDecodeError = orjson.JSONDecodeError
        JSONEncodeError = orjson.JSONEncodeError
        dumps = staticmethod(orjson.dumps)

        @staticmethod
        def loads(data: Any) -> Any:
            if on_the_loop():
                on_loop.append("loads")
            return orjson.loads(data)

    real_prepare = ingest.prepare_events

    def watched_prepare(*args: Any, **kwargs: Any) -> Any:
        if on_the_loop():
            on_loop.append("prepare_events")
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(ingest, "orjson", WatchedOrjson)
    monkeypatch.setattr(ingest, "prepare_events", watched_prepare)
    content = "y" * 15_000
    events = [
        {"kind": "chat", "conversation_id": f"big-{n}", "user_id": 1, "model_name": "gpt-4o",
         "messages": [{"role": "user", "content": content}],
         "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}}
        for n in range(1000)
    ]  # fmt: skip
    body = orjson.dumps({"events": events})
    assert len(body) > 15_000_000
    with _client(storage, settings_, redis=producer._transport.redis, producer=producer) as client:
        headers = {"Authorization": f"Bearer {newapi.OPERATOR_KEY}", "Content-Type": "application/json"}
        r = client.post("/api/v1/events", content=body, headers=headers)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["accepted"] == 1000 and r.json()["stored_in"] == "queued"
    assert on_loop == []
    producer.close()
    storage.close()
