"""Replaying what failed: jobs in RQ's failed registry, dead letters, spool files.

All three are safe to repeat: events carry their ids and the writer's ledger drops the
ones already applied, so replaying too much never duplicates a row.

* Failed jobs (a database outage longer than the retries, a poisoned batch after the
  producer was fixed): back onto the queue; their events never left Redis.
* Dead letters (events the worker rejected, after a fix to the worker or the data): their
  raw bytes go back onto the staging list and the dead-letter row is deleted; an event
  that is still invalid comes back as a new dead letter.
* Spool files (a producer that could not reach Redis and stopped before it re-sent them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rq.registry import FailedJobRegistry
from sqlalchemy import bindparam, delete, select

from ..core.queue import Keys
from ..core.settings import ProducerSettings
from ..storage import Storage

__all__ = ["replay_dead_letters", "replay_failed_jobs", "replay_spool"]


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


def replay_dead_letters(storage: Storage, redis: Any, keys: Keys, *, ids: Iterable[int] | None = None) -> int:
    """Push dead letters (all, or the given row ids) back through the pipeline; returns how many."""
    table = storage.catalog.dead_letters
    query = select(table.c.id, table.c.payload).order_by(table.c.id)
    if ids is not None:
        query = query.where(table.c.id.in_(list(ids)))
    count = 0
    with storage.engine.connect() as conn:
        rows = conn.execute(query).fetchall()
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        redis.rpush(keys.staging, *[bytes(r.payload) for r in chunk])
        with storage.engine.begin() as conn:
            conn.execute(
                delete(table).where(table.c.id.in_(bindparam("ids", expanding=True))),
                {"ids": [r.id for r in chunk]},
            )
        count += len(chunk)
    return count


def replay_spool(settings: ProducerSettings, redis: Any = None) -> int:
    """Re-send every ready file of the spool folder; returns how many events."""
    from ..producer.spool import Spool
    from ..producer.transport import Transport

    transport = Transport(settings, redis)
    spool = Spool(settings.spool_dir)
    total = 0
    try:
        for file in spool.ready_files():
            total += spool.resend(file, transport.push) or 0
    finally:
        transport.close()
    return total
