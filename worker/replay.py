"""Replaying what failed: jobs in RQ's failed registry, dead letters, spool files.

All three are safe to repeat: events carry their ids and the writer's ledger drops the
ones already applied, so replaying too much never duplicates a row.

* Failed jobs (a database outage longer than the retries, a poisoned batch after the
  producer was fixed): back onto the queue; their events never left Redis.
* Dead letters (events the worker rejected, after a fix to the worker or the data): their
  raw bytes go back onto the staging list and the dead-letter row is deleted; an event
  that is still invalid comes back as a new dead letter. A dead letter that kept only a
  prefix of its event (it was too large to keep whole) cannot be replayed: it stays,
  and is listed as such.
* Batches held by the poison brake are failed jobs: requeuing one releases it (see ``brake``).
* Spool files (a producer that could not reach Redis and stopped before it re-sent them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

from rq.registry import FailedJobRegistry

from mes.config.settings import ProducerSettings
from mes.queue import Keys
from mes.storage import Storage
from mes.storage.dead_letters import read_dead_letters, remove_dead_letters

__all__ = ["DeadLetterReplay", "replay_dead_letters", "replay_failed_jobs", "replay_spool"]


@dataclasses.dataclass(frozen=True)
class DeadLetterReplay:
    """What ``replay_dead_letters`` did: how many went back, which could not (truncated)."""

    replayed: int
    truncated: list[int]


def replay_failed_jobs(
    queue: Any, *, job_ids: Iterable[str] | None = None, older_than_s: float | None = None
) -> list[str]:
    """Requeue failed jobs (all, the given ids, or those that failed more than
    ``older_than_s`` ago); returns the ids requeued."""
    registry = FailedJobRegistry(queue=queue)
    wanted = set(job_ids) if job_ids is not None else None
    cutoff = None if older_than_s is None else time.time() - older_than_s
    done = []
    for job_id in registry.get_job_ids():
        if wanted is not None and job_id not in wanted:
            continue
        if cutoff is not None:
            job = queue.fetch_job(job_id)
            ended = job.ended_at.timestamp() if job is not None and job.ended_at else None
            if ended is None or ended > cutoff:
                continue
        registry.requeue(job_id)
        done.append(job_id)
    return done


def replay_dead_letters(
    storage: Storage, redis: Any, keys: Keys, *, ids: Iterable[int] | None = None
) -> DeadLetterReplay:
    """Push dead letters (all, or the given row ids) back through the pipeline.

    Those that kept only a prefix of their event are left in place: replaying a prefix
    would only make a new dead letter, and lose the row that says what happened. Each
    chunk is on the staging list before its rows are removed: a crash between the two
    replays it twice, which the ledger makes harmless.
    """
    letters = read_dead_letters(storage, ids)
    truncated = [d.id for d in letters if d.truncated]
    ready = [d for d in letters if not d.truncated]
    for start in range(0, len(ready), 500):
        chunk = ready[start : start + 500]
        redis.rpush(keys.staging, *[d.payload for d in chunk])
        remove_dead_letters(storage, [d.id for d in chunk])
    return DeadLetterReplay(replayed=len(ready), truncated=truncated)


def replay_spool(settings: ProducerSettings, redis: Any = None) -> int:
    """Re-send every ready file of the spool folder; returns how many events."""
    from mes.producer.spool import Spool
    from mes.producer.transport import Transport

    transport = Transport(settings, redis)
    spool = Spool(settings.spool_dir)
    total = 0
    try:
        for file in spool.ready_files():
            sent = spool.resend(
                file, transport.push, max_events=settings.batch_max_events, max_bytes=settings.batch_max_bytes
            )
            total += sent or 0
    finally:
        transport.close()
    return total
