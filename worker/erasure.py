"""Erasing a user everywhere MES holds their events: the database (``mes.storage.erase``),
the queue in Redis and a spool folder. ``mes erase --user N`` and
``DELETE /api/v1/users/{id}/history`` both run ``erase``.

Events of the user still on their way when the erasure runs:

* **In the database's path:** the marker that ``mes.storage.erase`` commits first makes
  every writer drop an event of the user that happened before it, whenever it arrives.
* **In Redis:** each batch list (``{q}:batch:<id>``: jobs waiting, running, failed and
  kept for ``mes replay``, held by the poison brake) and the staging list are rewritten
  without the user's events, each in an optimistic transaction (``WATCH``): a list a worker
  takes or changes meanwhile is read again, or left to the marker once it is gone.
* **In a spool folder** (the API's, or the one named by ``MES_SPOOL_DIR`` where
  ``mes erase`` runs): each ready file is rewritten without them (``Spool.scrub``). A file
  a live process is still appending to, or is re-sending at this moment, is left: what
  it sends reaches the writer, which drops it. Spool folders of other machines (gateways
  with their own) are reached the same way: by the marker, when their files are re-sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError, WatchError

from mes.log import get_logger
from mes.producer.spool import Spool
from mes.queue import Keys
from mes.storage import Storage
from mes.storage.erase import ErasureReport, Progress, erase_user, events_of, finish

__all__ = ["erase"]

log = get_logger("mes.worker.erasure")

_TRIES = 5  # optimistic rewrites of one list before it is left to the marker


def erase(
    storage: Storage,
    user_id: int,
    *,
    dry_run: bool = False,
    redis: Redis | None = None,
    queue_name: str | None = None,
    spool_dir: str | None = None,
    progress: Progress | None = None,
) -> ErasureReport:
    """Erase ``user_id`` from the database, then from the queue (``redis``, ``queue_name``)
    and ``spool_dir`` when given; the marker is finished with the whole report. What
    cannot be cleaned now (Redis down, a disk that refuses) is said in ``report.left``:
    the writers still drop those events when they arrive (the marker)."""
    report = erase_user(storage, user_id, dry_run=dry_run, progress=progress)
    # Every event of the user waiting now is from before the erasure, whatever time its
    # gateway's clock gave it: not only those the marker's time would catch.
    drop = events_of(user_id, None)
    if redis is not None and queue_name is not None:
        try:
            report.queued_events = _scrub_queue(redis, Keys(queue_name), drop, dry_run=dry_run)
        except RedisError as exc:
            report.left.append(f"the queue was not cleaned (Redis: {type(exc).__name__})")
            log.warning("erasure_queue_left", user_id=user_id, error=str(exc)[:200])
    if spool_dir is not None:
        try:
            report.spool_events = _scrub_spool(Spool(spool_dir), drop, dry_run=dry_run)
        except OSError as exc:
            report.left.append(f"the spool folder was not cleaned ({exc.strerror or type(exc).__name__})")
            log.warning("erasure_spool_left", user_id=user_id, error=str(exc)[:200])
    if not dry_run:
        finish(storage, report)
    return report


def _scrub_queue(redis: Redis, keys: Keys, drop: Callable[[bytes], bool], *, dry_run: bool) -> int:
    removed = 0
    names = [keys.staging, *redis.scan_iter(match=keys.batch("*"), count=500)]
    for name in names:
        removed += _scrub_list(redis, name, drop, dry_run=dry_run)
    return removed


def _scrub_list(redis: Redis, name: Any, drop: Callable[[bytes], bool], *, dry_run: bool) -> int:
    """One list without the events ``drop`` says; 0 when it is gone or keeps changing."""
    for _ in range(_TRIES):
        pipe: Any  # redis-py's Pipeline: watch() is untyped
        with redis.pipeline() as pipe:
            try:
                pipe.watch(name)
                items: list[bytes] = pipe.lrange(name, 0, -1)
                kept = [item for item in items if not drop(item)]
                gone = len(items) - len(kept)
                if not gone or dry_run:
                    pipe.unwatch()
                    return gone
                pipe.multi()
                pipe.delete(name)
                if kept:
                    pipe.rpush(name, *kept)
                pipe.execute()
            except WatchError:
                continue
        log.info("queue_scrubbed", key=name.decode() if isinstance(name, bytes) else name, removed=gone)
        return gone
    log.info("queue_scrub_left", key=str(name), reason="the list kept changing: the writer drops them")
    return 0


def _scrub_spool(spool: Spool, drop: Callable[[bytes], bool], *, dry_run: bool) -> int:
    removed = 0
    for file in spool.ready_files():
        if dry_run:
            removed += _count_lines(spool, file.path, drop)
            continue
        removed += spool.scrub(file, drop) or 0
    return removed


def _count_lines(spool: Spool, path: str, drop: Callable[[bytes], bool]) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip() and drop(line.rstrip(b"\n")))
    except OSError:
        return 0
