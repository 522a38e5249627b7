"""The test command touches only what it creates: a test run (a real ``python -m pytest``
subprocess on a few database tests) creates databases and roles named with its own prefix
only, drops all of them at its end, leaves databases and roles named as runs used to name
theirs (``mes_test_main``, ``mes_test_gw0``, ``mes_nocreate``) as they were, and uses a
database that ``MES_TEST_MYSQL``/``MES_TEST_POSTGRES`` name exactly as it is."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from mes.config.dsn import parse_dsn
from mes.storage.engine import sqlalchemy_url

from .catalog import inventory
from .conftest import DSN_TEMPLATES, VARIABLES, _check, _server_engine, derived, explicit_database, missing

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
SERVERS = ("mysql", "postgresql")
SELECTION = [
    "tests/test_bootstrap.py::test_database_is_created_if_missing",
    "tests/test_bootstrap.py::test_postgres_role_that_may_not_create_databases_gets_one_line_saying_how",
    "tests/test_writer.py::test_same_batch_twice_changes_nothing",
]
LEGACY_DATABASES = ("mes_test_main", "mes_test_gw0", "mes_test_gw1")
LEGACY_ROLE = "mes_nocreate"


def _server_urls() -> dict[str, str]:
    urls = {}
    for backend in SERVERS:
        reason = _check(backend)
        if reason:
            missing(backend, reason)
        if explicit_database(backend) is not None:
            pytest.skip(f"{VARIABLES[backend]} names a database: this test needs a server it may create on")
        engine = _server_engine(backend)
        urls[backend] = engine.url.render_as_string(hide_password=False)
        engine.dispose()
    return urls


class Legacy:
    """Databases (and a role) named as runs used to name theirs, made here when missing.

    ``state()`` identifies each: PostgreSQL by oid, MariaDB by a marker table in the ones made
    here (a database someone else made is only looked up)."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []

    def make(self) -> None:
        for backend in SERVERS:
            engine = _server_engine(backend)
            with engine.connect() as conn:
                for name in LEGACY_DATABASES:
                    if self._exists(backend, conn, "database", name):
                        continue
                    if backend == "mysql":
                        conn.execute(text(f"CREATE DATABASE `{name}`"))
                        conn.execute(text(f"CREATE TABLE `{name}`.mes_sentinel (id INT)"))
                        conn.execute(text(f"INSERT INTO `{name}`.mes_sentinel VALUES (1)"))
                        conn.commit()
                    else:
                        conn.execute(text(f'CREATE DATABASE "{name}"'))
                    self.made.append((backend, name))
                if backend == "postgresql" and not self._exists(backend, conn, "role", LEGACY_ROLE):
                    conn.execute(text(f'CREATE ROLE "{LEGACY_ROLE}" NOLOGIN'))
                    self.made.append((backend, "role " + LEGACY_ROLE))
            engine.dispose()

    @staticmethod
    def _exists(backend: str, conn: Any, kind: str, name: str) -> Any:
        sql = {
            ("mysql", "database"): "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :n",
            ("postgresql", "database"): "SELECT oid FROM pg_database WHERE datname = :n",
            ("postgresql", "role"): "SELECT oid FROM pg_roles WHERE rolname = :n",
        }[(backend, kind)]
        return conn.execute(text(sql), {"n": name}).scalar()

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for backend in SERVERS:
            engine = _server_engine(backend)
            with engine.connect() as conn:
                for name in LEGACY_DATABASES:
                    found = self._exists(backend, conn, "database", name)
                    if backend == "mysql" and found and (backend, name) in self.made:
                        marker = "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = :n"
                        found = ("marked", conn.execute(text(marker), {"n": name}).scalar())
                    state[f"{backend} database {name}"] = found
                if backend == "postgresql":
                    state[f"postgresql role {LEGACY_ROLE}"] = self._exists(backend, conn, "role", LEGACY_ROLE)
            engine.dispose()
        return state

    def remove(self) -> None:
        """Drop what was made here (or what the run under test made again in its place)."""
        for backend, name in self.made:
            engine = _server_engine(backend)
            with engine.connect() as conn:
                if name.startswith("role "):
                    conn.execute(text(f'DROP ROLE IF EXISTS "{LEGACY_ROLE}"'))
                elif backend == "mysql":
                    conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
                else:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            engine.dispose()


@pytest.fixture
def legacy() -> Iterator[tuple[Legacy, dict[str, Any]]]:
    """The legacy names in place, and their state before the run under test."""
    urls = _server_urls()
    assert urls
    # One such test at a time on this machine: the legacy names are shared by every run.
    with open(os.path.join(tempfile.gettempdir(), "mes-test-isolation.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        names = Legacy()
        names.make()
        before = names.state()
        try:
            yield names, before
        finally:
            names.remove()


class Watch:
    """Every database and role name seen on the servers while a subprocess runs."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.seen: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.take(inventory(self.urls))
            self.stop.wait(0.05)

    def take(self, found: dict[str, list[str]]) -> None:
        self.seen |= {f"{backend} {name}" for backend, names in found.items() for name in names}


def _run_pytest(
    tmp_path: pathlib.Path, args: list[str], env: dict[str, str]
) -> tuple[int, str, set[str], set[str]]:
    """Run ``python -m pytest args`` in the repository; its exit code and output, the names the servers
    held when its tests were over (before it dropped anything), and every name seen meanwhile."""
    urls = _server_urls()
    out = tmp_path / "catalog.json"
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MES_TEST_", "MES_CATALOG_"))
    }
    clean.update(MES_TEST_REQUIRE_ALL="1", MES_CATALOG_OUT=str(out), MES_CATALOG_URLS=json.dumps(urls))
    clean.update(env)
    command = [sys.executable, "-m", "pytest", "-p", "tests.catalog", "-p", "no:cacheprovider", "-rA"]
    command += ["--basetemp", str(tmp_path / "run"), *args]
    watch = Watch(urls)
    watch.take(inventory(urls))
    watch.thread.start()
    try:
        done = subprocess.run(command, cwd=REPO, env=clean, capture_output=True, text=True, timeout=280)
    finally:
        watch.stop.set()
        watch.thread.join()
    output = done.stdout + done.stderr
    at_end: set[str] = set()
    held = json.loads(out.read_text()) if out.exists() else {}  # absent if the run broke off
    for backend, names in held.items():
        at_end |= {f"{backend} {name}" for name in names}
    watch.take(inventory(urls))
    return done.returncode, output, at_end, watch.seen | at_end


def _prefix(output: str) -> str:
    found = re.search(r"^mes test databases: (mes_t([0-9a-f]{8})_)\* ", output, re.MULTILINE)
    assert found, "the run names its prefix in its header"
    return found.group(1)


def _now() -> set[str]:
    return {f"{b} {name}" for b, names in inventory(_server_urls()).items() for name in names}


def test_a_run_creates_only_names_with_its_prefix_drops_them_all_and_leaves_older_names_alone(
    tmp_path, legacy
):
    names, expected = legacy
    before = _now()
    code, output, at_end, seen = _run_pytest(tmp_path, ["-n", "2", *SELECTION], {})
    assert names.state() == expected  # mes_test_main/gw0/gw1 and mes_nocreate: not dropped, not remade
    assert code == 0, output[-4000:]
    prefix = _prefix(output)
    token = prefix.removeprefix("mes_t").rstrip("_")
    ours = {name for name in seen - before if token in name}
    assert ours, "the watch saw the run's databases"
    assert all(name.split(" ", 2)[2].startswith(prefix) for name in ours), ours
    for backend in SERVERS:  # each server held a database of an xdist worker's, named with the prefix
        assert any(re.fullmatch(f"{backend} database {prefix}gw[01]", name) for name in at_end), at_end
    assert {name for name in _now() if token in name} == set()  # all of them dropped at the end


def test_a_database_the_targets_name_is_used_as_is_and_never_created_or_dropped(tmp_path, legacy):
    names, expected = legacy
    explicit = derived("explicit")  # this run's name: the outer run drops it if this test cannot
    oid, targets = None, {}
    for backend in SERVERS:
        engine = _server_engine(backend)
        with engine.connect() as conn:
            if backend == "mysql":  # a collation MES would not choose: a remade database would differ
                conn.execute(text(f"CREATE DATABASE `{explicit}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
            else:
                conn.execute(text(f'CREATE DATABASE "{explicit}"'))
                oid = conn.execute(
                    text("SELECT oid FROM pg_database WHERE datname = :n"), {"n": explicit}
                ).scalar()
        engine.dispose()
        targets[VARIABLES[backend]] = DSN_TEMPLATES[backend].format(db=explicit)
    try:
        before = _now()
        code, output, _at_end, seen = _run_pytest(tmp_path, ["-p", "no:xdist", *SELECTION], targets)
        assert names.state() == expected
        assert code == 0, output[-4000:]
        assert re.search(r"= 4 passed, 3 skipped", output), output[-3000:]
        for variable in targets:
            assert f"{variable} names the database '{explicit}'" in output
        token = _prefix(output).removeprefix("mes_t").rstrip("_")
        assert {name for name in seen - before if token in name} == set()  # it created nothing
        for backend in SERVERS:
            engine = _server_engine(backend)
            with engine.connect() as conn:
                if backend == "mysql":
                    sql = "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :n"
                    assert conn.execute(text(sql), {"n": explicit}).scalar() == "utf8mb4_bin"
                else:
                    sql = "SELECT oid FROM pg_database WHERE datname = :n"
                    assert conn.execute(text(sql), {"n": explicit}).scalar() == oid
            engine.dispose()
            inside = create_engine(
                sqlalchemy_url(parse_dsn(targets[VARIABLES[backend]], variable="t", data_dir="."))
            )
            assert "mes_conversations" in inspect(inside).get_table_names()  # the tests wrote there
            inside.dispose()
    finally:
        for backend in SERVERS:
            engine = _server_engine(backend)
            with engine.connect() as conn:
                force = " WITH (FORCE)" if backend == "postgresql" else ""
                q = "`" if backend == "mysql" else '"'
                conn.execute(text(f"DROP DATABASE IF EXISTS {q}{explicit}{q}{force}"))
            engine.dispose()
