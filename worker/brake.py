"""The poison brake: what happens to a batch in which most events are invalid.

Such a batch is a bad deploy (a gateway sending a new format, a field of the wrong type),
not bad data: dead-lettering it event by event would fill the dead letters with one
mistake, batch after batch, before anyone looked. So the brake stops the line for the
invalid events, loudly, and only for them:

* the valid events of the batch are written at once: a brake pauses, it never holds back
  or discards a valid event;
* the job fails without retries, its reason saying how many events are invalid and why;
  the whole batch stays in Redis, and is recorded in ``{q}:braked`` (a hash: batch id →
  JSON figures), which ``mes stats``, ``mes doctor`` and the worker's gauge
  ``mes_queue_braked_events`` show; ``mes_worker_braked_events_total{state}`` counts
  the events held and released;
* requeuing the job (``mes replay failed``, or RQ's own ``rq requeue``) is the operator's
  release: the worker decodes the batch again (an upgraded worker may accept the new
  format now), writes what is valid (the ledger drops what the first run wrote) and
  dead-letters what is still invalid, with the reasons.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

__all__ = ["POISON_MIN_EVENTS", "POISON_RATIO", "braked_key", "figures", "floods", "held", "hold"]

# A batch this large, more than this share of it invalid, trips the brake.
POISON_MIN_EVENTS = 20
POISON_RATIO = 0.5


def floods(events: int, invalid: int) -> bool:
    """Whether a batch of ``events`` with ``invalid`` of them invalid trips the brake."""
    return events >= POISON_MIN_EVENTS and invalid > POISON_RATIO * events


def braked_key(queue_name: str) -> str:
    return f"{queue_name}:braked"


def hold(redis: Any, queue_name: str, batch_id: str, *, invalid: int, valid: int, example: str) -> None:
    """Record that the brake holds ``batch_id``'s invalid events.

    Raises:
        redis.RedisError: nothing was recorded (the job fails and is retried as usual).
    """
    figures_ = {"invalid": invalid, "valid": valid, "at": int(time.time()), "example": example[:300]}
    redis.hset(braked_key(queue_name), batch_id, orjson.dumps(figures_))


def held(redis: Any, queue_name: str) -> dict[str, dict[str, Any]]:
    """Every batch the brake holds: batch id → its figures (``invalid``, ``valid``, ``at``, ``example``)."""
    out: dict[str, dict[str, Any]] = {}
    for raw_id, raw in redis.hgetall(braked_key(queue_name)).items():
        batch_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = {}
        out[batch_id] = value if isinstance(value, dict) else {}
    return out


def figures(redis: Any, queue_name: str) -> dict[str, int]:
    """How many batches the brake holds, and their invalid events."""
    batches = held(redis, queue_name)
    return {"batches": len(batches), "events": sum(int(b.get("invalid") or 0) for b in batches.values())}
