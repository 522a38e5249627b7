"""No error from reading a DSN (or the Redis URL) shows the password or any piece of it,
however the value is malformed and whatever the password holds (fuzzed with hypothesis),
and the message still names the variable and what is wrong. Pure unit tests."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mes.config.dsn import parse_dsn
from mes.config.settings import DatabaseSettings, ProducerSettings, Settings
from mes.errors import ConfigError
from mes.producer.transport import connect_redis

SPECIALS = "@:/?#()"
# Whatever a password manager puts in a password: letters, digits, punctuation, non-ASCII.
OTHERS = st.characters(blacklist_categories=("Cs", "Cc"))
PASSWORDS = (
    st.lists(st.sampled_from(SPECIALS) | st.text(OTHERS, min_size=1, max_size=4), min_size=2, max_size=8)
    .map("".join)
    .filter(lambda pw: len(pw.strip()) >= 3)
)

# Malformed on purpose, the password where a password goes. A password holding '/', '@'
# or '?' moves where the parser thinks the parts end: that is what leaked.
GO_SHAPES = [
    "u:{pw}@tcp(127.0.0.1:3306)",  # no /db
    "u:{pw}@tcp(127.0.0.1:3306)/",  # no database name
    "u:{pw}@tcp(127.0.0.1:3306)mes",  # no '/' before it
    "u:{pw}@udp(127.0.0.1:3306)/mes",  # bad network
    "u:{pw}@tcp/mes",
    "u:{pw}@tcp(127.0.0.1:99999)/mes",  # port out of range
    "u:{pw}@tcp(127.0.0.1:port)/mes",  # port not a number
    "u:{pw}@tcp(127.0.0.1:3306/mes",  # no ')'
    "u:{pw}@tcp([::1:3306)/mes",  # IPv6 without ']'
    "u:{pw}@tcp([::1]3306)/mes",
    "u:{pw}@unix(/run/mysqld/mysqld.sock/mes",
    "u:{pw}@tcp(127.0.0.1:3306)/mes?timeout=soon",  # bad parameter
    "u:{pw}@tcp(127.0.0.1:3306)/mes?readTimeout=",
    ":{pw}@tcp(127.0.0.1:3306)",  # no user either
    "u:{pw}",
    "u:{pw}@",
]
URL_SHAPES = [
    "postgres://u:{pw}@db.example:notaport/mes",
    "postgresql://u:{pw}@db.example:99999/mes",
    "postgresql://u:{pw}@db.example",  # no database
    "postgresql://u:{pw}@db.example/",
    "postgresql://u:{pw}@[::1/mes",
    "postgresql://u:{pw}@[::1]x/mes",
    "postgres://u:{pw}",
    "mysql://u:{pw}@h:0/mes",
    "mysql+pymysql://u:{pw}@h:port/mes?charset=utf8mb4",
    "mariadb://u:{pw}@h:3306",
    "oracle://u:{pw}@h/mes",  # unknown scheme
    "postgresql+asyncpg://u:{pw}@h/mes",
    "sqlite://u:{pw}@h/mes.db",  # SQLite has no credentials
]
REDIS_SHAPES = [
    "redis://:{pw}@127.0.0.1:6379/0",
    "redis://u:{pw}@127.0.0.1:port/0",
    "redis://:{pw}@[::1/0",
    "rediss://:{pw}@h",
    "redis//:{pw}@h:6379",  # no scheme
    "http://:{pw}@h:6379",
]

NEUTRAL = "ЖЖЖЖЖЖ"  # a password of a letter the messages never hold
# What the messages say in their own words, for one value of each kind: a piece of a
# fuzzed password that is also a piece of these ("port", "the", "://") is not a leak.
CANONICAL = [*(s.format(pw=NEUTRAL) for s in GO_SHAPES + URL_SHAPES), "nonsense", "   ",
             "u:a/b@tcp(h)", "postgresql://u:a@b/c@h", "sqlite://:memory:", "sqlite://"]  # fmt: skip


def _error_texts(exc: BaseException) -> list[str]:
    """The exception's str and repr, and those of every cause and context chained to it."""
    texts: list[str] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        texts += [str(e), repr(e)]
        stack += [e.__cause__, e.__context__]
    return texts


class Outcome:
    """What a call shows: its error's texts, or the repr of what it returned and the
    ``describe()`` of every database in it (which logs and later errors print)."""

    def __init__(self, parse: Any) -> None:
        self.error: BaseException | None = None
        self.texts: list[str] = []
        # When it parsed: what it took for each password, and the fields shown next to it.
        self.passwords: list[tuple[str, str]] = []
        try:
            result = parse()
        except Exception as exc:  # every exception is checked, not only ConfigError
            self.error, self.texts = exc, _error_texts(exc)
            return
        self.texts = [repr(result)]
        dbs = [result, getattr(result, "db", None), getattr(result, "main_db", None)]
        if isinstance(result, Settings):
            dbs.append(result.database.db)
        for db in dbs:
            if hasattr(db, "describe"):
                self.texts += [repr(db), db.describe()]
                shown = (db.user, db.host, db.port, db.database, db.unix_socket, db.ignored_params)
                self.passwords += [(db.password, " ".join(map(str, shown)))] if db.password else []

    def check(self, password: str) -> None:
        """An error shows no piece of ``password``. A value that parses is a DSN, though
        maybe not the one meant ('postgres://u:x@db/x' with the password 'x@db/x' is
        one, with the password 'x'): then what it shows holds no piece of *its* password
        (but for a piece that is also its user, host or database: 'u::::@/:::')."""
        if self.error is not None:
            assert not leaked(password, self.texts), (leaked(password, self.texts), self.texts)
            assert isinstance(self.error, ConfigError), self.texts  # never a ValueError from deep inside
            message = str(self.error)
            assert message.startswith(("MES_SQL_DSN", "SQL_DSN", "REDIS_CONN_STRING")) and "\n" not in message
        for parsed, fields in self.passwords:
            shown = [p for p in leaked(parsed, self.texts) if p not in fields]
            assert not shown, (parsed, shown, self.texts)


def _known() -> str:
    texts = []
    for value in CANONICAL:
        texts += Outcome(lambda value=value: parse_dsn(value, variable="MES_SQL_DSN", data_dir="/data")).texts
    for shape in REDIS_SHAPES:
        url = shape.format(pw=NEUTRAL)
        texts += Outcome(lambda url=url: ProducerSettings.from_env({"REDIS_CONN_STRING": url})).texts
    return "\n".join(texts)


KNOWN = _known()


def test_the_canonical_values_leak_nothing_either():
    assert NEUTRAL[:3] not in KNOWN, KNOWN


def leaked(password: str, texts: list[str]) -> list[str]:
    """Pieces of ``password`` of 3 characters or more (so itself too) found in ``texts``."""
    n = len(password)
    pieces = {password[i:j] for i in range(n) for j in range(i + 3, n + 1)}
    return sorted(p for p in pieces if p not in KNOWN and any(p in t for t in texts))


def test_the_reported_dsn_names_no_piece_of_its_password():
    """Issue 16: this printed "network 'ss:w' is not supported"."""
    outcome = Outcome(
        lambda: parse_dsn("mes:p@ss:w/rd?#1@tcp(127.0.0.1:3306)", variable="MES_SQL_DSN", data_dir="/d")
    )
    outcome.check("p@ss:w/rd?#1")
    assert outcome.error is not None and "/dbname" in str(outcome.error)


@settings(max_examples=400, deadline=None)
@given(shape=st.sampled_from(GO_SHAPES + URL_SHAPES), password=PASSWORDS)
def test_a_malformed_dsn_error_holds_no_piece_of_the_password(shape, password):
    value = shape.format(pw=password)
    Outcome(lambda: parse_dsn(value, variable="MES_SQL_DSN", data_dir="/data")).check(password)


@pytest.mark.parametrize("special", SPECIALS)
@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from(GO_SHAPES + URL_SHAPES), before=PASSWORDS, after=PASSWORDS)
def test_each_special_character_in_a_password_leaks_nothing(special, shape, before, after):
    password = before + special + after
    value = shape.format(pw=password)
    Outcome(lambda: parse_dsn(value, variable="MES_SQL_DSN", data_dir="/data")).check(password)


@settings(max_examples=200, deadline=None)
@given(shape=st.sampled_from(GO_SHAPES + URL_SHAPES), password=PASSWORDS)
def test_settings_that_read_a_dsn_leak_nothing(shape, password):
    value = shape.format(pw=password)
    for env in ({"MES_SQL_DSN": value}, {"SQL_DSN": value}):
        Outcome(lambda env=env: DatabaseSettings.from_env(env)).check(password)
        Outcome(lambda env=env: Settings.from_env(env)).check(password)


@settings(max_examples=200, deadline=None)
@given(shape=st.sampled_from(REDIS_SHAPES), password=PASSWORDS)
@example(shape="redis://:{pw}@127.0.0.1:6379/0", password="abcdef/ghi")
def test_a_malformed_redis_url_leaks_nothing_at_settings_or_at_connect(shape, password):
    """Settings accept it, or refuse it in fixed words; what they accept, redis-py takes
    without an error quoting it (its "Port could not be cast ... as 'abcdef'")."""
    url = shape.format(pw=password)
    outcome = Outcome(lambda: ProducerSettings.from_env({"REDIS_CONN_STRING": url}))
    outcome.check(password)
    if outcome.error is None:
        assert not leaked(password, outcome.texts), outcome.texts  # the URL is in no repr
        connected = Outcome(lambda: connect_redis(url).close())
        assert not leaked(password, connected.texts), connected.texts


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("mes:p@ss:w/rd?#1@tcp(127.0.0.1:3306)", "'@' after the last '/'"),
        ("u:pw@udp(h:1)/d", "unsupported network in a Go-style DSN; expected tcp(host:port) or unix(path)"),
        ("u:pw@tcp(h:port)/d", "the port is not a number between 1 and 65535"),
        ("u:pw@tcp(h:²)/d", "the port is not a number"),  # isdigit() said yes, int() said no
        ("u:pw@tcp([::1)/d", "IPv6 address is missing its closing ']'"),
        ("u:pw@tcp(h:1)/d?timeout=soon", "timeout is not a Go duration"),
        ("postgresql://u:a@b/c@h", "'@' after the host"),
        ("sqlite://u:pw@h/x.db", "no host"),
    ],
)
def test_messages_say_what_is_wrong_without_quoting_the_value(value, words):
    with pytest.raises(ConfigError) as caught:
        parse_dsn(value, variable="MES_SQL_DSN", data_dir="/data")
    assert str(caught.value).startswith("MES_SQL_DSN: ") and words in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_a_password_holding_scheme_slashes_is_still_a_go_dsn():
    """'u:a://b@tcp(h)/d' is a Go DSN whose password is a://b, not a URL of scheme 'u:a'."""
    cfg = parse_dsn("u:a://b@tcp(h:3306)/d", variable="MES_SQL_DSN", data_dir="/data")
    assert (cfg.user, cfg.password, cfg.host, cfg.database) == ("u", "a://b", "h", "d")


def test_a_libpq_password_parameter_is_the_password_and_in_no_repr():
    cfg = parse_dsn("postgresql://u@h/d?password=hunter2xyz&sslmode=require", variable="V", data_dir="/d")
    assert cfg.password == "hunter2xyz" and dict(cfg.options) == {"sslmode": "require"}
    assert "hunter2" not in repr(cfg) and "hunter2" not in cfg.describe()


def test_the_cli_prints_no_piece_of_the_password(tmp_path):
    env = {**os.environ, "MES_SQL_DSN": "mes:p@ss:w/rd?#1@tcp(127.0.0.1:3306)", "MES_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "mes", "init-db"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "MES_SQL_DSN" in done.stderr
    assert not leaked("p@ss:w/rd?#1", [done.stderr, done.stdout]), done.stderr
