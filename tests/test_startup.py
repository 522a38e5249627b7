"""Start-up problems, as a user meets them: real `mes` subprocesses against a real MariaDB,
PostgreSQL and Redis (or a closed port). Each problem is one line naming what failed and
how to fix it, no traceback, no password, a non-zero exit, and nothing claiming to run."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import text

from mes.embedded import free_port

from .conftest import DSN_TEMPLATES, TEST_DB, _check, _server_engine, missing, reset_database

SECRET = "s3cret-Pw-5741"


def mes(env: dict[str, str], *args: str, cwd: Any = None) -> tuple[int, list[str]]:
    """Run `mes` with only ``env`` configured; its exit code and its non-empty output lines."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MES_", "SQL_", "REDIS_"))}
    full.update(env)
    done = subprocess.run([sys.executable, "-m", "mes", *args], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return done.returncode, lines


def assert_one_line(code: int, lines: list[str], *names: str) -> None:
    assert code != 0, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and SECRET not in lines[0], lines
    for name in names:
        assert name in lines[0], lines


def needs(backend: str) -> None:
    reason = _check(backend)
    if reason:
        missing(backend, reason)


def wrong_password_dsn() -> str:
    needs("mysql")
    return f"root:{SECRET}@tcp(127.0.0.1:3306)/{TEST_DB}"


def closed_port_dsn(backend: str) -> str:
    port = free_port()
    if backend == "mysql":
        return f"root:{SECRET}@tcp(127.0.0.1:{port})/{TEST_DB}"
    return f"postgres://postgres:{SECRET}@127.0.0.1:{port}/{TEST_DB}"


DATABASE_PROBLEMS = {
    "mysql-wrong-password": wrong_password_dsn,
    "mysql-closed-port": lambda: closed_port_dsn("mysql"),
    "postgresql-closed-port": lambda: closed_port_dsn("postgresql"),
}


@pytest.mark.parametrize("problem", sorted(DATABASE_PROBLEMS))
def test_serve_with_a_database_it_cannot_use_says_so_in_one_line(problem, tmp_path):
    env = {"MES_SQL_DSN": DATABASE_PROBLEMS[problem](), "MES_DATA_DIR": str(tmp_path / "data"),
           "MES_API_KEY": "k" * 20, "MES_API_PORT": str(free_port())}  # fmt: skip
    code, lines = mes(env, "serve")
    assert_one_line(code, lines, "MES_SQL_DSN")
    assert "API on" not in lines[0]
    assert ("password" if "password" in problem else "start the database server") in lines[0]


@pytest.mark.parametrize("problem", ["mysql-wrong-password", "postgresql-closed-port"])
def test_worker_and_migrate_with_a_database_they_cannot_use(problem, redis_server, tmp_path):
    env = {"MES_SQL_DSN": DATABASE_PROBLEMS[problem](), "MES_DATA_DIR": str(tmp_path / "data"),
           "REDIS_CONN_STRING": redis_server.url}  # fmt: skip
    for command in (["worker"], ["worker", "-p", "2"], ["migrate"], ["stats"]):
        code, lines = mes(env, *command)
        assert_one_line(code, lines, "MES_SQL_DSN")


def unreachable_redis(tmp_path: Any) -> dict[str, str]:
    return {"MES_SQL_DSN": "local", "MES_DATA_DIR": str(tmp_path / "data"),
            "REDIS_CONN_STRING": f"redis://:{SECRET}@127.0.0.1:{free_port()}/0",
            "MES_API_PORT": str(free_port())}  # fmt: skip


@pytest.mark.parametrize("command", [["worker"], ["worker", "-p", "2"], ["up"], ["replay", "failed"]])
def test_unreachable_redis_is_one_line(command, tmp_path):
    env = unreachable_redis(tmp_path)
    address = env["REDIS_CONN_STRING"].split("@")[1].split("/")[0]
    code, lines = mes(env, *command, cwd=tmp_path)
    assert_one_line(code, lines, "Redis", address)
    assert "MES is up" not in lines[0]


def test_up_with_the_api_port_taken_does_not_claim_to_be_up(redis_server, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = {**unreachable_redis(tmp_path), "REDIS_CONN_STRING": redis_server.url, "MES_API_PORT": port}
        code, lines = mes(env, "up", cwd=tmp_path)
    assert_one_line(code, lines, "MES_API_PORT", port)
    assert "MES is up" not in lines[0]


def _exists(backend: str, name: str) -> bool:
    engine = _server_engine(backend)
    query = (
        "SELECT 1 FROM information_schema.schemata WHERE schema_name = :n"
        if backend == "mysql"
        else "SELECT 1 FROM pg_database WHERE datname = :n"
    )
    with engine.connect() as conn:
        found = conn.execute(text(query), {"n": name}).first() is not None
    engine.dispose()
    return found


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"])
def test_doctor_creates_no_database(backend, tmp_path):
    """Checking is not fixing: doctor says the database does not exist yet and leaves it so."""
    name = f"{TEST_DB}_absent"
    if backend == "sqlite":
        dsn = f"sqlite:///{tmp_path / 'db' / 'mes.db'}"
    else:
        needs(backend)
        reset_database(backend, name)
        dsn = DSN_TEMPLATES[backend].format(db=name)
    env = {"MES_SQL_DSN": dsn, "MES_DATA_DIR": str(tmp_path / "data"), "MES_API_KEY": "k" * 20}
    code, lines = mes(env, "doctor")
    database = [line for line in lines if line.split()[1:2] == ["database:"]]
    assert len(database) == 1 and "does not exist yet" in database[0], lines
    assert not any("Traceback" in line for line in lines), lines
    if backend == "sqlite":
        assert not (tmp_path / "db").exists() and not (tmp_path / "data").exists()
    else:
        assert not _exists(backend, name)
    # and a database that exists is read, not changed: doctor leaves no tables behind
    code, lines = mes(env, "init-db")
    assert code == 0, lines
    code, lines = mes(env, "doctor")
    assert any(line.startswith("OK") and "database:" in line for line in lines), lines
    if backend != "sqlite":
        reset_database(backend, name)


def test_a_sentinel_address_is_named_without_its_passwords():
    """A start-up error names the sentinels and the service, never "(unparsable address)"
    (a Sentinel URL lists several hosts) and never a password."""
    from mes.startup import redis_address

    url = "redis+sentinel://:pa@ss@127.0.0.1:26379,127.0.0.1:26380/mymaster/0?sentinel_password=se:cret"
    where = redis_address(url)
    assert where == "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0"
    assert "pa@ss" not in where and "se:cret" not in where


def test_doctor_prints_the_capture_mode_in_force(tmp_path):
    """``mes doctor`` says what is kept and what is redacted; a bad rules file is its one line."""
    rules = tmp_path / "capture.toml"
    rules.write_text('[[rule]]\ncapture = "none"\ntoken_id = 77\n')
    env = {"MES_SQL_DSN": f"sqlite:///{tmp_path / 'mes.db'}", "MES_DATA_DIR": str(tmp_path / "data"),
           "MES_CAPTURE": "metadata", "MES_CAPTURE_RULES": str(rules), "MES_REDACT": "email"}  # fmt: skip
    _, lines = mes(env, "doctor")
    privacy = [line for line in lines if line.split()[1:2] == ["privacy:"]]
    assert privacy == [f"OK   privacy: capture metadata (rules: {rules}, 1 rule(s)), redaction email"], lines
    rules.write_text('[[rule]]\ncapture = "most"\n')
    code, lines = mes(env, "doctor")
    assert code == 1 and any("MES_CAPTURE_RULES" in line and "rule 1" in line for line in lines), lines
