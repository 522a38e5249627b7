"""The worker process: an RQ ``SimpleWorker`` that keeps its database pool, cuts the
staging list while it waits, and does MES's upkeep.

Why ``SimpleWorker``: RQ's default worker forks a child per job (about 75 jobs/s here)
and the child cannot keep a database pool; the simple worker runs jobs in-process.
The price is that nobody heartbeats while a job runs, so the job's entry in RQ's
started registry must outlive the job's timeout: a worker killed mid-batch is noticed
when that entry expires (timeout + 15 s) at the next maintenance pass (every 15 s), and
its job is retried by another worker, well within two minutes with the default 60 s
timeout. The retry is harmless: the ledger drops what the dead worker had committed.

Retries with backoff are moved back onto the queue by the workers themselves (see
``retries``), so no RQ scheduler process is needed.

SIGTERM or SIGINT: finish the current batch, then exit (RQ's warm shutdown). A second
signal stops at once (the batch's transaction rolls back; its job is retried).
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rq.exceptions import DequeueTimeout
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker, WorkerStatus

from mes.log import get_logger
from mes.worker.context import WorkerContext
from mes.worker.retries import promote_due_retries
from mes.worker.safety import MESJob
from mes.worker.staging import Stager

__all__ = ["MESWorker"]

log = get_logger("mes.worker")
# Content retention erases for at most this long per maintenance pass, so that a backlog
# (MES_CONTENT_RETENTION_DAYS set on a year of history) never keeps a worker from its jobs
# for long; an unfinished pass goes on at the next maintenance, every MES_MAINTENANCE_INTERVAL.
_EXPIRY_SECONDS = 2.0

HEARTBEAT_EVERY = 5.0
RETRY_PROMOTION_EVERY = 1.0
# The one place MES reaches into RQ past its public API: MESWorker overrides
# BaseWorker.dequeue_job_and_maintain_ttl (RQ has no hook for work between waits) and
# reads what that method reads (_ordered_queues, reorder_queues, queue_class.dequeue_any).
# Read against this RQ release; tests/test_rq_contract.py fails on any other, and when
# the method's signature, its call in BaseWorker.work or those attributes change.
RQ_CHECKED = "2.12.0"


class MESWorker(SimpleWorker):
    """One MES worker. Build with :meth:`for_context`."""

    mes_context: WorkerContext
    stager: Stager

    @classmethod
    def for_context(cls, ctx: WorkerContext, **kwargs: Any) -> MESWorker:
        worker = cls(
            [ctx.queue],
            connection=ctx.redis,
            job_class=MESJob,
            serializer=JSONSerializer,
            maintenance_interval=ctx.settings.worker.maintenance_interval,
            job_monitoring_interval=10,
            log_job_description=False,
            **kwargs,
        )
        worker.mes_context = ctx
        ws = ctx.settings.worker
        worker.stager = Stager(
            ctx.redis,
            ctx.queue,
            ctx.keys,
            ctx.settings.queue,
            max_events=ws.job_max_events,
            linger_ms=ws.drain_linger_ms,
        )
        return worker

    def teardown(self) -> None:
        """RQ's teardown with its two steps the other way round: stop the thread that
        listens for RQ's commands (its own connection) before the last writes, so no
        other thread reads from Redis while this one registers the worker's death. On
        a ``redis+sentinel://`` queue, RQ's order left a pipeline and the listener on
        one connection: "Wrong number of response items", a traceback and exit 1 at
        every SIGTERM. A Redis that is gone by then costs a warning, not the exit."""
        if self.scheduler:
            self.stop_scheduler()  # type: ignore[no-untyped-call]  # rq: unannotated
        self.unsubscribe()  # type: ignore[no-untyped-call]  # rq: unannotated
        try:
            self.register_death()  # type: ignore[no-untyped-call]  # rq: unannotated
        except redis.exceptions.RedisError as exc:
            log.warning("worker_death_not_registered", worker=self.name, error=str(exc).splitlines()[0][:200])

    def get_heartbeat_ttl(self, job: Any) -> int:
        # Nobody heartbeats during an in-process job: the started-registry entry must
        # outlive the job's own timeout, and no more, so a dead worker is noticed soon.
        return int(job.timeout or self.mes_context.settings.queue.job_timeout) + 15

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]  # rq: unannotated
        self.mes_maintenance()

    def mes_maintenance(self) -> None:
        """Re-enqueue orphaned batches and create the coming days' tables: one worker at a time."""
        ctx = self.mes_context
        interval = ctx.settings.worker.maintenance_interval
        if not ctx.redis.set(ctx.keys.maintenance_lock, self.name, nx=True, ex=max(1, interval - 1)):
            return
        try:
            self.stager.reap()
            ctx.storage.create_ahead()
            self._retention()
            self._content_retention()
        except Exception as exc:  # upkeep must never stop the worker; the next pass retries
            log.error("maintenance_failed", error=str(exc)[:300])

    def _retention(self) -> None:
        """``MES_RETENTION_DAYS``: drop daily tables past it (``storage.partitions``)."""
        days = self.mes_context.settings.worker.retention_days
        if self._hourly("retention", days):
            from mes.storage.partitions import apply_retention

            dropped = apply_retention(self.mes_context.storage, days)
            if dropped:
                log.info("retention_applied", retention_days=days, days=[d.isoformat() for d in dropped])

    def _content_retention(self) -> None:
        """``MES_CONTENT_RETENTION_DAYS``: erase the content of older days (``storage.expiry``)."""
        days = self.mes_context.settings.worker.content_retention_days
        if self._hourly("content_retention", days):
            from mes.storage.expiry import expire_content

            done = expire_content(self.mes_context.storage, days, seconds=_EXPIRY_SECONDS)
            if done.rows:
                log.info("content_retention_applied", content_retention_days=days, rows=sum(done.rows.values()),
                         tables=sorted(done.rows), finished=done.finished)  # fmt: skip
            if not done.finished:  # more to erase: the next maintenance pass goes on, not in an hour
                ctx = self.mes_context
                ctx.redis.delete(f"{ctx.keys.prefix}:content_retention:last")

    def _hourly(self, name: str, days: int) -> bool:
        """Whether a retention task set to ``days`` (0: off) runs now: with daily tables, at
        most once an hour across all workers (a Redis key records the last run)."""
        ctx = self.mes_context
        if days <= 0 or not ctx.storage.catalog.daily:
            return False
        return bool(ctx.redis.set(f"{ctx.keys.prefix}:{name}:last", self.name, nx=True, ex=3600))

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """RQ's wait for a job, with staging cut between short waits (see ``RQ_CHECKED``).

        ``timeout=None`` is burst mode: cut everything staged, then return None when no
        job is left.
        """
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))  # type: ignore[no-untyped-call]  # rq: unannotated
        poll = max(0.05, min(1.0, self.mes_context.settings.worker.drain_linger_ms / 2000))
        idle_since = last_beat = time.monotonic()
        last_promotion = 0.0
        self.heartbeat()
        wait = 1.0
        while True:
            try:
                if time.monotonic() - last_beat >= HEARTBEAT_EVERY:
                    self.heartbeat()
                    last_beat = time.monotonic()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                if time.monotonic() - last_promotion >= RETRY_PROMOTION_EVERY:
                    promote_due_retries(
                        self.connection, self.mes_context.queue, self.mes_context.keys.retry_lock
                    )
                    last_promotion = time.monotonic()
                if timeout is None:
                    self.stager.cut_all()
                else:
                    self.stager.cut()
                result = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    None if timeout is None else poll,  # type: ignore[arg-type]  # rq: typed int, but BLPOP takes a float
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
                wait = 1.0
                if result is not None:
                    job, queue = result
                    # This worker's MES_JOB_TIMEOUT rules, not the one the producer stamped:
                    # it bounds both the job and how soon a dead worker's job is taken over.
                    job.timeout = self.mes_context.settings.queue.job_timeout
                    self.reorder_queues(reference_queue=queue)
                    job.redis_server_version = self.get_redis_server_version()  # type: ignore[no-untyped-call]  # rq: unannotated
                    self.heartbeat()
                    return result
                if timeout is None:
                    return None
            except DequeueTimeout:
                if max_idle_time is not None and time.monotonic() - idle_since > max_idle_time:
                    return None
            except redis.exceptions.ConnectionError as exc:
                log.error("redis_unavailable", error=str(exc)[:200], retry_in_s=wait)
                time.sleep(wait)
                wait = min(wait * 2, self.max_connection_wait_time)
