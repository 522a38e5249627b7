"""Histories that change: every message stored once, wherever it sits; a conversation reads
back as its transcript; the exact context of every request can be rebuilt.

Each scenario is a row of issue 16's table, run on every backend: through the writer (one
batch per request, and all requests in one batch) and through the producer, Redis, a
worker and the read API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from mes.api import Services, create_app
from mes.api.auth import Authenticator
from mes.config.settings import Settings
from mes.producer import Producer
from mes.reader import HistoryReader
from mes.schemas import decode_event
from mes.storage import Storage

from . import newapi
from .factories import BASE_MS, assert_consistent, chat, event_from_call, sample_calls


def u(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def a(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def s(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def _twelve_turns() -> tuple[list[tuple[list[dict[str, Any]], str]], list[str]]:
    S = s("You are a coding agent.")
    history: list[dict[str, Any]] = [S]
    requests = []
    for n in range(12):
        history.append(u(f"step {n}"))
        requests.append((list(history), f"done {n}"))
        history.append(a(f"done {n}"))
    turns = [m["content"] for m in history[1:]]
    requests.append(([S, u("SUMMARY of steps 0-11"), a("ok"), u("next")], "x"))
    return requests, [S["content"], *turns, "SUMMARY of steps 0-11", "ok", "next", "x"]


_TWELVE, _TWELVE_READ = _twelve_turns()

# (requests as (messages, answer), the transcript's contents in order)
SCENARIOS: dict[str, tuple[list[tuple[list[dict[str, Any]], str]], list[str]]] = {
    "system_prompt_added": (
        [([u("q1")], "a1"), ([s("S"), u("q1"), a("a1"), u("q2")], "a2")],
        ["S", "q1", "a1", "q2", "a2"],
    ),
    "compaction": (_TWELVE, _TWELVE_READ),
    "sliding_window": (
        [
            ([u("hi")], "Hello!"),
            ([u("hi"), a("Hello!"), u("hi")], "Hello again!"),
            ([u("hi"), a("Hello again!"), u("bye")], "Bye!"),
        ],
        ["hi", "Hello!", "hi", "Hello again!", "bye", "Bye!"],
    ),
    "same_request_twice": ([([u("hi")], "Hello!"), ([u("hi")], "Hello!")], ["hi", "Hello!", "Hello!"]),
    "edited_turn": (
        [([u("q1")], "a1"), ([u("q1"), a("a1"), u("q2")], "a2"), ([u("q1"), a("a1"), u("q2'")], "a2'")],
        ["q1", "a1", "q2", "a2", "q2'", "a2'"],
    ),
}


def scenario_events(name: str, conversation_id: str = "conv") -> list[dict[str, Any]]:
    requests, _ = SCENARIOS[name]
    return [
        chat(conversation_id, msgs, answer, ms=BASE_MS + n * 10_000)
        for n, (msgs, answer) in enumerate(requests)
    ]


def decoded(event: dict[str, Any]) -> dict[str, Any]:
    return decode_event(orjson.dumps(event))


def _plain(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(m["role"], m["content"]) for m in messages]


def check_read_back(reader: HistoryReader, name: str, events: list[dict[str, Any]], user_id: int = 1) -> None:
    """The transcript reads back in order; each request's context is what it sent."""
    _, expected = SCENARIOS[name]
    cid = events[0]["conversation_id"]
    messages = reader.get_conversation_messages(cid, limit=1000, user_id=user_id)
    assert messages is not None
    assert [m["content"] for m in messages] == expected
    for ev in events:
        context = reader.get_request_context(cid, ev["event_id"], user_id=user_id)
        assert context is not None
        sent = [*_plain(ev["messages"]), ("assistant", ev["response"]["choices"][0]["message"]["content"])]
        assert _plain(context) == sent


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("batching", ["one_batch_per_request", "one_batch"])
def test_changing_histories_read_back_as_transcripts_through_the_writer(backend, name, batching):
    """Each row of the table: the transcript once, in order, and every request's exact context."""
    storage = backend.storage()
    events = scenario_events(name)
    if batching == "one_batch":
        storage.writer.write([decoded(e) for e in events])
    else:
        for ev in events:
            storage.writer.write([decoded(ev)])
    check_read_back(HistoryReader(storage), name, events)
    assert_consistent(storage)


def test_a_replayed_scenario_adds_nothing(backend):
    """At-least-once delivery: the same requests again store no row and count nothing twice."""
    storage = backend.storage()
    events = [decoded(e) for e in scenario_events("edited_turn")]
    for ev in events:
        storage.writer.write([ev])
    again = storage.writer.write(events)
    assert again.applied == 0 and again.rows == 0
    check_read_back(HistoryReader(storage), "edited_turn", events)
    assert_consistent(storage)


def test_an_earlier_request_arriving_late_takes_over_its_answer(backend):
    """MES met the chat through request 2 (which re-sends answer 1); request 1 arrives late:
    its answer is the stored copy, now with its tokens, not a second row."""
    storage = backend.storage()
    first = chat("late", [u("q1")], "a1", ms=BASE_MS)
    second = chat("late", [u("q1"), a("a1"), u("q2")], "a2", ms=BASE_MS + 10_000)
    storage.writer.write([decoded(second)])
    storage.writer.write([decoded(first)])
    reader = HistoryReader(storage)
    messages = reader.get_conversation_messages("late", limit=100, user_id=1)
    assert [m["content"] for m in messages] == ["q1", "a1", "q2", "a2"]
    assert messages[1]["usage"] == first["response"]["usage"]
    assert _plain(reader.get_request_context("late", first["event_id"], user_id=1)) == [
        ("user", "q1"), ("assistant", "a1"),
    ]  # fmt: skip
    assert_consistent(storage)


def test_the_gateway_samples_keep_every_message_each_request_sent(backend):
    """``shared/samples`` recorded in order: every message of every request is stored, none twice
    (request 2 of conv_123456789 adds a system prompt before the stored first turn)."""
    storage = backend.storage()
    events = [event_from_call(c, ms=BASE_MS + n * 1000) for n, c in enumerate(sample_calls())]
    for ev in events:
        storage.writer.write([decoded(ev)])
    reader = HistoryReader(storage)
    by_conv: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for ev in events:
        if ev["kind"] == "chat":
            by_conv.setdefault((ev["conversation_id"], ev["user_id"]), []).append(ev)
    assert any(len(evs) > 1 for evs in by_conv.values())
    for (cid, uid), evs in by_conv.items():
        stored = reader.get_conversation_messages(cid, limit=1000, user_id=uid)
        keys = [orjson.dumps([m["role"], m["content"], m.get("tool_calls")]) for m in stored]
        for ev in evs:
            for m in ev["messages"]:
                assert orjson.dumps([m["role"], m.get("content"), m.get("tool_calls")]) in keys, (cid, m)
            context = reader.get_request_context(cid, ev["event_id"], user_id=uid)
            assert [(m["role"], m["content"]) for m in context[: len(ev["messages"])]] == [
                (m["role"], m.get("content")) for m in ev["messages"]
            ]
        # None twice: each stored row is a different (role, content) or a different answer.
        history = [k for k, m in zip(keys, stored, strict=True) if "usage" not in m]
        assert len(history) == len(set(history)), cid
    system = reader.get_conversation_messages("conv_123456789", limit=100, user_id=1)
    assert [m["role"] for m in system][:2] == ["system", "user"]
    assert_consistent(storage)


# -- the whole path: producer -> Redis -> worker -> read API -------------------------------
@pytest.fixture
def pipeline(backend, redis_server) -> Iterator[Any]:
    from .test_pipeline import mes_settings, run_workers

    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    cast = newapi.install(storage.engine)
    producer = Producer(settings.producer)
    auth = Authenticator(storage.engine, api_key=newapi.OPERATOR_KEY, cache_seconds=0)
    services = Services(HistoryReader(storage), auth, Settings.from_env(backend.env()))

    class Pipeline:
        def send(self, events: list[dict[str, Any]]) -> None:
            for ev in events:
                producer.record_serialized(orjson.dumps(ev))
                assert producer.flush(10)
                run_workers(settings, redis_server, storage)

    with TestClient(create_app(services=services), raise_server_exceptions=False) as client:
        p = Pipeline()
        p.client, p.cast, p.storage = client, cast, storage  # type: ignore[attr-defined]
        yield p
    producer.close()
    storage.close()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_changing_histories_through_the_producer_and_the_read_api(pipeline, name):
    """Each row of the table end to end: GET the conversation, GET each request's context."""
    events = scenario_events(name, conversation_id=f"c/{name} 对话")
    pipeline.send(events)
    cid = events[0]["conversation_id"]
    path = "/api/v1/conversations/" + cid.replace("/", "%2F").replace(" ", "%20")
    got = pipeline.client.get(path, params={"limit": 1000}, headers=pipeline.cast.a)
    assert got.status_code == 200, got.text
    assert [m["content"] for m in got.json()["messages"]] == SCENARIOS[name][1]
    for ev in events:
        got = pipeline.client.get(path, params={"request": ev["event_id"]}, headers=pipeline.cast.a)
        assert got.status_code == 200, got.text
        sent = [*_plain(ev["messages"]), ("assistant", ev["response"]["choices"][0]["message"]["content"])]
        assert _plain(got.json()["messages"]) == sent
    assert_consistent(pipeline.storage)
