"""How a flushed batch reaches Redis: onto the staging list, or as its own RQ job.

One round trip either way. Small batches (a quiet gateway's 50 ms of traffic) go onto
``{q}:staging``, where workers cut them into large jobs; batches of at least
``MES_DIRECT_JOB_MIN_EVENTS`` become their own job at once (MULTI/EXEC: the batch list,
its entry in ``{q}:batches`` and the RQ job, all or nothing).
"""

from __future__ import annotations

from typing import Any

import redis
from redis._parsers import Encoder
from redis.connection import PythonRespSerializer
from redis.sentinel import SentinelManagedConnection

from mes.config.settings import ProducerSettings
from mes.queue import Keys, enqueue_batch, make_queue
from mes.redis_conn import connect, parse_redis_url
from mes.schemas.ids import new_event_id

__all__ = ["NotReplicated", "Transport", "connect_redis"]

_BUFFER_CUTOFF = 6000  # redis-py's default: values larger than this are sent unjoined


class _OneWrite:
    """Sends a packed command in one ``sendall`` (mixed into redis-py's TCP connections).

    redis-py packs a batch's ``RPUSH`` into hundreds of pieces (it avoids copying large
    values) and writes each with its own ``sendall``; every write lets go of the GIL, and
    taking it back waits up to 5 ms (the interpreter's switch interval) while the gateway's
    threads run Python, so a busy caller could hold one push up for many of those waits.
    Joined, it is one copy of the batch and one write.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if isinstance(command, list) and len(command) > 1:
            command = [b"".join(command)]
        super().send_packed_command(command, check_health)  # type: ignore[misc]


class _OneWriteConnection(_OneWrite, redis.Connection):
    pass


class _OneWriteSentinelConnection(_OneWrite, SentinelManagedConnection):
    pass


# Plain TCP only: not for unix sockets or TLS, whose classes send differently.
_ONE_WRITE = {redis.Connection: _OneWriteConnection, SentinelManagedConnection: _OneWriteSentinelConnection}


class NotReplicated(redis.ConnectionError):
    """Redis took a push but fewer replicas than ``wait_replicas`` confirmed it in time:
    a primary that died now would lose it, so the producer spools it and re-sends."""


def connect_redis(url: str, *, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: the producer would rather spool than wait.

    Any ``REDIS_CONN_STRING`` form, Sentinel included (see ``core.redis_conn``). Replies
    are parsed by hiredis (a dependency, for the workers' large ``LRANGE``), but commands
    are packed by redis-py's own serializer, which copies less (hiredis copies every value
    into its own buffer), and sent in one write (``_OneWriteConnection``).
    """
    client = connect(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 1.0),
        health_check_interval=30,
        retry_on_timeout=False,
        command_packer=PythonRespSerializer(
            _BUFFER_CUTOFF,
            Encoder("utf-8", "strict", False).encode,  # type: ignore[no-untyped-call]  # redis-py: Encoder is unannotated
        ),
    )
    pool = client.connection_pool
    pool.connection_class = _ONE_WRITE.get(pool.connection_class, pool.connection_class)
    return client


class Transport:
    """Pushes batches of serialized events. Used from one thread at a time."""

    def __init__(self, settings: ProducerSettings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        url = settings.queue.redis_url or ""
        self.redis = client if client is not None else connect_redis(url)
        target = parse_redis_url(url)
        self.wait_replicas, self.wait_timeout_ms = target.wait_replicas, target.wait_timeout_ms
        self.keys = Keys(settings.queue.queue_name)
        self.queue = make_queue(self.redis, settings.queue.queue_name)
        self._owns_client = client is None

    def push(self, items: list[bytes]) -> None:
        """Hand ``items`` to Redis.

        With ``wait_replicas`` set, the push counts only once that many replicas have it
        (``WAIT``, in the same round trip as a staging push; one more after a job's
        MULTI/EXEC).

        Raises:
            redis.RedisError: nothing was written, or (a lost reply, or
                :class:`NotReplicated`) maybe everything was: either way the caller spools
                and re-sends, and the ledger drops duplicates.
        """
        wait = self.wait_replicas
        if len(items) >= self.settings.direct_job_min_events:
            enqueue_batch(self.redis, self.queue, self.keys, "p" + new_event_id(), items, self.settings.queue)
            if wait:
                self._confirmed(self.redis.wait(wait, self.wait_timeout_ms))
        elif wait:
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(self.keys.staging, *items)
            pipe.wait(wait, self.wait_timeout_ms)
            self._confirmed(pipe.execute()[1])
        else:
            self.redis.rpush(self.keys.staging, *items)

    def _confirmed(self, replicas: int) -> None:
        if replicas < self.wait_replicas:
            # Maybe the node we talk to is no longer the primary (a failover promoted its
            # replica; Sentinel reconfigures the old one only seconds later): new
            # connections ask the sentinels again.
            self.redis.connection_pool.disconnect()
            raise NotReplicated(
                f"{replicas} of {self.wait_replicas} replica(s) confirmed the push within "
                f"{self.wait_timeout_ms} ms (wait_replicas in REDIS_CONN_STRING)"
            )

    def after_fork(self) -> None:
        """In a forked child: never share the parent's sockets."""
        self.redis.connection_pool.reset()

    def close(self) -> None:
        if self._owns_client:
            self.redis.close()
