"""The credential cache and the lookup budget (issue 16), on New API's tables of every
backend: bounded LRUs that keep hot users, a flood of made-up tokens that costs bounded
queries, and a token that stays a token whatever headers come with it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, insert

from mes.api import Services, create_app
from mes.api import auth as auth_module
from mes.api.auth import Authenticator, AuthError
from mes.config.settings import Settings
from mes.reader import HistoryReader

from . import newapi
from .factories import conversation


class Lookups:
    """Counts the queries an engine runs on New API's ``tokens`` and ``users`` tables."""

    def __init__(self, engine: Any) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "tokens" in statement or "users" in statement:
            self.count += 1


@pytest.fixture
def newapi_db(backend) -> Iterator[tuple[Any, newapi.Cast]]:
    storage = backend.storage()
    cast = newapi.install(storage.engine)
    yield storage, cast


def random_token() -> str:
    return "Bearer sk-" + secrets.token_hex(24)


def test_a_full_cache_evicts_the_least_recently_used_only(newapi_db):
    """A hot token stays cached while colder ones, and a flood of refused ones, pass through."""
    storage, cast = newapi_db
    now = [0.0]
    auth = Authenticator(storage.engine, cache_seconds=60, max_known=3, max_refused=3,
                         lookup_burst=10_000, clock=lambda: now[0])  # fmt: skip
    lookups = Lookups(storage.engine)
    hot = cast.a["Authorization"]
    assert auth.authenticate(hot).user_id == 1
    for who in ("b", "admin", "root", "a_short_key"):
        auth.authenticate(getattr(cast, who)["Authorization"])
        assert auth.authenticate(hot).user_id == 1
    assert lookups.count == 5  # each once: the hot one never again
    auth.authenticate(cast.root["Authorization"])  # still cached (among the 3 most recent)
    assert lookups.count == 5
    assert auth.authenticate(cast.b["Authorization"]).user_id == 2  # evicted: looked up again
    assert lookups.count == 6
    for _ in range(500):  # refused credentials have their own bound: they evict no user
        with pytest.raises(AuthError):
            auth.authenticate(random_token())
    before = lookups.count
    assert auth.authenticate(hot).user_id == 1
    assert auth.authenticate(cast.b["Authorization"]).user_id == 2
    assert lookups.count == before
    assert len(auth._refused) == 3 and len(auth._known) == 3


def test_spellings_of_one_token_share_one_cache_entry(newapi_db):
    """With or without sk-, Bearer or a -<channel> suffix: one lookup, one entry."""
    storage, _cast = newapi_db
    auth = Authenticator(storage.engine, cache_seconds=60, clock=lambda: 0.0)
    lookups = Lookups(storage.engine)
    key = "a" * 48
    spellings = [f"Bearer sk-{key}", f"sk-{key}", *(f"Bearer sk-{key}-{n}" for n in range(50))]
    assert {auth.authenticate(s, "2").user_id for s in spellings} == {1}
    assert auth.authenticate(key).user_id == 1  # no sk- and no New-Api-User: a token too
    assert lookups.count == 1 and len(auth._known) == 1


def test_a_flood_of_unknown_tokens_costs_at_most_the_budget(newapi_db):
    """2,000 made-up tokens at once cost at most LOOKUP_BURST queries (the rest get 429
    without one), a second later at most LOOKUPS_PER_SECOND more; a user let in before
    is still re-checked when the cache entry expires."""
    storage, cast = newapi_db
    now = [100.0]
    auth = Authenticator(storage.engine, cache_seconds=5, clock=lambda: now[0])
    assert auth.authenticate(cast.a["Authorization"]).user_id == 1
    lookups = Lookups(storage.engine)
    statuses: dict[int, int] = {}
    for _ in range(2000):
        try:
            auth.authenticate(random_token())
        except AuthError as exc:
            statuses[exc.status] = statuses.get(exc.status, 0) + 1
    assert statuses == {401: lookups.count, 429: 2000 - lookups.count}
    assert lookups.count <= auth_module.LOOKUP_BURST, lookups.count
    now[0] += 1.0
    start = lookups.count
    for _ in range(2000):
        with pytest.raises(AuthError):
            auth.authenticate(random_token(), "1")  # an sk- token, whatever the header says
    assert lookups.count - start <= auth_module.LOOKUPS_PER_SECOND + 1
    now[0] += 10.0  # past the cache window: A is looked up again, budget or not
    for _ in range(2000):
        with pytest.raises(AuthError):
            auth.authenticate(random_token())
    start = lookups.count
    assert auth.authenticate(cast.a["Authorization"]).user_id == 1
    assert lookups.count == start + 1


def test_good_tokens_never_wait_for_the_budget(newapi_db):
    """300 users' first calls at one instant (a restart) all get in on a budget of 5."""
    storage, _cast = newapi_db
    with storage.engine.begin() as conn:
        conn.execute(insert(newapi.tokens), [
            {"id": 1000 + n, "user_id": 1, "key": f"{n:048d}", "status": 1, "name": f"t{n}", "expired_time": -1}
            for n in range(300)
        ])  # fmt: skip
    auth = Authenticator(storage.engine, cache_seconds=5, lookup_burst=5, lookups_per_second=0.0,
                         clock=lambda: 0.0)  # fmt: skip
    for n in range(300):
        assert auth.authenticate(f"Bearer sk-{n:048d}").user_id == 1
    statuses = []
    for _ in range(7):
        with pytest.raises(AuthError) as refused:
            auth.authenticate(random_token())
        statuses.append(refused.value.status)
    assert statuses == [401] * 5 + [429] * 2  # the budget was whole: it pays for refusals only


def serve(backend: Any, storage: Any, auth: Authenticator) -> TestClient:
    storage.writer.write(conversation("mine", 1, user_id=1) + conversation("bobs", 1, user_id=2))
    services = Services(HistoryReader(storage), auth, Settings.from_env(backend.env()))
    return TestClient(create_app(services=services), raise_server_exceptions=False)


def test_an_sk_token_with_a_new_api_user_header_is_a_token(backend, newapi_db):
    """New API's clients send New-Api-User with every call: it changes nothing for a token."""
    storage, cast = newapi_db
    with serve(backend, storage, Authenticator(storage.engine, cache_seconds=0)) as http:
        for user in ("1", "2", "not-a-number"):
            r = http.get("/api/v1/conversations", headers={**cast.a, "New-Api-User": user})
            assert r.status_code == 200, (user, r.text)
            assert [c["id"] for c in r.json()["conversations"]] == ["mine"]
        plain = {"Authorization": cast.a["Authorization"].removeprefix("Bearer "), "New-Api-User": "2"}
        assert http.get("/api/v1/conversations", headers=plain).status_code == 200
        # an access token still needs the header, naming its own user
        assert http.get("/api/v1/conversations", headers=cast.a_access).status_code == 200
        assert http.get("/api/v1/conversations", headers=cast.a_access_wrong_user).status_code == 401


def test_over_the_budget_an_unknown_token_gets_429_with_retry_after(backend, newapi_db):
    storage, cast = newapi_db
    # a clock that stands still: the budget refills only when a test says so
    auth = Authenticator(storage.engine, api_key=newapi.OPERATOR_KEY, lookup_burst=3, clock=lambda: 0.0)
    with serve(backend, storage, auth) as http:
        answers = [
            http.get("/api/v1/conversations", headers={"Authorization": random_token()}) for _ in range(5)
        ]
        assert [r.status_code for r in answers] == [401, 401, 401, 429, 429]
        assert answers[-1].headers["retry-after"] == "1"
        assert answers[-1].json()["error"]["code"] == "rate_limited"
        assert (
            http.get("/api/v1/conversations", headers=cast.operator, params={"user_id": 1}).status_code == 200
        )
