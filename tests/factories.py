"""Events for tests: the shared gateway samples, and builders for made-up ones."""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Any

from mes.schemas import new_event_id
from mes.storage import Storage
from mes.storage.verify import compare, read_index, recount

SAMPLES = pathlib.Path(__file__).parent / "data" / "gateway_calls.jsonl"
BASE_MS = 1_768_492_799_000  # 2026-01-15 15:59:59 UTC
_ids = itertools.count()


def sample_calls() -> list[dict[str, Any]]:
    """The realistic calls from ``shared/samples`` (``name``, ``call``, ``args``)."""
    return [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]


def event_from_call(call: dict[str, Any], *, ms: int = BASE_MS) -> dict[str, Any]:
    """A v1 event made of a sample's keyword arguments, as the producer would."""
    args = dict(call["args"])
    kind = "chat" if call["call"] == "save_chat_completion" else "error"
    return {"schema_version": 1, "kind": kind, "event_id": new_event_id(), "occurred_at": ms, **args}


def chat(
    conversation_id: str,
    messages: list[dict[str, Any]],
    reply: str | None,
    *,
    user_id: int = 1,
    model: str = "gpt-4o",
    ms: int = BASE_MS,
    usage: tuple[int, int] = (10, 20),
    event_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": ms // 1000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        },
    }
    return {
        "schema_version": 1,
        "kind": "chat",
        "event_id": event_id or new_event_id(),
        "occurred_at": ms,
        "conversation_id": conversation_id,
        "model_name": model,
        "user_id": user_id,
        "token_id": 1,
        "channel_id": 1,
        "messages": messages,
        "response": response,
        **extra,
    }


def error(
    conversation_id: str,
    messages: list[dict[str, Any]],
    *,
    code: int = 429,
    message: str = "rate limited",
    user_id: int = 1,
    model: str = "gpt-4o",
    ms: int = BASE_MS,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "kind": "error",
        "event_id": event_id or new_event_id(),
        "occurred_at": ms,
        "conversation_id": conversation_id,
        "model_name": model,
        "user_id": user_id,
        "messages": messages,
        "error_code": code,
        "error_message": message,
    }


def conversation(conversation_id: str, turns: int, *, user_id: int = 1, ms: int = BASE_MS, step_ms: int = 30_000,
                 model: str = "gpt-4o") -> list[dict[str, Any]]:  # fmt: skip
    """``turns`` requests of one chat, each re-sending the whole history, as a gateway does."""
    history: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    events = []
    for n in range(turns):
        history.append({"role": "user", "content": f"question {n} 你好 😀"})
        reply = f"answer {n}"
        events.append(
            chat(conversation_id, list(history), reply, user_id=user_id, ms=ms + n * step_ms, model=model)
        )
        history.append({"role": "assistant", "content": reply})
    return events


def assert_consistent(storage: Storage) -> None:
    """The index and rollups equal a recount of the rows."""
    problems = compare(recount(storage.catalog, storage.calendar), read_index(storage.catalog))
    assert not problems, "\n".join(problems[:20])
