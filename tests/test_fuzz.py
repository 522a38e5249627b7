"""Bad input, fuzzed (hypothesis): arbitrary Unicode (NUL, lone surrogates, 4-byte
characters), empty and huge contents, deep JSON, wrong types, missing fields, absurd
times. Nothing crashes the producer or the worker's path, nothing blocks a batch, every
rejection is a dead letter with its reason, and every acceptance reads back identical."""

from __future__ import annotations

import itertools
import math
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from mes.config.settings import ProducerSettings
from mes.errors import InvalidEvent
from mes.producer import Producer
from mes.producer.serializer import serialize
from mes.reader import HistoryReader
from mes.schemas import decode_event, new_event_id
from mes.storage import DeadLetter

from .factories import BASE_MS

ANY_CHAR = st.characters(blacklist_categories=())  # surrogates included
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.text(st.sampled_from(["\x00", "😀", "\U0001d518", "中", "\\", '"', "\n", "\ud800", "a"]), max_size=40),
    st.integers(0, 300_000).map(lambda n: "长" * n),  # empty to ~900 KB of 3-byte characters
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
TIMES = st.one_of(
    st.integers(BASE_MS - 10**9, BASE_MS + 10**9),  # sane
    st.sampled_from(
        [
            0,
            1,
            -1,
            253_402_300_799_000,
            2**63 - 1,
            2**70,
            float("nan"),
            float("inf"),
            1.7e9,
            "yesterday",
            None,
        ]
    ),
)
ROLES = st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), TEXT, st.integers(), st.none())
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": ROLES, "content": st.one_of(TEXT, st.none(), st.lists(
        st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=3))}),
    JSONISH,
)  # fmt: skip
_ids = itertools.count()


def _is_clean(value: Any) -> bool:
    """Strings without NUL or lone surrogates (what the databases can store)."""
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return all(_is_clean(v) for v in value)
    if isinstance(value, dict):
        return all(_is_clean(k) and _is_clean(v) for k, v in value.items())
    return True


@given(st.binary(max_size=3000))
def test_decoding_arbitrary_bytes_accepts_or_says_why(raw):
    try:
        event = decode_event(raw)
    except InvalidEvent as exc:
        assert exc.reason and "\n" not in exc.reason[:200]
    else:
        assert isinstance(event, dict)


@given(JSONISH)
def test_decoding_arbitrary_json_accepts_or_says_why(value):
    try:
        decode_event(orjson.dumps(value))
    except InvalidEvent as exc:
        assert exc.reason
    except orjson.JSONEncodeError:
        pass  # not JSON to begin with (orjson refuses lone surrogates)


@settings(max_examples=150, deadline=None)
@given(st.lists(MESSAGE, max_size=5), TEXT, TIMES, st.one_of(st.integers(-5, 2**40), TEXT), JSONISH)
def test_the_producer_never_raises_on_what_a_gateway_passes(messages, content, when, user, metadata):
    captured: list[bytes] = []
    producer = Producer(ProducerSettings.from_env({"MES_SPOOL_DIR": "/nonexistent/never-used"}))
    producer._record_bytes = captured.append  # the seam: no thread, no disk; a pure unit test
    response = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    producer.save_chat_completion(
        "c", messages, response, "m", user, 1, 1, occurred_at=when, metadata=metadata
    )
    producer.save_error_conversation("c", messages, 500, content, "m", user, 1, 1, occurred_at=when)
    for data in captured:
        try:
            decode_event(data)
        except InvalidEvent as exc:
            assert exc.reason


def _event(messages: list[Any], answer: Any, when: Any, kind: str, metadata: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"schema_version": 1, "kind": kind, "event_id": new_event_id(), "occurred_at": when,
                          "conversation_id": f"fz-{next(_ids)}", "user_id": 9, "model_name": "m", "messages": messages}  # fmt: skip
    if metadata is not None:
        ev["metadata"] = metadata
    if kind == "chat":
        ev["response"] = {
            "choices": [{"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]
        }
    else:
        ev.update(error_code=500, error_message=answer if isinstance(answer, str) else "x")
    return ev


EVENTS = st.lists(
    st.builds(_event, st.lists(MESSAGE, max_size=4), st.one_of(TEXT, st.none()), TIMES,
              st.sampled_from(["chat", "error"]), st.one_of(st.none(), JSONISH)),
    min_size=1, max_size=6,
)  # fmt: skip


def test_writing_fuzzed_batches_on_every_backend(backend):
    storage = backend.storage()
    reader = HistoryReader(storage)
    seen = {"read_back": 0, "dead": 0}

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(EVENTS)
    def check(events):
        accepted, dead = [], []
        for ev in events:
            raw = serialize(ev)
            try:
                accepted.append(decode_event(raw))
            except InvalidEvent as exc:
                dead.append(DeadLetter(payload=raw, reason=exc.reason, event_id=exc.event_id))
        result = storage.writer.write_isolating(accepted, dead, batch_id="fuzz")  # must not raise
        assert result.applied + result.dead_lettered == len(events)
        with storage.engine.connect() as conn:
            reasons = {
                r[0]: r[1] for r in conn.execute(text("SELECT event_id, reason FROM mes_dead_letters"))
            }
        for ev in events:
            if ev["event_id"] in reasons:
                assert reasons[ev["event_id"]], "a dead letter without a reason"
                seen["dead"] += 1
                continue
            if not any(a["event_id"] == ev["event_id"] for a in accepted):
                continue  # rejected before the writer, without a readable id: counted above
            _read_back_identical(reader, ev)
            seen["read_back"] += 1

    check()
    assert seen["read_back"] and seen["dead"], seen  # both paths were exercised


def _read_back_identical(reader: HistoryReader, ev: dict[str, Any]) -> None:
    if ev["kind"] == "chat":
        got = reader.get_conversation_messages(ev["conversation_id"], 10_000, user_id=9) or []
        expected = [(m.get("role"), m.get("content")) for m in ev["messages"]]
        expected.append(("assistant", ev["response"]["choices"][0]["message"]["content"]))
        assert [(m["role"], m["content"]) for m in got] == expected
    else:
        errors = reader.get_conversation_errors(ev["conversation_id"], user_id=9) or []
        assert len(errors) == 1
        assert [(m["role"], m["content"]) for m in errors[0]["messages"]] == [
            (m.get("role"), m.get("content")) for m in ev["messages"]
        ]
        assert errors[0]["error_message"] == ev["error_message"]


def test_nan_and_absurd_times_from_the_gateway_are_dead_lettered_not_raised(tmp_path):
    captured: list[bytes] = []
    producer = Producer(ProducerSettings.from_env({"MES_SPOOL_DIR": str(tmp_path)}))
    producer._record_bytes = captured.append
    for when in (float("nan"), math.inf, -math.inf, 2**80, "soon"):
        producer.save_chat_completion("c", [], {"choices": []}, "m", 1, 1, 1, occurred_at=when)
    for data in captured:
        try:
            decode_event(data)
            raise AssertionError("an absurd time was accepted")
        except InvalidEvent as exc:
            assert "occurred_at" in exc.reason
