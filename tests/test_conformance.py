"""Any gateway can feed MES: events pushed with nothing but the Redis protocol, and
through HTTP, land exactly as the Python producer's do (schemas/CONTRACT.md)."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from mes.api import Services, create_app
from mes.api.auth import Authenticator
from mes.producer import Producer
from mes.reader import HistoryReader
from mes.storage import Storage

from . import newapi
from .factories import BASE_MS, assert_consistent
from .test_pipeline import mes_settings, run_workers

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "describe 🖼️"},
                                 {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
]  # fmt: skip
RESPONSE = {
    "id": "",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "A cat."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}


def resp_rpush(port: int, key: str, values: list[str]) -> int:
    """RPUSH over a bare socket in the Redis protocol: no Redis library, no MES code."""
    parts = [b"RPUSH", key.encode(), *(v.encode("utf-8") for v in values)]
    frame = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(frame)
        reply = s.recv(64)
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


def hand_made(kind: str, conversation_id: str, **fields: Any) -> str:
    event = {"schema_version": 1, "kind": kind, "event_id": str(uuid.uuid4()), "occurred_at": BASE_MS,
             "conversation_id": conversation_id, "user_id": 5, "model_name": "gpt-4o", "token_id": 2,
             "channel_id": 3, "messages": MESSAGES, **fields}  # fmt: skip
    return json.dumps(event, ensure_ascii=False)


def stored(storage: Storage, conversation_id: str) -> list[tuple[Any, ...]]:
    """What a conversation's rows hold, minus ids and the conversation's own name."""
    q = storage.engine.dialect.identifier_preparer.quote
    out = []
    with storage.engine.connect() as conn:
        for name in sorted(storage.catalog.refresh()):
            if name.startswith(("conversation_histories_2", "error_conversation_histories_2")):
                cols = "role, content, model_name, user_id, token_id, channel_id, created_at, seq"
                cols += (
                    ", prompt_tokens, total_tokens, finish_reason"
                    if name.startswith("conv")
                    else ", error_code, error_message"
                )
                sql = f"SELECT {cols} FROM {q(name)} WHERE conversation_id = :c ORDER BY seq"
                out += [(name, *r) for r in conn.execute(text(sql), {"c": conversation_id})]
    return out


def test_raw_redis_push_lands_exactly_like_the_python_producer(backend, redis_server):
    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    # the same request, three ways in: the Python producer, and a bare RPUSH
    producer = Producer(settings.producer)
    producer.save_chat_completion("py", MESSAGES, RESPONSE, "gpt-4o", 5, 2, 3, occurred_at=BASE_MS)
    producer.save_error_conversation(
        "py-err", MESSAGES, 429, "slow down", "gpt-4o", 5, 2, 3, occurred_at=BASE_MS
    )
    assert producer.flush(10)
    chat = hand_made("chat", "raw", response=RESPONSE)
    err = hand_made("error", "raw-err", error_code=429, error_message="slow down")
    assert resp_rpush(redis_server.port, "mes:staging", [chat, err, chat]) >= 3  # the third: a re-send
    bad = [hand_made("chat", "bad-1"), "{not json", hand_made("chat", "bad-2", response=RESPONSE, user_id=-1)]
    resp_rpush(redis_server.port, "mes:staging", bad)
    run_workers(settings, redis_server, storage)

    def same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
        assert a and [r[1:] for r in a] == [r[1:] for r in b]

    same(stored(storage, "raw"), stored(storage, "py"))
    same(stored(storage, "raw-err"), stored(storage, "py-err"))
    assert stored(storage, "raw")[0][0] == "conversation_histories_2026_01_15"  # its own day
    reader = HistoryReader(storage)
    assert reader.get_conversation_messages("raw", 10, user_id=5) is not None
    assert reader.get_conversation_stats(5)["total_messages"] == 2 * 3  # re-send stored once
    with storage.engine.connect() as conn:
        reasons = [r[0] for r in conn.execute(text("SELECT reason FROM mes_dead_letters ORDER BY id"))]
    assert len(reasons) == 3
    assert any("response" in r for r in reasons) and any("JSON" in r for r in reasons)
    assert any("user_id" in r for r in reasons)
    assert_consistent(storage)
    producer.close()
    storage.close()


def test_http_ingest_answers_per_event_and_lands_like_the_producer(backend, redis_server):
    settings = mes_settings(backend, redis_server, MES_SPOOL_DIR=str(backend.tmp_path / "api-spool"))
    storage = Storage.open(settings.database)
    cast = newapi.install(storage.engine)
    producer = Producer(settings.producer)
    services = Services(
        HistoryReader(storage),
        Authenticator(storage.engine, api_key=newapi.OPERATOR_KEY, cache_seconds=0),
        settings,
        redis=producer._transport.redis,
        producer=producer,
    )
    client = TestClient(create_app(services=services))
    good = json.loads(hand_made("chat", "http", response=RESPONSE, user_id=1))
    mine_no_id = {k: v for k, v in good.items() if k not in ("event_id", "schema_version")}
    mine_no_id["conversation_id"] = "http-2"
    not_mine = {**good, "event_id": str(uuid.uuid4()), "user_id": 2, "conversation_id": "http-3"}
    broken = {**good, "event_id": str(uuid.uuid4()), "messages": [{"content": "no role"}]}
    r = client.post(
        "/api/v1/events", json={"events": [good, mine_no_id, not_mine, broken, 42]}, headers=cast.a
    )
    assert r.status_code == 207, r.text
    body = r.json()
    assert [x["status"] for x in body["results"]] == [
        "accepted",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert "not the token's user" in body["results"][2]["reason"]
    assert "role" in body["results"][3]["reason"]
    assert body["accepted"] == 2 and body["stored_in"] == "queued"
    # durable before the answer: already in Redis
    assert redis_server.client().llen("mes:staging") + redis_server.client().zcard("mes:batches") >= 1
    # the operator may record any user's; a retry with the same ids stores nothing twice
    op = client.post("/api/v1/events", json={"events": [not_mine, good]}, headers=cast.operator)
    assert op.status_code == 200 and op.json()["accepted"] == 2
    assert client.post("/api/v1/events", json={"events": [good]}).status_code == 401
    assert client.post("/api/v1/events", content=b"[1,2", headers=cast.a).status_code == 400
    assert client.post("/api/v1/events", json={"evnts": []}, headers=cast.a).status_code == 400
    too_many = {"events": [good] * (settings.api.ingest_max_events + 1)}
    assert client.post("/api/v1/events", json=too_many, headers=cast.a).status_code == 413
    run_workers(settings, redis_server, storage)
    reader = HistoryReader(storage)
    assert [m["role"] for m in reader.get_conversation_messages("http", 10, user_id=1) or []] == [
        "system",
        "user",
        "assistant",
    ]
    assert reader.get_conversation_messages("http-2", 10, user_id=1)
    assert reader.get_conversation_messages("http-3", 10, user_id=2)
    assert reader.get_conversation_stats(1)["total_requests"] == 2
    assert_consistent(storage)
    client.close()
    producer.close()
    storage.close()


def test_http_ingest_spools_when_redis_is_down_and_resends(backend, redis_server):
    settings = mes_settings(backend, redis_server, MES_SPOOL_DIR=str(backend.tmp_path / "api-spool"))
    storage = Storage.open(settings.database)
    producer = Producer(settings.producer)
    services = Services(
        HistoryReader(storage),
        Authenticator(None, api_key=newapi.OPERATOR_KEY, cache_seconds=0),
        settings,
        redis=producer._transport.redis,
        producer=producer,
    )
    client = TestClient(create_app(services=services))
    redis_server.stop()
    event = json.loads(hand_made("chat", "while-down", response=RESPONSE))
    r = client.post(
        "/api/v1/events", json={"events": [event]}, headers={"Authorization": f"Bearer {newapi.OPERATOR_KEY}"}
    )
    assert r.status_code == 200 and r.json()["stored_in"] == "spooled"
    redis_server.start()
    producer._down_until = 0.0
    producer.resend_spool()
    run_workers(settings, redis_server, storage)
    assert HistoryReader(storage).get_conversation_messages("while-down", 10, user_id=5)
    client.close()
    producer.close()
    storage.close()
