"""The RQ job function: one batch from Redis into the database, exactly once.

``mes.worker.jobs.write_batch`` is a wire contract (it is the function name stored in
every job): never move or rename it without leaving an alias here.
"""

from __future__ import annotations

import time
from typing import Any

from rq import get_current_job

from ..core import metrics
from ..core.errors import InvalidEvent
from ..core.log import get_logger
from ..schemas import decode_event
from ..storage import DeadLetter
from .context import current

__all__ = ["PoisonBatchError", "write_batch"]

log = get_logger("mes.worker")

# A batch mostly made of invalid events is a bad deploy (a gateway writing a new
# format), not bad data: fail it loudly instead of filling the dead letters.
POISON_MIN_EVENTS = 20
POISON_RATIO = 0.5


class PoisonBatchError(Exception):
    """Most of the batch is invalid. The job fails without retries and waits, with its
    events still in Redis, for ``mes replay`` after the producer is fixed."""


def write_batch(batch_id: str) -> dict[str, Any]:
    """Decode, validate and write batch ``batch_id``; return after the commit.

    Invalid events, and events larger than the database takes (``event_limit``: they
    are never sent to it), go to ``mes_dead_letters`` with their reason, bounded. The
    batch's list in Redis is deleted only after the commit, so a worker that dies midway
    leaves it for the retry, and the ledger makes the retry harmless.

    Raises:
        DatabaseUnavailable: RQ retries the job with backoff.
        PoisonBatchError: most events are invalid (see above).
    """
    ctx = current()
    started = time.perf_counter()
    key = ctx.keys.batch(batch_id)
    items: list[bytes] = ctx.redis.lrange(key, 0, -1)
    if not items:  # already written and cleaned up by an earlier run of this job
        ctx.redis.zrem(ctx.keys.batches, batch_id)
        return {"events": 0}
    t_fetched = time.perf_counter()
    limit = ctx.event_limit
    events: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    for raw in items:
        try:
            events.append(decode_event(raw, limit=limit))
        except InvalidEvent as exc:
            dead.append(DeadLetter(payload=raw, reason=exc.reason, event_id=exc.event_id))
    if len(items) >= POISON_MIN_EVENTS and len(dead) > POISON_RATIO * len(items):
        job = get_current_job()
        if job is not None:
            job.retries_left = 0  # retrying cannot fix the events
        sample = dead[0].reason
        metrics.BATCHES.labels("poisoned").inc()
        log.error("batch_poisoned", batch_id=batch_id, events=len(items), invalid=len(dead), example=sample)
        raise PoisonBatchError(f"{len(dead)} of {len(items)} events are invalid, e.g.: {sample}")
    t_decoded = time.perf_counter()
    result = ctx.storage.writer.write_isolating(events, dead, batch_id=batch_id)
    t_written = time.perf_counter()
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.zrem(ctx.keys.batches, batch_id)
        pipe.execute()
    seconds = time.perf_counter() - started
    ms = round(seconds * 1000, 1)
    metrics.BATCHES.labels("written").inc()
    metrics.BATCH_SECONDS.observe(seconds)
    metrics.ROWS.labels("chat").inc(result.rows)
    metrics.ROWS.labels("error").inc(result.error_rows)
    if result.dead_lettered:
        metrics.DEAD_LETTERS.inc(result.dead_lettered)
    log.info(
        "batch_written",
        batch_id=batch_id,
        events=len(items),
        applied=result.applied,
        rows=result.rows,
        error_rows=result.error_rows,
        duplicates=result.duplicates,
        dead_lettered=result.dead_lettered,
        attempts=result.attempts,
        deferred=result.deferred,
        ms=ms,
        fetch_ms=round((t_fetched - started) * 1000, 1),
        decode_ms=round((t_decoded - t_fetched) * 1000, 1),
        write_ms=round((t_written - t_decoded) * 1000, 1),
    )
    return {"events": len(items), "applied": result.applied, "dead_lettered": result.dead_lettered}
