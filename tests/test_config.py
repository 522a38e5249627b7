"""Configuration from the environment: DSNs as New API writes them, fallbacks, pools, TZ,
and one-line errors that never print a password. Pure unit tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mes.config.dsn import parse_dsn
from mes.config.settings import DatabaseSettings, QueueSettings, Settings
from mes.errors import ConfigError
from mes.storage.engine import sqlalchemy_url

SECRET = "s3cr@t:/?pw"


def dsn(value: str):
    return parse_dsn(value, variable="MES_SQL_DSN", data_dir="/data")


@pytest.mark.parametrize(
    ("value", "user", "password", "host", "port", "db"),
    [
        ("root:123456@tcp(localhost:3306)/oneapi_messages", "root", "123456", "localhost", 3306, "oneapi_messages"),
        ("root:123456@tcp(mysql:3306)/new-api-mes?charset=utf8mb4&parseTime=True&loc=Local", "root", "123456", "mysql", 3306, "new-api-mes"),
        (f"u:{SECRET}@tcp(db.example:3307)/x", "u", SECRET, "db.example", 3307, "x"),
        ("u:p@w@rd@tcp([::1]:3306)/x", "u", "p@w@rd", "::1", 3306, "x"),
        ("u@tcp(h)/x", "u", None, "h", 3306, "x"),
        ("u:p@/x", "u", "p", "127.0.0.1", 3306, "x"),
    ],
)  # fmt: skip
def test_go_mysql_dsns(value, user, password, host, port, db):
    cfg = dsn(value)
    assert (cfg.backend, cfg.user, cfg.password, cfg.host, cfg.port, cfg.database) == (
        "mysql", user, password, host, port, db)  # fmt: skip


def test_go_unix_socket_and_params():
    cfg = dsn("u:p@unix(/run/mysqld/mysqld.sock)/mes?timeout=5s&readTimeout=1m&tls=skip-verify&collation=x")
    assert cfg.unix_socket == "/run/mysqld/mysqld.sock" and cfg.host is None
    opts = dict(cfg.options)
    assert (
        opts["connect_timeout"] == "5" and opts["read_timeout"] == "60" and opts["ssl_mode"] == "skip-verify"
    )
    assert "collation" in cfg.ignored_params
    for ignored in ("charset", "parseTime", "loc"):
        assert ignored in dsn(f"u:p@tcp(h:1)/d?{ignored}=x").ignored_params


@pytest.mark.parametrize(
    ("value", "backend", "user", "password", "host", "port", "db"),
    [
        ("postgres://user:password@localhost:5432/oneapi_messages", "postgresql", "user", "password", "localhost", 5432, "oneapi_messages"),
        ("postgresql://u@db/m", "postgresql", "u", None, "db", 5432, "m"),
        ("postgresql://u:p%40ss@db:6543/m?sslmode=require", "postgresql", "u", "p@ss", "db", 6543, "m"),
        ("mysql+pymysql://u:p@h:3306/m", "mysql", "u", "p", "h", 3306, "m"),
        ("postgresql+psycopg2://u:p@h/m", "postgresql", "u", "p", "h", 5432, "m"),
    ],
)  # fmt: skip
def test_urls(value, backend, user, password, host, port, db):
    cfg = dsn(value)
    assert (cfg.backend, cfg.user, cfg.password, cfg.host, cfg.port, cfg.database) == (
        backend, user, password, host, port, db)  # fmt: skip


def test_local_and_sqlite_paths():
    assert dsn("local").database == "/data/mes.db" and dsn("local").backend == "sqlite"
    assert dsn("sqlite:////abs/m.db").database == "/abs/m.db"
    assert dsn("sqlite:///rel.db").database == "/data/rel.db"


def test_postgres_socket_via_host_parameter():
    cfg = dsn("postgresql://u@/m?host=/var/run/postgresql")
    assert cfg.unix_socket == "/var/run/postgresql" and cfg.host is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (f"u:{SECRET}@tcp(h:99999)/d", "port"),
        (f"u:{SECRET}@tcp(h:3306/d", "')'"),
        (f"u:{SECRET}@tcp(h:3306)/", "database"),
        (f"u:{SECRET}@udp(h:1)/d", "network"),
        (f"u:{SECRET}@tcp(h:1)/d?timeout=soon", "Go duration"),
        (f"oracle://u:{SECRET}@h/d", "scheme"),
        ("sqlite://:memory:", "file path"),
        ("nonsense", "not a DSN"),
        ("   ", "empty"),
    ],
)
def test_malformed_values_name_the_variable_in_one_line_without_the_password(value, words):
    with pytest.raises(ConfigError) as caught:
        dsn(value)
    message = str(caught.value)
    assert message.startswith("MES_SQL_DSN") and words in message
    assert "\n" not in message and SECRET not in message and "3cr" not in message


def test_fallback_mes_sql_dsn_then_sql_dsn_then_local():
    both = DatabaseSettings.from_env({"MES_SQL_DSN": "u:p@tcp(a:1)/mes", "SQL_DSN": "u:p@tcp(b:1)/newapi"})
    assert (both.db.host, both.source) == ("a", "MES_SQL_DSN")
    only_main = DatabaseSettings.from_env({"SQL_DSN": "u:p@tcp(b:1)/newapi"})
    assert (only_main.db.host, only_main.source) == ("b", "SQL_DSN")
    neither = DatabaseSettings.from_env({"MES_DATA_DIR": "/srv/mes"})
    assert neither.db.backend == "sqlite" and neither.db.database == "/srv/mes/mes.db"
    settings = Settings.from_env({"SQL_DSN": "u:p@tcp(b:1)/newapi"})
    assert settings.main_db is not None and settings.main_db.database == "newapi"


def test_pool_variables_and_timezone():
    s = DatabaseSettings.from_env({"SQL_MAX_IDLE_CONNS": "7", "SQL_MAX_OPEN_CONNS": "20", "SQL_MAX_LIFETIME": "30",
                                   "TZ": "Asia/Shanghai", "MES_DAILY_PARTITION": "true"})  # fmt: skip
    assert (s.max_idle_conns, s.max_open_conns, s.max_lifetime, str(s.timezone), s.daily_partition) == (
        7, 20, 30, "Asia/Shanghai", True)  # fmt: skip
    assert (
        DatabaseSettings.from_env({"SQL_MAX_IDLE_CONNS": "50", "SQL_MAX_OPEN_CONNS": "10"}).max_idle_conns
        == 10
    )
    assert str(DatabaseSettings.from_env({}).timezone) == "UTC"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SQL_MAX_IDLE_CONNS": "many"}, "SQL_MAX_IDLE_CONNS"),
        ({"SQL_MAX_OPEN_CONNS": "0"}, "SQL_MAX_OPEN_CONNS"),
        ({"SQL_MAX_LIFETIME": "-1"}, "SQL_MAX_LIFETIME"),
        ({"TZ": "Mars/Olympus"}, "TZ"),
        ({"MES_DAILY_PARTITION": "sometimes"}, "MES_DAILY_PARTITION"),
        ({"REDIS_CONN_STRING": "http://x"}, "REDIS_CONN_STRING"),
        ({"MES_RETRY_INTERVALS": "2,soon"}, "MES_RETRY_INTERVALS"),
        ({"MES_API_KEY": "short"}, "MES_API_KEY"),
        ({"MES_QUEUE": "a b"}, "MES_QUEUE"),
    ],
)
def test_bad_settings_name_their_variable(env, name):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


def test_sqlalchemy_url_carries_the_password_exactly():
    url = sqlalchemy_url(dsn(f"u:{SECRET}@tcp(h:3306)/d"))
    assert url.password == SECRET and url.drivername == "mysql+pymysql" and url.database == "d"
    assert SECRET not in repr(dsn(f"u:{SECRET}@tcp(h:3306)/d"))
    assert SECRET not in dsn(f"u:{SECRET}@tcp(h:3306)/d").describe()


def test_queue_defaults():
    q = QueueSettings.from_env({})
    assert q.redis_url is None and q.queue_name == "mes" and q.retry_intervals[0] == 2


def test_a_bad_dsn_stops_the_cli_with_one_line_and_no_traceback(tmp_path):
    env = {**os.environ, "MES_SQL_DSN": f"root:{SECRET}@tcp(db:notaport)/mes", "MES_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "mes", "init-db"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "MES_SQL_DSN" in lines[0] and "port" in lines[0]
    assert SECRET not in done.stderr and "Traceback" not in done.stderr
