"""``mes demo``: record a few conversations through the real producer, then read them back.

It goes the whole way: producer -> Redis -> a running worker (``mes up`` or
``mes worker``) -> the database -> the read module.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import click

from mes.config.settings import Settings

__all__ = ["run_demo"]


def _completion(text: str, model: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def run_demo(settings: Settings, *, user_id: int, timeout: float) -> int:
    from mes.producer import Producer
    from mes.reader import HistoryReader
    from mes.storage import Storage

    tag = uuid.uuid4().hex[:6]
    producer = Producer(settings.producer)
    chat_id, tools_id = f"demo-{tag}-chat", f"demo-{tag}-tools"
    history: list[dict[str, Any]] = [{"role": "system", "content": "You are a concise assistant."}]
    for question, answer in [
        ("What is MES?", "A store for the chat history of LLM API gateways."),
        (
            "Does it lose events when Redis is down?",
            "No: the producer spools them to disk and re-sends them.",
        ),
    ]:
        history.append({"role": "user", "content": question})
        producer.save_chat_completion(
            chat_id, list(history), _completion(answer, "gpt-4o", 20, 12), "gpt-4o", user_id, 1, 1,
            ip="127.0.0.1",
        )  # fmt: skip
        history.append({"role": "assistant", "content": answer})
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
    }
    producer.save_chat_completion(
        tools_id,
        [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris? 🌦️"}]},
            {"role": "assistant", "content": None, "tool_calls": [tool_call]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 14}'},
        ],
        _completion("14 °C in Paris.", "claude-3-5-sonnet", 40, 8),
        "claude-3-5-sonnet", user_id, 1, 2, is_stream=True,
    )  # fmt: skip
    producer.save_error_conversation(
        tools_id, [{"role": "user", "content": "And tomorrow?"}], 429, "rate limit exceeded",
        "claude-3-5-sonnet", user_id, 1, 2,
    )  # fmt: skip
    producer.close()
    stats = producer.stats()
    click.echo(f"recorded {stats.recorded} events (enqueued {stats.enqueued}, spooled {stats.spooled})")
    if stats.spooled:
        click.echo("Redis did not take them: they wait in the spool (mes replay spool)", err=True)

    storage = Storage.open(settings.database)
    reader = HistoryReader(storage)
    deadline = time.monotonic() + timeout
    try:
        while True:
            chat = reader.get_conversation_messages(chat_id, 50, user_id=user_id)
            tools = reader.get_conversation_messages(tools_id, 50, user_id=user_id)
            errors = reader.get_conversation_errors(tools_id, user_id=user_id)
            if chat and len(chat) == 5 and tools and errors:
                break
            if time.monotonic() > deadline:
                click.echo(
                    f"the events did not reach the database within {timeout:.0f} s: is a worker running "
                    "(mes up, or mes worker) on the same REDIS_CONN_STRING and MES_SQL_DSN?",
                    err=True,
                )
                return 1
            time.sleep(0.2)
        click.echo(f"\nread back (user {user_id}):")
        for conv_id, messages in ((chat_id, chat), (tools_id, tools)):
            click.echo(f"\n  conversation {conv_id}")
            for m in messages:
                content = m["content"] if m["content"] is not None else {"tool_calls": m.get("tool_calls")}
                click.echo(f"    {m['role']:>9}: {content}")
        for e in errors:
            click.echo(f"\n  failed request in {tools_id}: {e['error_code']} {e['error_message']}")
        stats_now = reader.get_conversation_stats(user_id)
        click.echo(
            f"\n  stats: {stats_now['total_conversations']} conversations, {stats_now['total_messages']} messages, "
            f"{stats_now['total_tokens']} tokens, models {stats_now['models_used']}"
        )
    finally:
        storage.close()
    return 0
