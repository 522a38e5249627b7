"""How a flushed batch reaches Redis: onto the staging list, or as its own RQ job.

One round trip either way. Small batches (a quiet gateway's 50 ms of traffic) go onto
``{q}:staging``, where workers cut them into large jobs; batches of at least
``MES_DIRECT_JOB_MIN_EVENTS`` become their own job at once (MULTI/EXEC: the batch list,
its entry in ``{q}:batches`` and the RQ job, all or nothing).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.connection import Encoder, PythonRespSerializer

from ..core.queue import Keys, enqueue_batch, make_queue
from ..core.settings import ProducerSettings
from ..schemas.ids import new_event_id

__all__ = ["Transport", "connect_redis"]

_BUFFER_CUTOFF = 6000  # redis-py's default: values larger than this are sent unjoined


def connect_redis(url: str, *, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: the producer would rather spool than wait.

    Replies are parsed by hiredis (a dependency, for the workers' large ``LRANGE``), but
    commands are packed by redis-py's own serializer: hiredis copies a batch's megabytes
    into one buffer, while redis-py hands large values to the socket as they are
    (``bench/producer.py``: the flusher's CPU per event).
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 1.0),
        health_check_interval=30,
        retry_on_timeout=False,
        command_packer=PythonRespSerializer(_BUFFER_CUTOFF, Encoder("utf-8", "strict", False).encode),
    )


class Transport:
    """Pushes batches of serialized events. Used from one thread at a time."""

    def __init__(self, settings: ProducerSettings, client: Any = None) -> None:
        self.settings = settings
        self.redis = client if client is not None else connect_redis(settings.queue.redis_url or "")
        self.keys = Keys(settings.queue.queue_name)
        self.queue = make_queue(self.redis, settings.queue.queue_name)
        self._owns_client = client is None

    def push(self, items: list[bytes]) -> None:
        """Hand ``items`` to Redis.

        Raises:
            redis.RedisError: nothing was written, or (a lost reply) maybe everything was:
                either way the caller spools and re-sends, and the ledger drops duplicates.
        """
        if len(items) >= self.settings.direct_job_min_events:
            enqueue_batch(self.redis, self.queue, self.keys, "p" + new_event_id(), items, self.settings.queue)
        else:
            self.redis.rpush(self.keys.staging, *items)

    def after_fork(self) -> None:
        """In a forked child: never share the parent's sockets."""
        self.redis.connection_pool.reset()

    def close(self) -> None:
        if self._owns_client:
            self.redis.close()
