"""The services every route uses, composed in one place: the reader on MES's database,
the authenticator on New API's, and Redis and the producer for readiness and ingest."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

from mes.api.auth import Authenticator
from mes.config.settings import Settings
from mes.log import get_logger
from mes.reader import HistoryReader
from mes.storage import Storage

__all__ = ["Services"]

log = get_logger("mes.api")


@dataclasses.dataclass
class Services:
    """What the routes use. ``create_app`` opens them from settings, or takes them ready-made."""

    reader: HistoryReader
    auth: Authenticator
    settings: Settings
    redis: Any = None  # for readiness, queue gauges and ingest
    producer: Any = None  # the ingest route's
    owned: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings) -> Services:
        storage = Storage.open(settings.database)
        owned: list[Callable[[], None]] = [storage.close]
        auth_engine = None
        if settings.main_db is not None:
            from mes.storage.engine import create_engine_for

            auth_db = dataclasses.replace(settings.database, db=settings.main_db, max_idle_conns=4)
            auth_engine = create_engine_for(auth_db)
            owned.append(auth_engine.dispose)
        auth = Authenticator(
            auth_engine, api_key=settings.api.api_key, cache_seconds=settings.api.auth_cache_seconds
        )
        redis = producer = None
        if settings.queue.redis_url:
            from mes.producer import Producer
            from mes.producer.transport import connect_redis

            redis = connect_redis(settings.queue.redis_url)
            owned.append(redis.close)
            producer = Producer(settings.producer)
            owned.append(producer.close)
        if auth_engine is None and settings.api.api_key is None:
            log.warning("api_has_no_credentials", hint="set SQL_DSN (New API's database) or MES_API_KEY")
        return cls(HistoryReader(storage), auth, settings, redis=redis, producer=producer, owned=owned)

    def close(self) -> None:
        for close in reversed(self.owned):
            with contextlib.suppress(Exception):
                close()
