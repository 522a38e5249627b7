"""What a database server holds by name (its databases and roles), for the tests that check
what a test run created there.

Also a pytest plugin (``-p tests.catalog``) for a test run started by such a test: when that
run's tests are over, and before it drops what it created, it writes what the servers hold
to the file ``MES_CATALOG_OUT`` names, reading the servers ``MES_CATALOG_URLS`` (JSON,
backend to SQLAlchemy URL) names.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

_QUERIES = {
    "mysql": {
        "database": "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA",
        "role": "SELECT DISTINCT User FROM mysql.user",
    },
    "postgresql": {
        "database": "SELECT datname FROM pg_database",
        "role": "SELECT rolname FROM pg_roles",
    },
}


def inventory(urls: dict[str, str]) -> dict[str, list[str]]:
    """Per backend, ``"database NAME"`` and ``"role NAME"`` for everything on its server."""
    found: dict[str, list[str]] = {}
    for backend, url in urls.items():
        kwargs: dict[str, Any] = {"poolclass": NullPool, "connect_args": {"connect_timeout": 3}}
        engine = create_engine(url, **kwargs)
        with engine.connect() as conn:
            found[backend] = sorted(
                f"{kind} {name}"
                for kind, sql in _QUERIES[backend].items()
                for (name,) in conn.execute(text(sql))
            )
        engine.dispose()
    return found


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("MES_CATALOG_OUT")
    if out and not hasattr(session.config, "workerinput"):
        with open(out, "w") as f:
            json.dump(inventory(json.loads(os.environ["MES_CATALOG_URLS"])), f)
