"""Authentication as New API does it, read from its own ``users`` and ``tokens`` tables.

Three ways in:

* ``Authorization: Bearer sk-…``: a row of ``tokens`` (``key`` is stored without ``sk-``;
  New API lets a client append ``-<channel>`` after the key, which is cut off here as
  New API does) that is enabled (``status`` 1), not expired (``expired_time`` -1 or in
  the future: checked here, because New API only flips ``status`` when the token is next
  used), not deleted (``deleted_at`` NULL), of an enabled, undeleted user.
* ``Authorization: <access_token>`` (with or without ``Bearer ``) and
  ``New-Api-User: <id>``: New API's management credential; the header must name the
  user the access token belongs to.
* ``Authorization: Bearer <MES_API_KEY>``: the operator key, for deployments without New
  API (and for tools): admin of every user's history.

``users.role`` >= 10 is an admin. Lookups, failures included, are cached for
``MES_AUTH_CACHE_SECONDS`` (default 5): in steady state a read costs no extra round trip,
and a revoked token stops working within that window.
"""

from __future__ import annotations

import dataclasses
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, column, select, table
from sqlalchemy.exc import DBAPIError

from ..core.log import get_logger

__all__ = ["ADMIN_ROLE", "AuthError", "Authenticator", "Principal"]

log = get_logger("mes.api.auth")

ADMIN_ROLE = 10  # New API: common user 1, admin 10, root 100
ENABLED = 1
_MAX_CREDENTIAL = 512
_MAX_CACHE = 50_000

# New API's tables, only the columns MES reads. ``key`` and ``group`` are reserved words:
# SQLAlchemy quotes them for each dialect, so no statement here is written by hand.
_users = table(
    "users",
    column("id"),
    column("role"),
    column("status"),
    column("access_token"),
    column("deleted_at"),
)
_tokens = table(
    "tokens",
    column("id"),
    column("user_id"),
    column("key"),
    column("status"),
    column("expired_time"),
    column("deleted_at"),
)


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling. ``user_id`` is None for the operator key."""

    user_id: int | None
    is_admin: bool
    via: str  # "token", "access_token" or "operator"


class AuthError(Exception):
    """The caller is not let in: ``status`` 401 (who are you?) or 503 (cannot check)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


def _strip_bearer(value: str) -> str:
    value = value.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value


class Authenticator:
    """Checks credentials against New API's database (``SQL_DSN``) and the operator key."""

    def __init__(
        self,
        engine: Engine | None,
        *,
        api_key: str | None = None,
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.api_key = api_key
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._wall = wall_clock
        self._cache: dict[tuple[str, str, str], tuple[float, Principal | AuthError]] = {}
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None, new_api_user: str | None = None) -> Principal:
        """The caller behind these headers.

        Raises:
            AuthError: no or a bad credential (401), or New API's database is down (503).
        """
        if not authorization or not authorization.strip():
            raise AuthError("missing credentials: send 'Authorization: Bearer sk-...' (a New API token)")
        credential = _strip_bearer(authorization)
        if not credential or len(credential) > _MAX_CREDENTIAL or not credential.isprintable():
            raise AuthError("malformed Authorization header")
        if self.api_key is not None and hmac.compare_digest(credential.encode(), self.api_key.encode()):
            return Principal(user_id=None, is_admin=True, via="operator")
        user_header = (new_api_user or "").strip()
        kind = "access_token" if user_header else "token"
        key = (kind, credential, user_header)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            outcome = hit[1]
        else:
            try:
                outcome = self._lookup(kind, credential, user_header)
            except AuthError as exc:
                if exc.status != 401:
                    raise  # never cache "could not check"
                outcome = exc
            with self._lock:
                if len(self._cache) >= _MAX_CACHE:
                    self._cache.clear()
                self._cache[key] = (now + self.cache_seconds, outcome)
        if isinstance(outcome, AuthError):
            raise outcome
        return outcome

    def _lookup(self, kind: str, credential: str, user_header: str) -> Principal:
        if self.engine is None:
            raise AuthError(
                "this MES has no New API database to check tokens against (set SQL_DSN), "
                "and the credential is not the operator key (MES_API_KEY)"
            )
        try:
            with self.engine.connect() as conn:
                if kind == "access_token":
                    return self._by_access_token(conn, credential, user_header)
                return self._by_token(conn, credential)
        except DBAPIError as exc:
            log.warning("auth_database_unavailable", error=str(exc).splitlines()[0][:200])
            raise AuthError("cannot check credentials: New API's database is unavailable", 503) from None

    def _by_access_token(self, conn: Any, credential: str, user_header: str) -> Principal:
        try:
            claimed = int(user_header)
        except ValueError:
            raise AuthError("New-Api-User must be a user id (a whole number)") from None
        u = _users.c
        row = conn.execute(
            select(u.id, u.role, u.status).where(u.access_token == credential, u.deleted_at.is_(None))
        ).first()
        if row is None:
            raise AuthError("invalid access token")
        if int(row.id) != claimed:
            raise AuthError("New-Api-User does not match the access token")
        if int(row.status) != ENABLED:
            raise AuthError("this user is disabled")
        return Principal(user_id=int(row.id), is_admin=int(row.role) >= ADMIN_ROLE, via="access_token")

    def _by_token(self, conn: Any, credential: str) -> Principal:
        key = credential.removeprefix("sk-").split("-", 1)[0]
        if not key:
            raise AuthError("invalid token")
        t, u = _tokens.c, _users.c
        row = conn.execute(
            select(t.status, t.expired_time, u.id, u.role, u.status.label("user_status"))
            .select_from(_tokens.join(_users, u.id == t.user_id))
            .where(t.key == key, t.deleted_at.is_(None), u.deleted_at.is_(None))
        ).first()
        if row is None:
            raise AuthError("invalid token")
        if int(row.status) != ENABLED:
            raise AuthError("this token is disabled or used up")
        expires = int(row.expired_time if row.expired_time is not None else -1)
        if expires != -1 and expires <= self._wall():
            raise AuthError("this token has expired")
        if int(row.user_status) != ENABLED:
            raise AuthError("this user is disabled")
        return Principal(user_id=int(row.id), is_admin=int(row.role) >= ADMIN_ROLE, via="token")
