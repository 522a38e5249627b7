"""Moving jobs whose retry time has come back onto the queue.

RQ schedules a retry with backoff into its ``ScheduledJobRegistry`` and relies on a
scheduler process to move it back. RQ's scheduler is a process forked by one worker,
holding a lock for about a minute: when that worker is SIGKILLed, retries wait until the
lock expires. MES workers do it themselves instead, about once a second, one worker at a
time (a lock of under a second), with the MES job class, so a forged entry cannot crash
the loop.
"""

from __future__ import annotations

from typing import Any

from rq.registry import ScheduledJobRegistry
from rq.utils import current_timestamp

from mes.worker.safety import MESJob

__all__ = ["promote_due_retries"]


def promote_due_retries(redis: Any, queue: Any, lock_key: str) -> int:
    """Enqueue the jobs whose scheduled retry time has passed; returns how many."""
    if not redis.set(lock_key, "1", nx=True, px=900):
        return 0
    registry = ScheduledJobRegistry(queue=queue)  # type: ignore[no-untyped-call]  # rq: ScheduledJobRegistry.__init__ is unannotated
    job_ids = registry.get_jobs_to_schedule(current_timestamp())
    if not job_ids:
        return 0
    jobs = MESJob.fetch_many(job_ids, connection=redis, serializer=queue.serializer)
    with redis.pipeline() as pipe:
        for job in jobs:
            if job is not None:
                # RQ's public enqueue_job (its own scheduler calls the private _enqueue_job,
                # which this reaches for a job without dependencies, as MES's are)
                queue.enqueue_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
        for job_id in job_ids:
            registry.remove(job_id, pipeline=pipe)
        pipe.execute()
    return len(job_ids)
