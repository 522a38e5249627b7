"""Daily tables as units: list, create, drop, archive -> drop -> restore, retention; and the
operator commands doctor and stats. Each on every backend."""

from __future__ import annotations

import datetime as dt
import gzip
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

from mes.cli import main as cli
from mes.config.settings import Settings
from mes.reader import HistoryReader
from mes.storage import Storage
from mes.worker.context import WorkerContext
from mes.worker.runner import MESWorker

from .factories import BASE_MS, assert_consistent, chat, conversation, error

DAY_MS = 86_400_000
DAYS = [dt.date(2026, 1, 15) + dt.timedelta(days=n) for n in range(4)]


def fill(storage: Storage) -> None:
    """Four days: conversations within a day, spanning days, errors, two users, two models."""
    events = []
    for n in range(len(DAYS)):
        ms = BASE_MS - 59_000 + n * DAY_MS + 60_000  # 16:00:00 UTC on each day
        events += conversation(f"day{n}", 2, ms=ms, model="gpt-4o" if n % 2 else "claude")
        events.append(error(f"day{n}", [{"role": "user", "content": "x"}], ms=ms + 500))
    history: list[dict[str, Any]] = []
    for n in range(4):  # one conversation with a request on each day
        history.append({"role": "user", "content": f"span {n}"})
        events.append(chat("span", list(history), f"a{n}", user_id=2, ms=BASE_MS + 1000 + n * DAY_MS,
                           model="gpt-4o" if n else "claude"))  # fmt: skip
        history.append({"role": "assistant", "content": f"a{n}"})
    storage.writer.write(events)


def run(backend: Any, *args: str, **env: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env=backend.env(**{"MES_DAILY_PARTITION": "true", **env}))
    return result


def rows_of(storage: Storage, day: dt.date) -> dict[str, list[tuple[Any, ...]]]:
    q = storage.engine.dialect.identifier_preparer.quote
    out = {}
    with storage.engine.connect() as conn:
        for base in ("conversation_histories", "error_conversation_histories", "mes_event_ledger"):
            name = f"{base}_{day:%Y_%m_%d}"
            order = "event_id" if base == "mes_event_ledger" else "id"
            out[base] = [tuple(r) for r in conn.execute(text(f"SELECT * FROM {q(name)} ORDER BY {order}"))]
    return out


def test_list_and_create(backend):
    storage = backend.storage()
    fill(storage)
    listed = run(backend, "partitions", "list")
    assert listed.exit_code == 0, listed.output
    line = next(li for li in listed.output.splitlines() if li.startswith("2026-01-15"))
    assert line.split()[1:4] == ["7", "1", "4"]  # 5 + 2 span messages, 1 error row, 4 events
    created = run(backend, "partitions", "create", "--days", "5")
    assert created.exit_code == 0, created.output
    names = set(inspect(storage.engine).get_table_names())
    far = storage.calendar.today() + dt.timedelta(days=5)
    assert f"conversation_histories_{far:%Y_%m_%d}" in names
    off = run(backend, "partitions", "list", MES_DAILY_PARTITION="false")
    assert off.exit_code == 2 and "MES_DAILY_PARTITION is off" in off.output


def test_drop_older_than_keeps_rollups_equal_to_a_recount(backend):
    storage = backend.storage()
    fill(storage)
    older = (storage.calendar.today() - DAYS[2]).days  # drops the 15th and the 16th
    done = run(backend, "partitions", "drop", "--older-than-days", str(older), "--yes")
    assert done.exit_code == 0, done.output
    names = set(inspect(storage.engine).get_table_names())
    assert "conversation_histories_2026_01_15" not in names and "conversation_histories_2026_01_17" in names
    assert_consistent(storage)
    reader = HistoryReader(storage)
    assert reader.get_conversation("day0", 1) is None
    span = reader.get_conversation("span", 2)
    assert span is not None and span["message_count"] == 4 and span["model"] == "gpt-4o"
    assert reader.get_conversation_stats(2)["total_conversations"] == 1
    again = run(backend, "partitions", "drop", "--older-than-days", str(older), "--yes")
    assert again.exit_code == 0 and "nothing older" in again.output


def test_archive_drop_restore_gives_back_identical_rows(backend, tmp_path):
    storage = backend.storage()
    fill(storage)
    reader = HistoryReader(storage)
    before_rows = rows_of(storage, DAYS[1])
    before_stats = {u: reader.get_conversation_stats(u) for u in (1, 2)}
    before_span = reader.get_conversation_messages("span", 100, user_id=2)
    path = str(tmp_path / "day.jsonl.gz")
    archived = run(backend, "partitions", "archive", "2026-01-16", "--out", path)
    assert archived.exit_code == 0, archived.output
    assert "conversation_histories_2026_01_16" not in set(inspect(storage.engine).get_table_names())
    assert_consistent(storage)
    assert reader.get_conversation_stats(1)["total_conversations"] == 3
    with gzip.open(path) as f:
        header = orjson.loads(f.readline())
    assert header["format"] == "mes-day-archive" and header["rows"]["chat"] == len(
        before_rows["conversation_histories"]
    )
    restored = run(backend, "partitions", "restore", path)
    assert restored.exit_code == 0, restored.output
    assert rows_of(storage, DAYS[1]) == before_rows
    assert {u: reader.get_conversation_stats(u) for u in (1, 2)} == before_stats
    assert reader.get_conversation_messages("span", 100, user_id=2) == before_span
    assert_consistent(storage)
    twice = run(backend, "partitions", "restore", path)
    assert twice.exit_code == 2 and "already holds rows" in twice.output
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b'{"format": "something else"}\n'))
    assert run(backend, "partitions", "restore", str(bad)).exit_code == 2


def test_retention_runs_in_worker_maintenance(backend, redis_server):
    settings = Settings.from_env(backend.env(MES_DAILY_PARTITION="true", MES_RETENTION_DAYS="30",
                                             REDIS_CONN_STRING=redis_server.url))  # fmt: skip
    storage = Storage.open(settings.database)
    fill(storage)
    ctx = WorkerContext.build(settings, redis_server.client(), storage=storage)
    MESWorker.for_context(ctx).mes_maintenance()
    assert not [d for d in storage.catalog.partition_days() if d.year == 2026 and d.month == 1]
    assert storage.catalog.is_known(storage.catalog.day_tables(storage.calendar.today()).chat.name)
    assert_consistent(storage)
    assert HistoryReader(storage).get_conversation_stats(1)["total_messages"] == 0
    storage.close()


def test_doctor_and_stats(backend, redis_server):
    storage = backend.storage()
    fill(storage)
    env = {"REDIS_CONN_STRING": redis_server.url}
    ok = run(backend, "doctor", **env)
    assert ok.exit_code == 0, ok.output
    assert "OK   database" in ok.output and "OK   maxmemory-policy: noeviction" in ok.output
    redis_server.client().config_set("maxmemory-policy", "allkeys-lru")
    bad = run(backend, "doctor", **env)
    assert bad.exit_code == 1 and "FAIL maxmemory-policy" in bad.output and "noeviction" in bad.output
    down = run(backend, "doctor", REDIS_CONN_STRING="redis://127.0.0.1:1/0")
    assert down.exit_code == 1 and "FAIL redis" in down.output
    stats = run(backend, "stats", "--json", "--days", "3650", **env)
    assert stats.exit_code == 0, stats.output
    body = orjson.loads(stats.output)
    assert body["conversations"] == 5 and body["totals"]["errors"] == 4
    assert body["days"]["2026-01-15"]["messages"] == 7 and body["queue"]["jobs_failed"] == 0
    text_out = run(backend, "stats", **env)
    assert text_out.exit_code == 0 and "dead letters: 0" in text_out.output


@pytest.mark.parametrize(
    "args", [["partitions", "archive", "2026-13-01"], ["partitions", "archive", "1999-01-01"]]
)
def test_bad_days_are_one_line_errors(backend, args):
    backend.storage()
    result = run(backend, *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
