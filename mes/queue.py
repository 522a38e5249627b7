"""The Redis side of MES: key names, and how a batch of events becomes one RQ job.

Wire contract (documented for other languages in ``schemas/CONTRACT.md``; never rename
without an alias), with ``{q}`` the queue name (``MES_QUEUE``, default ``mes``):

* ``{q}:staging`` — a list. Producers ``RPUSH`` serialized events here, any number per
  command. Workers cut it into batches: at most one cut per ``MES_DRAIN_LINGER_MS``
  unless a full batch is waiting, so many quiet producers still make large jobs.
* ``{q}:batch:<id>`` — a list: the events of one job. The job carries only the id.
* ``{q}:batches`` — a sorted set of batch ids by creation time (ms): a batch whose job
  never got enqueued (a crash between two steps) is found here and enqueued again.
* ``rq:queue:{q}`` and RQ's registries — the jobs: ``mes.worker.jobs.write_batch(<id>)``,
  JSON-serialized (never pickle), with retries and backoff.

A busy producer skips staging: a flush of at least ``MES_DIRECT_JOB_MIN_EVENTS`` events
becomes its own batch and job in one MULTI/EXEC.

This module imports ``rq``; the producer loads it only when it first talks to Redis.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from mes.config.settings import QueueSettings

__all__ = [
    "JOB_FUNCTION",
    "Keys",
    "enqueue_batch",
    "job_retry",
    "make_queue",
    "queue_figures",
]

JOB_FUNCTION = "mes.worker.jobs.write_batch"
# A job that failed its last retry waits this long in RQ's failed registry for
# ``mes replay``; its events stay in Redis meanwhile.
FAILURE_TTL = 90 * 24 * 3600


class Keys:
    """Redis key names for one queue."""

    __slots__ = ("batches", "cut_clock", "maintenance_lock", "prefix", "retry_lock", "staging")

    def __init__(self, queue_name: str) -> None:
        self.prefix = queue_name
        self.staging = f"{queue_name}:staging"
        self.batches = f"{queue_name}:batches"
        self.cut_clock = f"{queue_name}:staging:last_cut"
        self.maintenance_lock = f"{queue_name}:maintenance"
        self.retry_lock = f"{queue_name}:retry-promotion"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"


def job_retry(intervals: Sequence[int]) -> Retry | None:
    return Retry(max=len(intervals), interval=list(intervals)) if intervals else None


def make_queue(redis: Redis, name: str, **kwargs: Any) -> Queue:
    """An RQ queue that serializes jobs as JSON."""
    return Queue(name, connection=redis, serializer=JSONSerializer, **kwargs)


def enqueue_batch(
    redis: Redis,
    queue: Queue,
    keys: Keys,
    batch_id: str,
    items: Sequence[bytes] | None,
    settings: QueueSettings,
) -> None:
    """Store ``items`` as batch ``batch_id`` (when given) and enqueue its job, atomically.

    With ``items=None`` the batch list already exists (a staging cut or the orphan reaper).

    Raises:
        redis.RedisError: nothing was written (MULTI/EXEC is all or nothing).
    """
    with redis.pipeline(transaction=True) as pipe:
        pipe.multi()  # before RQ adds its commands, so RQ sees an explicit transaction
        if items:
            pipe.rpush(keys.batch(batch_id), *items)
            pipe.zadd(keys.batches, {batch_id: time.time_ns() // 1_000_000})
        queue.enqueue_call(
            JOB_FUNCTION,
            args=(batch_id,),
            job_id=batch_id,
            timeout=settings.job_timeout,
            # A minute, not 0: RQ 2.12 deleting a finished job at once trips over the
            # stale execution record a killed worker leaves behind, failing a job that succeeded.
            result_ttl=60,
            failure_ttl=FAILURE_TTL,
            retry=job_retry(settings.retry_intervals),
            description=f"write batch {batch_id}",
            pipeline=pipe,
        )
        pipe.execute()


def queue_figures(redis: Redis, queue_name: str) -> dict[str, int]:
    """What waits in Redis, in one round trip: events staged, batches not yet written,
    jobs queued, running, waiting to retry, and failed for good (``mes replay failed``)."""
    keys = Keys(queue_name)
    pipe = redis.pipeline(transaction=False)
    pipe.llen(keys.staging)
    pipe.zcard(keys.batches)
    pipe.llen(f"rq:queue:{queue_name}")
    pipe.zcard(f"rq:wip:{queue_name}")
    pipe.zcard(f"rq:scheduled:{queue_name}")
    pipe.zcard(f"rq:failed:{queue_name}")
    staged, batches, queued, started, scheduled, failed = pipe.execute()
    return {
        "staged_events": int(staged),
        "batches_pending": int(batches),
        "jobs_queued": int(queued),
        "jobs_started": int(started),
        "jobs_retrying": int(scheduled),
        "jobs_failed": int(failed),
    }
