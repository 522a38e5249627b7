"""Parse the database DSNs New API operators already have.

Accepted forms, as the seed documents them:

* Go MySQL DSN, as go-sql-driver/mysql reads it:
  ``user:pass@tcp(host:port)/db?charset=utf8mb4&parseTime=True&loc=Local`` or
  ``user:pass@unix(/run/mysqld/mysqld.sock)/db``. Parsed with the driver's own rules
  (last ``/`` starts the database name, last ``@`` before it ends the credentials, first
  ``:`` splits user and password), so passwords may contain ``@ : / ?``.
* ``postgres://`` / ``postgresql://`` URLs.
* ``local``: SQLite in the data folder.
* Any SQLAlchemy URL (``mysql+pymysql://``, ``postgresql+psycopg2://``, ``sqlite:///path``).

The result is a :class:`DatabaseConfig`, a plain value with no SQLAlchemy in it (the
producer imports this module's package and must stay light). Errors are ``ConfigError``
naming the variable and what is wrong; the password never appears in a message or a
``repr``.

Why no message quotes any part of the value: in a malformed DSN the parser cannot know
where the password ends (``u:p@ss:w/rd?#1@tcp(h:3306)`` has no ``/db``, so the last ``/``
falls inside the password and "network ``ss:w``" is half of it). So messages say what is
wrong in fixed words; the one piece quoted is a URL's scheme, which the value starts
with (letters, digits, ``+ - .``, then ``://``): a password always follows a ``:``,
which a scheme cannot hold. For the same reason an ``@`` after the part where the
credentials end (the database name and parameters) is refused: the real separator would
be there, and what the parser took for a host or a database would be the password.
"""

from __future__ import annotations

import dataclasses
import os
import re
from urllib.parse import parse_qsl, unquote, urlsplit

from mes.errors import ConfigError

__all__ = ["DatabaseConfig", "parse_dsn"]

# Go DSN parameters and what they become for PyMySQL. Everything else Go accepts is
# either meaningless here (parseTime, loc: MES stores unix timestamps, never DATETIME)
# or a session variable; those are ignored and reported in ``ignored_params``.
_GO_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_HOST = re.compile(r"[\w.%-]+")  # names (IDN too), IPv4, libpq's %2F-encoded socket folder
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+(%[\w.-]+)?")  # with a zone: fe80::1%eth0
_PORT = re.compile(r"[0-9]{1,5}")  # ASCII only: str.isdigit() accepts '²', which int() refuses
# A URL starts with its scheme (RFC 3986: a letter, then letters, digits, + - .) and '://'.
# Anything else is a Go DSN, even with '://' inside: 'u:a://b@tcp(h)/d' has the password a://b.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_PERCENT_AT = "percent-encode an '@' in a password as %40"
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What a DSN's syntax says of its backend (the rest is ``mes.storage.backends``')."""

    backend: str  # DatabaseConfig.backend
    file: bool = False  # a path, no server, no credentials
    default_port: int = 0


_MYSQL = _Kind("mysql", default_port=3306)
_POSTGRESQL = _Kind("postgresql", default_port=5432)
_SQLITE = _Kind("sqlite", file=True)
_KINDS = {k.backend: k for k in (_MYSQL, _POSTGRESQL, _SQLITE)}


@dataclasses.dataclass(frozen=True)
class DatabaseConfig:
    """Where a database lives. ``backend`` is ``mysql``, ``postgresql`` or ``sqlite``."""

    backend: str
    database: str
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    unix_socket: str | None = None
    # Driver options (connect_timeout, ssl, sslmode, ...), already mapped for the driver.
    # Not in the repr: a URL's query may carry secrets (libpq's sslpassword).
    options: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    ignored_params: tuple[str, ...] = ()

    def describe(self) -> str:
        """A one-line description safe to print: no password."""
        if _KINDS[self.backend].file:
            return f"{self.backend}:{self.database}"
        where = self.unix_socket or f"{self.host}:{self.port}"
        user = f"{self.user}@" if self.user else ""
        return f"{self.backend}://{user}{where}/{self.database}"


def parse_dsn(value: str, *, variable: str, data_dir: str) -> DatabaseConfig:
    """Parse ``value`` (read from environment variable ``variable``).

    Raises:
        ConfigError: one line naming ``variable`` and what is wrong with it.
    """
    text = value.strip()
    if not text:
        raise ConfigError(f"{variable} is empty")
    if text == "local":
        return DatabaseConfig(backend=_SQLITE.backend, database=os.path.join(data_dir, "mes.db"))
    if _URL.match(text):
        return _parse_url(text, variable=variable, data_dir=data_dir)
    return _parse_go_mysql(text, variable=variable)


def _parse_go_mysql(dsn: str, *, variable: str) -> DatabaseConfig:
    slash = dsn.rfind("/")
    if slash < 0:
        raise ConfigError(
            f"{variable} is not a DSN MES understands: expected a Go-style DSN "
            "user:pass@tcp(host:port)/db, a postgres or postgresql URL, a SQLAlchemy URL or 'local'"
        )
    left, right = dsn[:slash], dsn[slash + 1 :]
    if "@" in right:
        # The credentials end at the last '@' before the last '/': one after it means the
        # '/' was the password's, and what follows would be read as a database (or params).
        raise ConfigError(
            f"{variable}: an '@' after the last '/' of a Go-style DSN: is the /dbname part missing? "
            "(expected user:pass@tcp(host:port)/db)"
        )
    user = password = None
    at = left.rfind("@")
    if at >= 0:
        creds, netpart = left[:at], left[at + 1 :]
        colon = creds.find(":")
        if colon >= 0:
            user, password = creds[:colon], creds[colon + 1 :]
        else:
            user = creds
    else:
        netpart = left
    net, addr = netpart, ""
    paren = netpart.find("(")
    if paren >= 0:
        if not netpart.endswith(")"):
            raise ConfigError(
                f"{variable}: the address in a Go-style DSN is missing its closing ')'; "
                "expected tcp(host:port) or unix(path)"
            )
        net, addr = netpart[:paren], netpart[paren + 1 : -1]
    net = net or "tcp"
    qmark = right.find("?")
    database, query = (right[:qmark], right[qmark + 1 :]) if qmark >= 0 else (right, "")
    if not database:
        raise ConfigError(f"{variable}: no database name after the last '/' of a Go-style DSN")
    host = port = sock = None
    if net == "unix":
        sock = addr or "/tmp/mysql.sock"
    elif net in ("tcp", "tcp6"):
        host, port = _split_host_port(addr or "127.0.0.1:3306", default_port=3306, variable=variable)
    else:
        raise ConfigError(
            f"{variable}: unsupported network in a Go-style DSN; expected tcp(host:port) or unix(path)"
        )
    options, ignored = _map_go_params(query, variable=variable)
    return DatabaseConfig(
        backend=_MYSQL.backend,
        database=database,
        user=user or None,
        password=password,
        host=host,
        port=port,
        unix_socket=sock,
        options=options,
        ignored_params=ignored,
    )


def _split_host_port(addr: str, *, default_port: int, variable: str) -> tuple[str, int]:
    host, port = _host_port(addr, default_port=default_port, variable=variable)
    # A host holding what no host name holds ('(', ':', '?', ...) is a piece of a
    # password that a malformed value moved here: say so, never connect to it.
    if not (_IPV6.fullmatch(host) if ":" in host else _HOST.fullmatch(host)):
        raise ConfigError(f"{variable}: the host is not a host name or an IP address")
    return host, port


def _host_port(addr: str, *, default_port: int, variable: str) -> tuple[str, int]:
    if addr.startswith("["):  # [::1]:3306
        end = addr.find("]")
        if end < 0:
            raise ConfigError(f"{variable}: an IPv6 address is missing its closing ']'")
        host, rest = addr[1:end], addr[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{variable}: expected ':port' or nothing after an IPv6 address's ']'")
        port_text = rest[1:]
    elif addr.count(":") == 1:
        host, port_text = addr.split(":")
    else:
        host, port_text = addr, ""
    if not port_text:
        return host or "127.0.0.1", default_port
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{variable}: the port is not a number between 1 and 65535")
    return host or "127.0.0.1", int(port_text)


def _map_go_params(query: str, *, variable: str) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    options: list[tuple[str, str]] = []
    ignored: list[str] = []
    for pair in filter(None, query.split("&")):
        key, _, raw = pair.partition("=")
        val = unquote(raw)
        if key in ("timeout", "readTimeout", "writeTimeout"):
            target = {
                "timeout": "connect_timeout",
                "readTimeout": "read_timeout",
                "writeTimeout": "write_timeout",
            }
            options.append((target[key], str(_go_duration(val, key=key, variable=variable))))
        elif key == "tls":
            if val in ("true", "skip-verify", "preferred"):
                options.append(("ssl_mode", val))
            elif val != "false":
                ignored.append(key)
        else:  # parseTime, loc, collation, charset (always utf8mb4), session variables, ...
            ignored.append(key)
    return tuple(options), tuple(ignored)


def _go_duration(value: str, *, key: str, variable: str) -> int:
    match = _GO_DURATION.match(value)
    if not match:
        # ``key`` is one of three fixed names; the value is not quoted (see the module docstring).
        raise ConfigError(f"{variable}: {key} is not a Go duration such as 5s or 500ms")
    seconds = float(match.group(1)) * _DURATION_SCALE[match.group(2)]
    return max(1, round(seconds))


_URL_BACKENDS = {
    "mysql": _MYSQL,
    "mariadb": _MYSQL,
    "mysql+pymysql": _MYSQL,
    "mariadb+pymysql": _MYSQL,
    "postgres": _POSTGRESQL,
    "postgresql": _POSTGRESQL,
    "postgresql+psycopg2": _POSTGRESQL,
    "sqlite": _SQLITE,
    "sqlite+pysqlite": _SQLITE,
}


def _parse_url(url: str, *, variable: str, data_dir: str) -> DatabaseConfig:
    scheme, _, rest = url.partition("://")
    kind = _URL_BACKENDS.get(scheme.lower())
    if kind is None:
        known = ", ".join(sorted({s.split("+")[0] for s in _URL_BACKENDS}))
        # Safe to quote: the value starts with it (see _URL), and a password only ever
        # follows a ':', which a scheme cannot hold.
        raise ConfigError(f"{variable}: scheme '{scheme}' is not supported (use one of {known})")
    if kind.file:
        if rest and not rest.startswith("/"):  # sqlite://host/...: SQLite has no host or credentials
            raise ConfigError(
                f"{variable}: SQLite needs a file path and no host: sqlite:///relative.db or sqlite:////abs/mes.db"
            )
        path = rest[1:]
        if not path or path == ":memory:":
            raise ConfigError(
                f"{variable}: SQLite needs a file path (sqlite:///path/to/mes.db); ':memory:' is per connection"
            )
        return DatabaseConfig(
            backend=kind.backend, database=path if os.path.isabs(path) else os.path.join(data_dir, path)
        )
    # The netloc may hold a password with '@', '/' or '?': split on the last '@' before the path.
    path_start = _path_start(rest)
    netloc, tail = rest[:path_start], rest[path_start:]
    at = netloc.rfind("@")
    creds, hostport = (netloc[:at], netloc[at + 1 :]) if at >= 0 else ("", netloc)
    user, _, password = creds.partition(":")
    if "@" in tail:
        # The last '@' followed by a '/' ended the credentials: one in the path or the
        # query means that '/' was the password's (postgres://u:a@b/c@host with no /db).
        raise ConfigError(f"{variable}: an '@' after the host in the URL: is the /dbname part missing? "
                          f"({_PERCENT_AT})")  # fmt: skip
    parts = urlsplit("x://h" + tail)
    database = unquote(parts.path.lstrip("/"))
    query = dict(parse_qsl(parts.query))
    # libpq's ?password=: kept where a password belongs (out of options, and of any repr).
    query_password = query.pop("password", None)
    # A socket: PyMySQL's ``?unix_socket=/path``, or libpq's ``?host=/socket/dir`` with no host.
    sock = query.pop("unix_socket", None)
    if not hostport and query.get("host", "").startswith("/"):
        sock = query.pop("host")
    if sock and not hostport:
        host, port = None, None
    else:
        host, port = _split_host_port(hostport, default_port=kind.default_port, variable=variable)
    if not database:
        raise ConfigError(f"{variable}: no database name in the URL path")
    return DatabaseConfig(
        backend=kind.backend,
        database=database,
        user=unquote(user) or None,
        password=unquote(password) if password else query_password or None,
        host=host,
        port=port,
        unix_socket=sock,
        options=tuple(sorted(query.items())),
    )


def _path_start(rest: str) -> int:
    """Index where the URL path starts: the first '/' after the last '@' (or after the host)."""
    at = rest.rfind("@", 0, _first_slash_after_host(rest))
    slash = rest.find("/", at + 1)
    return slash if slash >= 0 else len(rest)


def _first_slash_after_host(rest: str) -> int:
    # The host part never contains '/', so the last '@' that is followed by a host and a
    # '/' marks the end of the credentials. Scan for '@' candidates from the right.
    for i in range(len(rest) - 1, -1, -1):
        if rest[i] == "@" and "/" in rest[i + 1 :]:
            return i + 1
    return len(rest)
