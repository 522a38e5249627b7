"""The event contract: exported JSON Schema in sync, samples valid, garbage rejected with reasons."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import jsonschema
import orjson
import pytest

from mes.errors import InvalidEvent
from mes.schemas import decode_event
from mes.schemas.export import FILES, render

from .factories import chat, event_from_call, sample_calls

SCHEMA_DIR = pathlib.Path(__file__).parent.parent / "schemas"


def schema_validator(name: str = "event.v1.schema.json") -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8")))


@pytest.mark.parametrize("name", sorted(FILES))
def test_exported_schema_files_are_in_sync_with_the_models(name):
    """Regenerate with `python -m mes.schemas.export` when this fails."""
    assert (SCHEMA_DIR / name).read_text(encoding="utf-8") == render(name)


def _rules(schema: Any) -> Any:
    """A JSON Schema without the words that do not change a verdict."""
    if isinstance(schema, dict):
        return {k: _rules(v) for k, v in schema.items() if k not in ("title", "description", "default")}
    if isinstance(schema, list):
        return [_rules(v) for v in schema]
    return schema


def test_the_worker_checks_events_with_exactly_the_models_rules():
    """decode_event validates with the TypedDicts of mes.schemas.check (faster than the models):
    every type, bound, pattern, required field and open or closed object must be the models'."""
    from pydantic import TypeAdapter

    from mes.schemas.check import EVENT_CHECK
    from mes.schemas.events import Event

    models, checked = _rules(TypeAdapter(Event).json_schema()), _rules(EVENT_CHECK.json_schema())
    assert set(checked["$defs"]) == set(models["$defs"])
    for name, rules in models["$defs"].items():
        assert checked["$defs"][name] == rules, name
    assert checked == models


@pytest.mark.parametrize("call", sample_calls(), ids=lambda c: c["name"])
def test_every_sample_is_accepted_by_the_models_and_by_the_json_schema(call):
    event = event_from_call(call)
    assert decode_event(orjson.dumps(event)) == event
    schema_validator().validate(event)


def _invalid_examples() -> list[tuple[str, dict[str, Any], str]]:
    good = chat("c1", [{"role": "user", "content": "hi"}], "yo")

    def variant(**changes: Any) -> dict[str, Any]:
        ev = copy.deepcopy(good)
        for key, value in changes.items():
            if value is ...:
                ev.pop(key)
            else:
                ev[key] = value
        return ev

    bad_message = variant(messages=[{"content": "no role"}])
    bad_content = variant(messages=[{"role": "user", "content": 42}])
    bad_part = variant(messages=[{"role": "user", "content": [{"text": "no type"}]}])
    bad_usage = copy.deepcopy(good)
    bad_usage["response"]["usage"]["total_tokens"] = -1
    return [
        ("missing conversation id", variant(conversation_id=...), "conversation_id"),
        ("empty conversation id", variant(conversation_id=""), "conversation_id"),
        ("user id as text", variant(user_id="1"), "user_id"),
        ("user id as boolean", variant(user_id=True), "user_id"),
        ("unknown kind", variant(kind="success"), "kind"),
        ("unknown version", variant(schema_version=2), "schema_version"),
        ("version true", variant(schema_version=True), "schema_version"),
        ("short event id", variant(event_id="abc"), "event_id"),
        ("event id with spaces", variant(event_id="abc def ghi"), "event_id"),
        ("timestamp in seconds", variant(occurred_at=1_768_492_799), "occurred_at"),
        ("year 9999", variant(occurred_at=253_402_300_799_000), "occurred_at"),
        ("misspelt field", variant(conversationId="c1"), "conversationId"),
        ("message without role", bad_message, "role"),
        ("content a number", bad_content, "content"),
        ("part without type", bad_part, "type"),
        ("negative tokens", bad_usage, "total_tokens"),
        ("chat without response", variant(response=...), "response"),
        ("messages not a list", variant(messages="hi"), "messages"),
    ]


@pytest.mark.parametrize(
    ("name", "event", "field"), _invalid_examples(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_garbage_is_rejected_by_both_with_a_reason_naming_the_field(name, event, field):
    with pytest.raises(InvalidEvent) as caught:
        decode_event(orjson.dumps(event))
    assert field in caught.value.reason, caught.value.reason
    assert "\n" not in caught.value.reason
    assert not schema_validator().is_valid(event), name


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'"just a string"', "JSON object"),
        (b"[1, 2]", "JSON object"),
        (b'{"a": "\\ud800"}', "not valid JSON"),  # a lone surrogate
    ],
)
def test_undecodable_bytes_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(InvalidEvent) as caught:
        decode_event(raw)
    assert reason in caught.value.reason


def test_nul_is_refused_but_the_text_backslash_u0000_is_not():
    ev = chat("c1", [{"role": "user", "content": "a\x00b"}], "yo")
    with pytest.raises(InvalidEvent, match="NUL"):
        decode_event(orjson.dumps(ev))
    literal = chat("c1", [{"role": "user", "content": "the text \\u0000 is fine"}], "yo")
    assert decode_event(orjson.dumps(literal))["messages"][0]["content"] == "the text \\u0000 is fine"


def test_a_time_more_than_a_day_ahead_is_refused():
    ev = chat("c1", [], "yo", ms=1_768_492_799_000)
    with pytest.raises(InvalidEvent, match="future"):
        decode_event(orjson.dumps(ev), now_ms=lambda: 1_768_492_799_000 - 2 * 86_400_000)


def test_vendor_fields_are_kept_untouched():
    ev = chat(
        "c1",
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        "yo",
    )
    ev["response"]["choices"][0]["message"]["reasoning_content"] = "thinking"
    ev["response"]["service_tier"] = "default"
    assert decode_event(orjson.dumps(ev)) == ev
