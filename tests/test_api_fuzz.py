"""The HTTP API fuzzed from its own OpenAPI spec (schemathesis): no input gives a 5xx,
and every answer is one the spec declares (its status, content type, headers and body).

Every operation, on every backend, with the operator key (so calls get past
authentication and reach the database) and, for a share of cases, with whatever
credentials schemathesis makes up from the spec's security schemes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from mes.api import Services, create_app
from mes.api.auth import Authenticator
from mes.config.settings import Settings
from mes.producer import Producer
from mes.reader import HistoryReader

from . import newapi
from .factories import conversation, error

APP = create_app(services=None)  # the fixture below puts the services in place
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
# What an answer must be, by the spec: these checks fail a case whose status is not declared
# for its operation, or whose body, content type or headers are not the declared ones.
CONFORMANCE = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture
def fuzz_services(backend, redis_server) -> Iterator[Services]:
    storage = backend.storage()
    newapi.install(storage.engine)
    storage.writer.write(
        conversation("c1", 2, user_id=1)
        + conversation("c2", 1, user_id=0)
        + [error("c1", [{"role": "user", "content": "x"}], user_id=1)]
    )
    env = backend.env(REDIS_CONN_STRING=redis_server.url, MES_SPOOL_DIR=str(backend.tmp_path / "spool"))
    cfg = Settings.from_env(env)
    producer = Producer(cfg.producer)
    auth = Authenticator(storage.engine, api_key=newapi.OPERATOR_KEY, cache_seconds=5)
    services = Services(HistoryReader(storage), auth, cfg, redis=producer._transport.redis, producer=producer)
    APP.state.services = services
    yield services
    producer.close()


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_no_input_gives_a_server_error_or_an_undeclared_answer(case: Any, fuzz_services: Services) -> None:
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    made_up = next((v for k, v in (case.headers or {}).items() if k.lower() == "authorization"), None)
    headers["Authorization"] = (
        made_up if made_up and not hash(str(case.query)) % 4 else f"Bearer {newapi.OPERATOR_KEY}"
    )
    case.headers = headers
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: {response.text[:300]}"
    )
    case.validate_response(response, checks=CONFORMANCE)
    if response.status_code >= 400:
        assert response.json()["error"]["message"]  # every refusal says why, as JSON
