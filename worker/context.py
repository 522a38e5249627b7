"""What a worker process holds for its whole life: settings, the database pool, Redis.

RQ calls the job function with the batch id only; that entry point (``jobs.write_batch``) finds the process's
context here. ``mes worker`` installs it before the work loop, so every job of the
process reuses one database pool (RQ's forking worker would open a connection per job).
Building it also learns how large an event the database takes (``event_limit``).
"""

from __future__ import annotations

import dataclasses
import threading

from redis import Redis
from rq import Queue

from mes.config.settings import Settings
from mes.queue import Keys, make_queue
from mes.schemas.limits import SizeLimit
from mes.storage import Storage
from mes.storage.engine import event_limit
from mes.worker.safety import MESJob

__all__ = ["WorkerContext", "current", "install"]


@dataclasses.dataclass
class WorkerContext:
    settings: Settings
    storage: Storage
    redis: Redis
    keys: Keys
    queue: Queue

    @property
    def event_limit(self) -> SizeLimit:
        """The largest event the database takes (learned at start-up, re-read every few minutes)."""
        return event_limit(self.storage.engine)

    @classmethod
    def build(cls, settings: Settings, redis: Redis, storage: Storage | None = None) -> WorkerContext:
        name = settings.queue.queue_name
        ctx = cls(
            settings=settings,
            storage=storage if storage is not None else Storage.open(settings.database),
            redis=redis,
            keys=Keys(name),
            queue=make_queue(redis, name, job_class=MESJob),
        )
        ctx.event_limit  # noqa: B018  (learned now, at start-up, not in the first job)
        ctx.storage.writer.privacy = settings.privacy.build()  # what is kept, what is redacted
        return ctx

    def close(self) -> None:
        self.storage.close()


_current: WorkerContext | None = None
_lock = threading.Lock()


def install(context: WorkerContext | None) -> None:
    """Make ``context`` the one job functions of this process use (None removes it)."""
    global _current
    with _lock:
        _current = context


def current() -> WorkerContext:
    """The installed context.

    Raises:
        RuntimeError: the job runs in a process that is not a MES worker.
    """
    if _current is None:
        raise RuntimeError("no MES worker context in this process: run jobs with `mes worker`")
    return _current
