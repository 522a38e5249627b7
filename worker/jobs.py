"""The RQ job function: one batch from Redis into the database, exactly once.

``mes.worker.jobs.write_batch`` is a wire contract (it is the function name stored in
every job): never move or rename it without leaving an alias here. RQ imports it by that
name and calls it with the batch id alone, so it is the one place that looks up the
process's context (``context.current()``, installed by ``mes worker``); the work itself,
``write_batch_with``, takes the context as an argument, as does everything below it.
"""

from __future__ import annotations

import time
from typing import Any

from rq import get_current_job

from mes import metrics
from mes.errors import InvalidEvent, PoisonBatchError
from mes.log import get_logger
from mes.schemas import decode_event
from mes.storage import DeadLetter
from mes.worker import brake
from mes.worker.brake import POISON_MIN_EVENTS, POISON_RATIO
from mes.worker.context import WorkerContext, current

__all__ = ["POISON_MIN_EVENTS", "POISON_RATIO", "PoisonBatchError", "write_batch", "write_batch_with"]

log = get_logger("mes.worker")


def write_batch(batch_id: str) -> dict[str, Any]:
    """RQ's entry point: :func:`write_batch_with` this process's worker context."""
    return write_batch_with(current(), batch_id)


def write_batch_with(ctx: WorkerContext, batch_id: str) -> dict[str, Any]:
    """Decode, validate and write batch ``batch_id``; return after the commit.

    Invalid events, and events larger than the database takes (``event_limit``: they
    are never sent to it), go to ``mes_dead_letters`` with their reason, bounded. The
    batch's list in Redis is deleted only after the commit, so a worker that dies midway
    leaves it for the retry, and the ledger makes the retry harmless.

    Raises:
        DatabaseUnavailable: RQ retries the job with backoff.
        PoisonBatchError: most events are invalid: the valid ones are written, the rest
            wait for ``mes replay failed`` (see ``brake``).
    """
    started = time.perf_counter()
    key = ctx.keys.batch(batch_id)
    braked = brake.braked_key(ctx.keys.prefix)
    with ctx.redis.pipeline(transaction=False) as pipe:  # one round trip
        pipe.lrange(key, 0, -1)
        pipe.hexists(braked, batch_id)
        items, held = pipe.execute()
    if not items:  # already written and cleaned up by an earlier run of this job
        ctx.redis.zrem(ctx.keys.batches, batch_id)
        if held:
            ctx.redis.hdel(braked, batch_id)
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
    if not held and brake.floods(len(items), len(dead)):
        _brake(ctx, batch_id, events, dead)  # raises
    # A batch the brake held runs again only when an operator requeued it: that releases it.
    t_decoded = time.perf_counter()
    result = ctx.storage.writer.write_isolating(events, dead, batch_id=batch_id)
    t_written = time.perf_counter()
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.zrem(ctx.keys.batches, batch_id)
        if held:
            pipe.hdel(braked, batch_id)
        pipe.execute()
    if held:
        metrics.BRAKED_EVENTS.labels("released").inc(len(dead))
        log.warning(
            "brake_released", batch_id=batch_id, events=len(items), dead_lettered=result.dead_lettered
        )
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
        erased=result.erased,
        ms=ms,
        fetch_ms=round((t_fetched - started) * 1000, 1),
        decode_ms=round((t_decoded - t_fetched) * 1000, 1),
        write_ms=round((t_written - t_decoded) * 1000, 1),
    )
    return {"events": len(items), "applied": result.applied, "dead_lettered": result.dead_lettered}


def _brake(ctx: WorkerContext, batch_id: str, events: list[dict[str, Any]], dead: list[DeadLetter]) -> None:
    """Write the valid events of a mostly invalid batch, hold the rest; always raises.

    The hold is recorded only after the valid events committed: if the database is down,
    the job fails as any other and its retry brakes again.

    Raises:
        PoisonBatchError: always, once the valid events are written.
        DatabaseUnavailable: the valid events could not be written: RQ retries the job.
    """
    total = len(events) + len(dead)
    result = ctx.storage.writer.write_isolating(events, (), batch_id=batch_id)
    sample = dead[0].reason
    brake.hold(ctx.redis, ctx.keys.prefix, batch_id, invalid=len(dead), valid=len(events), example=sample)
    job = get_current_job()
    if job is not None:
        job.retries_left = 0  # retrying cannot fix the events; the operator's replay releases them
    metrics.BATCHES.labels("poisoned").inc()
    metrics.BRAKED_EVENTS.labels("held").inc(len(dead))
    metrics.ROWS.labels("chat").inc(result.rows)
    metrics.ROWS.labels("error").inc(result.error_rows)
    if result.dead_lettered:  # values the database refused among the valid ones
        metrics.DEAD_LETTERS.inc(result.dead_lettered)
    log.error("batch_braked", batch_id=batch_id, events=total, invalid=len(dead), applied=result.applied,
              example=sample)  # fmt: skip
    raise PoisonBatchError(
        f"poison brake: {len(dead)} of {total} events are invalid, e.g.: {sample}; the {len(events)} valid "
        "ones were written; the invalid ones wait in this job: fix the gateway (or upgrade the workers), then "
        "`mes replay failed` writes what is valid by then and dead-letters the rest"
    )
