"""Authentication as New API does it, read from its own ``users`` and ``tokens`` tables.

Three ways in:

* ``Authorization: Bearer sk-…``: a row of ``tokens`` (``key`` is stored without ``sk-``;
  New API lets a client append ``-<channel>`` after the key, which is cut off here as
  New API does) that is enabled (``status`` 1), not expired (``expired_time`` -1 or in
  the future: checked here, because New API only flips ``status`` when the token is next
  used), not deleted (``deleted_at`` NULL), of an enabled, undeleted user.
* ``Authorization: <access_token>`` (with or without ``Bearer ``) and
  ``New-Api-User: <id>``: New API's management credential; the header must name the
  user the access token belongs to. A credential that starts with ``sk-`` is a token
  whatever other headers come with it (New API's access tokens never start so, and
  clients of New API send ``New-Api-User`` with every call).
* ``Authorization: Bearer <MES_API_KEY>``: the operator key, for deployments without New
  API (and for tools): admin of every user's history.

``users.role`` >= 10 is an admin. Lookups, failures included, are cached for
``MES_AUTH_CACHE_SECONDS`` (default 5): in steady state a read costs no extra round trip,
and a revoked token stops working within that window. The cache is two bounded LRUs, one
of credentials found good and one of refused ones, so a flood of made-up credentials
never evicts a user who is let in.

Every credential not in the cache costs a query on New API's database, so a flood of
made-up ones is budgeted: a token bucket per process (``lookups_per_second``, at most
``lookup_burst`` at once) pays for each lookup, and a lookup that lets the caller in
gives its token back. Good credentials therefore never wait for the budget (not even
every user at once after a restart), a credential found good before is re-checked for
free when its entry expires, and refused ones cost at most the budget's queries. Over
the budget, a credential not in the cache gets 429 with ``Retry-After`` and no query:
not 401, which would tell a good token that it is bad.
"""

from __future__ import annotations

import dataclasses
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from sqlalchemy import Engine, column, select, table
from sqlalchemy.exc import DBAPIError

from mes.log import get_logger

__all__ = ["ADMIN_ROLE", "AuthError", "Authenticator", "Principal"]

log = get_logger("mes.api.auth")

ADMIN_ROLE = 10  # New API: common user 1, admin 10, root 100
ENABLED = 1
_MAX_CREDENTIAL = 512
MAX_KNOWN = 50_000  # credentials found good, cached (least recently used evicted first)
MAX_REFUSED = 10_000  # credentials refused, cached
LOOKUPS_PER_SECOND = 20.0  # refused lookups of unknown credentials a process pays for, steady
LOOKUP_BURST = 100  # ... and at once

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
    """The caller is not let in: ``status`` 401 (who are you?), 429 (too many unknown
    credentials to check now: retry shortly) or 503 (cannot check)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


def _strip_bearer(value: str) -> str:
    value = value.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value


def _token_key(credential: str) -> str:
    """A token's ``key`` column: without ``sk-`` and the ``-<channel>`` New API lets follow."""
    return credential.removeprefix("sk-").split("-", 1)[0]


class _LRU:
    """A mapping of at most ``size`` entries; a read marks an entry used, and an insert
    past the bound evicts the least recently used. Not thread-safe: the caller locks."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        self._entries.pop(key, None)


class _Budget:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved. Not thread-safe."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self._stamp = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self._stamp) * self.rate)
        self._stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def give_back(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1)


class Authenticator:
    """Checks credentials against New API's database (``SQL_DSN``) and the operator key.

    Thread-safe: the API calls it from its thread pool."""

    def __init__(
        self,
        engine: Engine | None,
        *,
        api_key: str | None = None,
        cache_seconds: float = 5.0,
        max_known: int = MAX_KNOWN,
        max_refused: int = MAX_REFUSED,
        lookups_per_second: float = LOOKUPS_PER_SECOND,
        lookup_burst: int = LOOKUP_BURST,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.api_key = api_key
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._wall = wall_clock
        # ("token", key, "") or ("access_token", credential, New-Api-User)
        #   -> (expires, Principal) or (expires, the refusal's message)
        self._known = _LRU(max_known)
        self._refused = _LRU(max_refused)
        self._budget = _Budget(lookups_per_second, lookup_burst, clock())
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None, new_api_user: str | None = None) -> Principal:
        """The caller behind these headers.

        Raises:
            AuthError: no or a bad credential (401), too many unknown credentials to check
                now (429), or New API's database is down (503).
        """
        if not authorization or not authorization.strip():
            raise AuthError("missing credentials: send 'Authorization: Bearer sk-...' (a New API token)")
        credential = _strip_bearer(authorization)
        if not credential or len(credential) > _MAX_CREDENTIAL or not credential.isprintable():
            raise AuthError("malformed Authorization header")
        if self.api_key is not None and hmac.compare_digest(credential.encode(), self.api_key.encode()):
            return Principal(user_id=None, is_admin=True, via="operator")
        user_header = (new_api_user or "").strip()
        if credential.startswith("sk-") or not user_header:
            # New-Api-User means nothing to a token, nor do "sk-" and "-<channel>": one
            # entry per token, however many spellings of it a caller makes up
            key = ("token", _token_key(credential), "")
        else:
            key = ("access_token", credential, user_header)
        now = self._clock()
        with self._lock:
            known = self._known.get(key)
            hit = known or self._refused.get(key)
            if hit is not None and hit[0] > now:
                if isinstance(hit[1], Principal):
                    return hit[1]
                raise AuthError(hit[1])  # a new exception: a cached one would grow its traceback
            # A credential found good before is re-checked for free; any other pays.
            if known is None and not self._budget.take(now):
                raise AuthError("too many unknown credentials to check right now: retry in a second", 429)
        try:
            outcome: Principal | AuthError = self._lookup(key[0], credential, key[2])
        except AuthError as exc:
            if exc.status != 401:
                raise  # never cache "could not check"
            outcome = exc
        with self._lock:
            if isinstance(outcome, Principal):
                if known is None:
                    self._budget.give_back()  # letting a user in costs the budget nothing
                self._refused.pop(key)
                self._known.put(key, (now + self.cache_seconds, outcome))
            else:
                self._known.pop(key)
                self._refused.put(key, (now + self.cache_seconds, str(outcome)))
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
        key = _token_key(credential)
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
