"""The audit: each read or deletion of one user's history by someone else.

:func:`record` writes one row of ``mes_audit`` (who, what, when, from where) in its own
short transaction, and one log line ``audit`` with the same fields; :func:`list_entries`
reads them back, newest first. The API records an admin's or the operator key's reads and
deletions of another user's history (``mes.api.routes.audit``); erasing a user records
``erase`` from wherever it runs.

What an entry holds: an actor (``user:7`` for admin user 7, ``operator`` for the operator
key, ``cli`` for the command line), an action (``read``, ``delete``, ``erase``), the user
whose history it touched, a resource (``conversations``, ``conversation:<id>``,
``errors``, ``stats``, ``user``), the caller's address, and a short JSON ``detail``
(``{"rows": 12}``). Never message content, never a credential: the callers pass only ids
and counts, and nothing here reads the history.

Nothing forgets: erasing a user keeps the audit rows about them (what was done to their
history, and by whom, stays known; they hold no content). Rows are removed only by hand.

Raises (``record``): :class:`~mes.errors.DatabaseUnavailable` when the row cannot be
written, so that the caller refuses what it would have done unaudited (the API answers 503).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError

from mes.errors import DatabaseUnavailable
from mes.log import get_logger
from mes.storage.tables import ID_LEN

if TYPE_CHECKING:
    from mes.storage import Storage

__all__ = ["ACTIONS", "list_entries", "record"]

log = get_logger("mes.audit")

ACTIONS = ("read", "delete", "erase")
_ACTOR_LEN = 64
_CLIENT_LEN = 64


def _now_ms(storage: Storage) -> int:
    calendar = getattr(storage, "calendar", None)
    return int(calendar.now_ms()) if calendar is not None else time.time_ns() // 1_000_000


def record(
    storage: Storage,
    *,
    actor: str,
    actor_user_id: int | None,
    action: str,
    target_user_id: int,
    resource: str,
    client: str | None,
    detail: dict[str, Any] | None = None,
    at_ms: int | None = None,
) -> None:
    """Write one audit entry (its own transaction, committed on return) and log it.

    ``resource`` longer than its column (a ``conversation:<id>`` of a long id) is cut,
    and the whole of it kept in ``detail["resource"]``. ``at_ms`` defaults to the
    storage's clock.

    Raises:
        ValueError: ``action`` is not one of ``ACTIONS`` (a bug of the caller).
        DatabaseUnavailable: the row could not be written (``audit_failed`` is logged).
    """
    if action not in ACTIONS:
        raise ValueError(f"audit action {action!r} is not one of {ACTIONS}")
    extra = dict(detail or {})
    if len(resource) > ID_LEN:
        extra["resource"] = resource
        resource = resource[:ID_LEN]
    entry: dict[str, Any] = {
        "at_ms": _now_ms(storage) if at_ms is None else at_ms,
        "actor": actor[:_ACTOR_LEN],
        "actor_user_id": actor_user_id,
        "action": action,
        "target_user_id": target_user_id,
        "resource": resource,
        "client": None if client is None else client[:_CLIENT_LEN],
        "detail": orjson.dumps(extra).decode() if extra else None,
    }
    fields = {**entry, "detail": extra or None}
    table = storage.catalog.audit
    try:
        with storage.engine.execution_options(mes_write=True).begin() as conn:  # SQLite: BEGIN IMMEDIATE
            key = conn.execute(insert(table).values(entry)).inserted_primary_key
    except SQLAlchemyError as exc:
        log.error("audit_failed", **fields, error=str(exc).splitlines()[0][:300])
        raise DatabaseUnavailable("the audit entry could not be written") from exc
    log.info("audit", id=None if key is None else key[0], **fields)


def list_entries(
    storage: Storage,
    *,
    target_user_id: int | None = None,
    actor: str | None = None,
    action: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """At most ``limit`` entries, newest first (by id), matching every filter given:
    ``since_ms`` <= ``at_ms`` < ``until_ms``, ``id`` < ``before_id`` (the cursor: the last
    id of the previous page). ``detail`` comes back parsed (a dict, or None)."""
    t = storage.catalog.audit
    query = select(t).order_by(t.c.id.desc()).limit(limit)
    if target_user_id is not None:
        query = query.where(t.c.target_user_id == target_user_id)
    if actor is not None:
        query = query.where(t.c.actor == actor)
    if action is not None:
        query = query.where(t.c.action == action)
    if since_ms is not None:
        query = query.where(t.c.at_ms >= since_ms)
    if until_ms is not None:
        query = query.where(t.c.at_ms < until_ms)
    if before_id is not None:
        query = query.where(t.c.id < before_id)
    with storage.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    # keys as plain str: the columns' names are SQLAlchemy's quoted_name, which orjson refuses
    out = [{str(key): value for key, value in row.items()} for row in rows]
    return [{**entry, "detail": orjson.loads(entry["detail"]) if entry["detail"] else None} for entry in out]
