"""The API's OpenAPI description is the API as it is: every status the routes answer in
the usual cases is declared with the body it has, the security schemes are New API's,
and /docs and /redoc load only assets the app serves itself."""

from __future__ import annotations

import dataclasses
import html.parser
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.resources import files
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error as server_error
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from mes.api import Services, create_app
from mes.api.auth import Authenticator
from mes.config.settings import Settings
from mes.embedded import free_port
from mes.producer import Producer
from mes.reader import HistoryReader

from . import newapi
from .conftest import missing
from .factories import BASE_MS, chat, conversation, error
from .test_api_fuzz import CONFORMANCE

CONV = "/api/v1/conversations/{conversation_id}"


def _dead_engine() -> Any:
    """An engine on a port nothing listens on: every connection is refused (a real 503)."""
    return create_engine(
        f"mysql+pymysql://nobody@127.0.0.1:{free_port()}/none",
        poolclass=NullPool,
        connect_args={"connect_timeout": 2},
    )


@dataclasses.dataclass
class Described:
    """The app on real services, and its spec as schemathesis reads it from the app."""

    services: Services
    cast: newapi.Cast

    def call(self, method: str, path: str, who: str = "a", *, services: Services | None = None,
             expect: int, **parts: Any) -> Any:  # fmt: skip
        """One request through schemathesis; asserts its status, then that the answer is
        one the spec declares for the operation (status, content type, headers, body)."""
        app = create_app(services=services or self.services)
        operation = schemathesis.openapi.from_asgi("/openapi.json", app)[path][method]
        headers = {**getattr(self.cast, who), **parts.pop("headers", {})}
        case = operation.Case(headers=headers, **parts)
        response = case.call()
        assert response.status_code == expect, (
            f"{method} {path} {parts}: {response.status_code} {response.text}"
        )
        # a 503 is the expected answer here (a dependency down), not a failure
        case.validate_response(
            response, checks=[c for c in CONFORMANCE if expect < 500 or c is not server_error]
        )
        return response


@pytest.fixture
def described(backend, redis_server) -> Iterator[Described]:
    storage = backend.storage()
    cast = newapi.install(storage.engine)
    tools = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "alice", "content": [{"type": "text", "text": "weather in Paris?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]  # fmt: skip
    storage.writer.write(
        conversation("c1", 2, user_id=1)
        + [chat("tools", tools, "18C and sunny", user_id=1, ms=BASE_MS + 5_000, request_id="req-1")]
        + [error("c1", [{"role": "user", "content": "too fast"}], user_id=1, ms=BASE_MS + 90_000)]
        + conversation("shared", 1, user_id=1)
        + conversation("shared", 1, user_id=2)
    )
    env = backend.env(
        REDIS_CONN_STRING=redis_server.url,
        MES_SPOOL_DIR=str(backend.tmp_path / "spool"),
        MES_INGEST_MAX_BYTES="1024",
    )
    cfg = Settings.from_env(env)
    producer = Producer(cfg.producer)
    auth = Authenticator(storage.engine, api_key=newapi.OPERATOR_KEY, cache_seconds=0)
    services = Services(HistoryReader(storage), auth, cfg, redis=producer._transport.redis, producer=producer)
    yield Described(services, cast)
    producer.close()


def test_every_usual_answer_is_declared_with_its_body(described, redis_server):
    """Each route's usual answers, 2xx and refusals, on real databases: the status is one
    the spec lists for the route, and the body, content type and headers are the declared."""
    d = described
    # reads
    listed = d.call("GET", "/api/v1/conversations", expect=200).json()
    assert {c["conversation_id"] for c in listed["conversations"]} == {"c1", "tools", "shared"}
    d.call("GET", "/api/v1/conversations", query={"after": "nope"}, expect=400)
    d.call("GET", "/api/v1/conversations", query={"since": "yesterday"}, expect=400)
    d.call("GET", "/api/v1/conversations", "none", expect=401)
    d.call("GET", "/api/v1/conversations", "disabled_token", expect=401)
    d.call("GET", "/api/v1/conversations", query={"user_id": 2}, expect=403)
    d.call("GET", "/api/v1/conversations", "operator", expect=400)  # the operator key names a user
    d.call("GET", "/api/v1/conversations", "a_access", expect=200)
    read = d.call("GET", CONV, path_parameters={"conversation_id": "tools"}, expect=200).json()
    assert any("tool_calls" in m for m in read["messages"]) and read["object"] == "conversation"
    answer = read["messages"][-1]
    context = d.call("GET", CONV, path_parameters={"conversation_id": "tools"},
                     query={"request": answer["event_id"]}, expect=200).json()  # fmt: skip
    assert context["object"] == "conversation.request"
    d.call("GET", CONV, path_parameters={"conversation_id": "tools"}, query={"request": "none"}, expect=404)
    d.call("GET", CONV, path_parameters={"conversation_id": "missing"}, expect=404)
    d.call("GET", CONV, path_parameters={"conversation_id": "bad\x00id"}, expect=400)
    d.call("GET", CONV, "b", path_parameters={"conversation_id": "c1"}, query={"user_id": 1}, expect=403)
    d.call("GET", CONV, "operator", path_parameters={"conversation_id": "shared"}, expect=409)
    d.call(
        "GET", CONV, "admin", path_parameters={"conversation_id": "shared"}, query={"user_id": 2}, expect=200
    )
    # error history
    errors = d.call("GET", "/api/v1/errors", expect=200).json()
    assert [e["conversation_id"] for e in errors["errors"]] == ["c1"]
    d.call("GET", "/api/v1/errors", query={"after": "nope"}, expect=400)
    d.call("GET", "/api/v1/errors", query={"user_id": 2}, expect=403)
    d.call("GET", CONV + "/errors", path_parameters={"conversation_id": "c1"}, expect=200)
    d.call("GET", CONV + "/errors", path_parameters={"conversation_id": "missing"}, expect=404)
    d.call("GET", CONV + "/errors", "operator", path_parameters={"conversation_id": "shared"}, expect=409)
    # stats
    stats = d.call("GET", "/api/v1/stats/conversations", expect=200).json()
    assert stats["total_conversations"] == 3
    d.call("GET", "/api/v1/stats/conversations", query={"since": "2026-13-01"}, expect=400)
    d.call("GET", "/api/v1/stats/conversations", query={"user_id": 2}, expect=403)
    # delete
    d.call("DELETE", CONV, path_parameters={"conversation_id": "c1"}, expect=200)
    d.call("DELETE", CONV, path_parameters={"conversation_id": "c1"}, expect=404)
    d.call("DELETE", CONV, "operator", path_parameters={"conversation_id": "shared"}, expect=409)
    # ingest
    good = chat("in", [{"role": "user", "content": "Hi"}], "Hello", user_id=1)
    ok = d.call("POST", "/api/v1/events", body={"events": [good]}, expect=200).json()
    assert ok["stored_in"] == "queued"
    some = d.call("POST", "/api/v1/events", body={"events": [good, {"kind": "chat"}, 7]}, expect=207).json()
    assert [r["status"] for r in some["results"]] == ["accepted", "rejected", "rejected"]
    d.call("POST", "/api/v1/events", body={"events": "no"}, expect=400)
    d.call("POST", "/api/v1/events", body={"events": [good] * 20}, expect=413)  # MES_INGEST_MAX_BYTES
    d.call("POST", "/api/v1/events", "none", body={"events": [good]}, expect=401)
    no_queue = dataclasses.replace(d.services, producer=None)
    d.call("POST", "/api/v1/events", body={"events": [good]}, services=no_queue, expect=503)
    # credentials that cannot be checked now: a lookup budget spent (429), New API's database down (503)
    storage = d.services.reader.storage
    spent = Authenticator(storage.engine, lookups_per_second=0, lookup_burst=0)
    for path, parts in [("/api/v1/conversations", {}), ("/api/v1/events", {"body": {"events": []}})]:
        method = "POST" if "body" in parts else "GET"
        d.call(method, path, services=dataclasses.replace(d.services, auth=spent), expect=429, **parts)
        down = dataclasses.replace(d.services, auth=Authenticator(_dead_engine()))
        d.call(method, path, services=down, expect=503, **parts)
    # operations
    d.call("GET", "/healthz", "none", expect=200)
    d.call("GET", "/readyz", "none", expect=200)
    d.call("GET", "/metrics", "none", expect=200)
    redis_server.stop()
    assert d.call("GET", "/readyz", "none", expect=503).json()["down"] == ["redis"]


def _spec() -> dict[str, Any]:
    with TestClient(create_app(services=None)) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_the_spec_declares_new_apis_security_and_types_every_json_answer():
    spec = _spec()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["accessToken"] | {"description": ""} == {
        "type": "apiKey", "in": "header", "name": "Authorization", "description": ""
    }  # fmt: skip
    assert (schemes["newApiUser"]["in"], schemes["newApiUser"]["name"]) == ("header", "New-Api-User")
    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    assert len(operations) == 12
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        if path.startswith("/api/"):
            # one way in per requirement: a Bearer credential, or an access token with its user
            assert op["security"] == [{"bearer": []}, {"accessToken": [], "newApiUser": []}], where
            assert {"400", "401", "429", "503"} <= set(op["responses"]), where
            assert not any(p["in"] == "header" for p in op.get("parameters", [])), where
        else:
            assert "security" not in op, where  # health, readiness and metrics are open
        assert "422" not in op["responses"], where  # MES answers 400, never 422
        for status, answer in op["responses"].items():
            (media, content), *others = answer["content"].items()
            assert not others, f"{where} {status}"
            schema = _resolve(spec, content["schema"])
            if media == "application/json":
                assert schema.get("type") != "string", f"{where} {status} is typed a bare string"
                for alternative in schema.get("oneOf") or schema.get("anyOf") or [schema]:
                    assert _resolve(spec, alternative)["type"] == "object", f"{where} {status}"
            else:
                assert (path, media) == ("/metrics", "text/plain"), where
            if status[0] in "45" and path.startswith("/api/") and status != "413":
                assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, f"{where} {status}"
        if path.startswith("/api/"):
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"], where
            assert "Retry-After" in op["responses"]["429"]["headers"], where
    assert "HTTPValidationError" not in spec["components"]["schemas"]


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "spec-url") and v]


ASSETS = files("fastapi_offline") / "static"
MEDIA = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.mark.parametrize(("page", "marker"), [("/docs", b"SwaggerUIBundle"), ("/redoc", b"Redoc")])
def test_docs_pages_load_only_assets_the_app_serves(page, marker):
    """No URL of another host in the page, and every URL it loads answers 200 from the app
    with the packaged file: the page works on a machine without internet."""
    with TestClient(create_app(services=None), base_url="http://mes.invalid") as client:
        answer = client.get(page)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        assert "http://" not in answer.text and "https://" not in answer.text
        links = _Links()
        links.feed(answer.text)
        assert len(links.urls) >= 2, links.urls  # the script and the spec, at least
        scripts = 0
        for url in links.urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
            got = client.get(url)
            assert got.status_code == 200, url
            suffix = "." + url.rsplit(".", 1)[-1]
            assert MEDIA[suffix] in got.headers["content-type"], (url, got.headers["content-type"])
            if url.startswith("/docs/assets/"):
                assert got.content == (ASSETS / url.rsplit("/", 1)[1]).read_bytes()
                scripts += marker in got.content
        assert scripts == 1
        if page == "/docs":
            assert "openapi.json" in answer.text  # Swagger UI's url: ... is in a script, not an attribute


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.parametrize(("page", "rendered"), [
    ("/docs", ['data-path="/api/v1/stats/conversations"', "Authorize"]),
    ("/redoc", ["/api/v1/stats/conversations", "accessToken", "newApiUser", "Too many unknown credentials"]),
])  # fmt: skip
def test_docs_pages_render_in_a_real_browser_that_reaches_no_other_host(page, rendered, tmp_path):
    """``mes serve`` for real, and headless Chromium whose only way to any host but this
    one is a proxy that refuses: the page renders the API from the app's own assets."""
    # .ci/run installs Debian's chromium; elsewhere a skip, or a failure under REQUIRE_ALL
    if BROWSER is None:
        missing("chromium", "not on PATH (apt-get install chromium)")
    port, proxy = free_port(), free_port()  # the proxy's port: nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MES_", "SQL_", "REDIS_"))}
    env.update(MES_SQL_DSN=f"sqlite:///{tmp_path / 'mes.db'}", MES_DATA_DIR=str(tmp_path / "data"),
               MES_API_KEY="k" * 20, MES_API_PORT=str(port))  # fmt: skip
    server = subprocess.Popen([sys.executable, "-m", "mes", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "mes serve did not answer"
            time.sleep(0.2)
        shown = subprocess.run(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'chromium'}", f"--proxy-server=127.0.0.1:{proxy}",
             "--virtual-time-budget=20000", "--dump-dom", f"http://127.0.0.1:{port}{page}"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for text in rendered:
        assert text in shown.stdout, f"{page} did not render {text!r}"
