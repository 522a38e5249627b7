"""MySQL's bulk INSERT renders values into the statement itself (``storage.bulk``): each
value exactly as PyMySQL's own ``Connection.escape`` renders it, under the default
``sql_mode`` and under ``NO_BACKSLASH_ESCAPES``, and every string, however hostile,
reads back unchanged through the writer's statements, in statements split at ~1 MB."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table

from mes.storage.bulk import _mysql_literal, bulk_for
from mes.storage.tables import LongText

from .conftest import _check, missing, reset_database

pytestmark = pytest.mark.mysql

HOSTILE = [
    "", "'", "''", '"', "\\", "\\'", "'; DROP TABLE t; --", "\x00", "\n\r\x1a", "%s %(x)s %%", "你好 😀",
    "a\\\\'b\"c\\nd", "' OR '1'='1", "\\x27", "\u2019\u02bc", "end\\",
]  # fmt: skip


@pytest.fixture
def mysql_storage(tmp_path):
    reason = _check("mysql")
    if reason:
        missing("mysql", reason)
    reset_database("mysql")
    from .conftest import Backend

    b = Backend("mysql", tmp_path)
    storage = b.storage(daily=False)
    yield storage
    b.close()


values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(alphabet=st.sampled_from(list("ab'\"\\\x00\n\r\x1a%你😀 ")), max_size=30), st.text(max_size=30),
)  # fmt: skip


@pytest.mark.parametrize("sql_mode", ["", "NO_BACKSLASH_ESCAPES"])
def test_each_value_is_rendered_as_pymysql_renders_it(mysql_storage, sql_mode):
    raw = mysql_storage.engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute("SET SESSION sql_mode = %s", (sql_mode,))
            conn = cur.connection

            @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
            @given(values)
            def check(value):
                assert _mysql_literal(value, conn) == conn.escape(value)

            check()
            for value in HOSTILE:
                assert _mysql_literal(value, conn) == conn.escape(value)
    finally:
        raw.close()


@pytest.mark.parametrize("sql_mode", ["", "NO_BACKSLASH_ESCAPES"])
def test_hostile_strings_read_back_unchanged_across_statements(mysql_storage, sql_mode):
    table = Table("mes_t_literal", MetaData(), Column("id", Integer, primary_key=True, autoincrement=False),
                  Column("s", LongText), Column("n", BigInteger), Column("k", String(10)))  # fmt: skip
    table.create(mysql_storage.engine)
    big = "x'\\" * 100_000  # 300 KB a row: the rows go out in several statements of ~1 MB
    rows = [(i, (HOSTILE[i % len(HOSTILE)] + big) if i % 3 == 0 else HOSTILE[i % len(HOSTILE)],
             -(2**63) + i if i % 2 else 2**63 - 1 - i, None if i % 4 else "k") for i in range(40)]  # fmt: skip
    raw = mysql_storage.engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute("SET SESSION sql_mode = %s", (sql_mode,))
            statements = []
            execute = cur.execute
            cur.execute = lambda sql, *a: (statements.append(len(sql)), execute(sql, *a))[1]
            bulk_for(mysql_storage.engine).insert(cur, table, ["id", "s", "n", "k"], rows)
            cur.execute = execute
            raw.commit()
            assert len(statements) > 3 and max(statements) < 1_400_000, statements
            cur.execute("SELECT id, s, n, k FROM mes_t_literal ORDER BY id")
            got = [tuple(r) for r in cur.fetchall()]
            assert len(got) == len(rows)
            bad = [
                (a[0], [x == y for x, y in zip(a, b, strict=True)])
                for a, b in zip(got, rows, strict=True)
                if a != b
            ]
            assert not bad, bad[:5]  # (row id, which columns came back equal)
    finally:
        raw.close()
