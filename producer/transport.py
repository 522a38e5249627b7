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


class _OneWriteConnection(redis.Connection):
    """Sends a packed command in one ``sendall``.

    redis-py packs a batch's ``RPUSH`` into hundreds of pieces (it avoids copying large
    values) and writes each with its own ``sendall``; every write lets go of the GIL, and
    taking it back waits up to 5 ms (the interpreter's switch interval) while the gateway's
    threads run Python, so a busy caller could hold one push up for many of those waits.
    Joined, it is one copy of the batch and one write.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if isinstance(command, list) and len(command) > 1:
            command = [b"".join(command)]
        super().send_packed_command(command, check_health)


def connect_redis(url: str, *, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: the producer would rather spool than wait.

    Replies are parsed by hiredis (a dependency, for the workers' large ``LRANGE``), but
    commands are packed by redis-py's own serializer, which copies less (hiredis copies
    every value into its own buffer), and sent in one write (``_OneWriteConnection``).
    """
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 1.0),
        health_check_interval=30,
        retry_on_timeout=False,
        command_packer=PythonRespSerializer(_BUFFER_CUTOFF, Encoder("utf-8", "strict", False).encode),
    )
    if client.connection_pool.connection_class is redis.Connection:  # not for unix sockets or TLS
        client.connection_pool.connection_class = _OneWriteConnection
    return client


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
