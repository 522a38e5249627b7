"""The storage writer against the Go pattern and against the raw bulk-insert ceiling.

    python bench/writer.py --backend all --events 3000 --repeat 3

On each backend, in one run, on one connection each:

* **naive** (the Go version): one INSERT and one COMMIT per message row, in order, as the
  Go MESHelper does on the request path (every message of each request, the earlier
  turns again each time);
* **writer**: MES's ``BatchWriter.write`` with batches of ``--batch`` events (ledger,
  conversation locks, chain ids, dedup of re-sent history, rows, index and rollups, one
  transaction per batch), on fresh tables created before the clock starts (as a running
  MES creates each day's tables ahead);
* **raw**: exactly the rows the writer stored, inserted with the same bulk statement the
  writer uses (``executemany`` multi-row INSERT on MySQL, ``COPY`` on PostgreSQL,
  ``executemany`` on SQLite) in the same batch sizes, into a table with no secondary index
  and no rollup work: the ceiling;
* **raw+unique**: the same, into a table with the history table's unique
  ``(conversation_id, message_id)`` index: what that one index costs.

Figures are message rows per second, median of ``--repeat`` runs. The ratios printed are
writer ÷ naive (target ≥ 8x on MariaDB and PostgreSQL) and the writer efficiency,
writer ÷ raw (target ≥ 60 %). ``--phases`` adds one instrumented writer run per backend
and prints the seconds spent in each step (reads, planning, each table's statements), and
the efficiency the writer would have if planning cost nothing (its share of that run taken
off the median writer time): the most a faster planner could give.
Databases ``mes_bench_writer`` are created and dropped on the local servers
(``--mysql`` / ``--postgres`` to point elsewhere).
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
from sqlalchemy import Column, MetaData, Table, create_engine, insert, select, text
from sqlalchemy.pool import NullPool

from mes.config.settings import DatabaseSettings
from mes.log import configure_logging
from mes.storage import Storage
from mes.storage.bulk import bulk_for
from mes.storage.engine import sqlalchemy_url
from mes.storage.tables import chat_table

DB = "mes_bench_writer"
BASE_MS = 1_768_464_000_000  # 2026-01-15 08:00 UTC
WORDS = [
    "the",
    "model",
    "said",
    "that",
    "a",
    "gateway",
    "stores",
    "every",
    "message",
    "of",
    "every",
    "request",
    "and",
    "its",
    "answer",
    "你好",
    "😀",
]


def text_of(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def make_events(n: int, seed: int = 7, *, active: int = 1) -> list[dict[str, Any]]:
    """Multi-turn chats as a gateway sends them: each request re-sends the history.

    ``active`` chats are under way at any moment and each event is the next turn of a
    random one of them, so two turns of a chat are ~``active`` events apart. The default,
    1, sends every turn of a chat back to back, milliseconds apart, as an agent's tight
    loop does: consecutive batches share a chat at their boundary, and each batch holds
    few chats (the writer's fastest case). A gateway serving people interleaves many chats
    (each turn waits for the model's answer to the one before): ``active=200`` and up.

    Each event is decoded from its own JSON, as a worker hands events to the writer: a
    re-sent turn is a new object with new strings, as it is in production, never the
    earlier event's own (whose strings would compare by identity, with their hashes
    cached, and flatter the writer).
    """
    rng = random.Random(seed)
    ms = BASE_MS

    def chat() -> Iterator[dict[str, Any]]:
        cid = f"bench-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}"
        user = rng.randint(1, 500)
        history: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful assistant."}]
        for _ in range(rng.randint(1, 6)):
            history.append({"role": "user", "content": text_of(rng, rng.randint(10, 150))})
            answer = text_of(rng, rng.randint(20, 300))
            yield {
                "schema_version": 1, "kind": "chat", "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
                "occurred_at": 0, "conversation_id": cid, "model_name": rng.choice(["gpt-4o", "claude-3-5-sonnet"]),
                "user_id": user, "token_id": 1, "channel_id": 1, "messages": list(history),
                "response": {"id": "", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 80, "total_tokens": 130}},
            }  # fmt: skip
            history.append({"role": "assistant", "content": answer})

    under_way = [chat() for _ in range(active)]
    events: list[dict[str, Any]] = []
    while len(events) < n:
        i = rng.randrange(len(under_way))
        event = next(under_way[i], None)
        if event is None:  # that chat is over: another one starts
            under_way[i] = chat()
            continue
        ms += rng.randint(1, 50)
        event["occurred_at"] = ms
        events.append(orjson.loads(orjson.dumps(event)))
    return events


class Target:
    def __init__(self, backend: str, mysql: str, postgres: str, folder: str) -> None:
        self.backend = backend
        dsn = {"mysql": mysql, "postgresql": postgres, "sqlite": f"sqlite:///{folder}/bench.db"}[backend]
        self.settings = DatabaseSettings.from_env(
            {
                "MES_SQL_DSN": dsn,
                "MES_DAILY_PARTITION": "true",
                "SQL_MAX_IDLE_CONNS": "2",
                "MES_DATA_DIR": folder,
            }
        )

    def reset(self) -> None:
        db = self.settings.db
        if db.backend == "sqlite":
            import os

            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(db.database + suffix):
                    os.remove(db.database + suffix)
            return
        maintenance = None if db.backend == "mysql" else "postgres"
        kwargs: dict[str, Any] = {"poolclass": NullPool}
        if db.backend == "postgresql":
            kwargs["isolation_level"] = "AUTOCOMMIT"
        engine = create_engine(sqlalchemy_url(db, database=maintenance), **kwargs)
        with engine.connect() as conn:
            q = "`" if db.backend == "mysql" else '"'
            force = " WITH (FORCE)" if db.backend == "postgresql" else ""
            conn.execute(text(f"DROP DATABASE IF EXISTS {q}{db.database}{q}{force}"))
        engine.dispose()

    def storage(self) -> Storage:
        self.reset()
        return Storage.open(self.settings)


def run_writer(
    target: Target, events: list[dict[str, Any]], batch: int, privacy: Any = None
) -> tuple[float, int, Storage]:
    storage = target.storage()
    storage.writer.privacy = privacy  # mes.privacy.Privacy (redaction redacts the events in place)
    # A running MES creates each day's tables ahead (workers' maintenance, ``mes partitions
    # create``): the steady state this measures writes into tables that exist already.
    storage.catalog.ensure_days({storage.calendar.day_of(ev["occurred_at"]) for ev in events})
    rows = 0
    start = time.perf_counter()
    for i in range(0, len(events), batch):
        result = storage.writer.write(events[i : i + batch])
        rows += result.rows + result.error_rows
    return time.perf_counter() - start, rows, storage


def run_phases(target: Target, events: list[dict[str, Any]], batch: int) -> tuple[float, dict[str, float]]:
    """One writer run with a stopwatch on each step of its transaction: where the time goes.

    Wraps the writer's reads, its planning functions and each bulk statement by table
    (the bench's own instrumentation; MES is unchanged), so its total is a little slower.
    """
    import mes.storage.writer as writer_module

    storage = target.storage()
    storage.catalog.ensure_days({storage.calendar.day_of(ev["occurred_at"]) for ev in events})
    spent: dict[str, float] = {}

    def timed(label: Any, fn: Any) -> Any:
        def run(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                key = label(*a) if callable(label) else label
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - start

        return run

    def by_table(verb: str) -> Any:
        # day tables under one name: conversation_histories_2026_01_15 -> conversation_histories
        return lambda _cur, table, *rest: f"{verb} {table.name.split('_20')[0]}"

    writer, bulk = storage.writer, storage.writer.bulk
    # _stored_rows runs inside build_plan (only for requests that do not start with their
    # conversation's tail): its time is also in "plan build_plan".
    for name in ("_ledger_hits", "_load_states", "_stored_rows"):
        setattr(writer, name, timed(f"read {name.strip('_')}", getattr(writer, name)))
    bulk.insert = timed(by_table("insert"), bulk.insert)  # type: ignore[method-assign]
    bulk.upsert = timed(by_table("upsert"), bulk.upsert)  # type: ignore[method-assign]
    saved = {name: getattr(writer_module, name) for name in ("prepare", "build_plan")}
    for name, fn in saved.items():
        setattr(writer_module, name, timed(f"plan {name}", fn))
    try:
        start = time.perf_counter()
        for i in range(0, len(events), batch):
            storage.writer.write(events[i : i + batch])
        total = time.perf_counter() - start
    finally:
        for name, fn in saved.items():
            setattr(writer_module, name, fn)
        storage.close()
        target.reset()
    return total, spent


def stored_rows(storage: Storage) -> tuple[list[str], list[tuple[Any, ...]]]:
    table = storage.catalog.day_tables(storage.calendar.day_of(BASE_MS)).chat
    columns = [c.name for c in table.columns if c.name != "id"]
    with storage.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(*(table.c[c] for c in columns)).order_by(table.c.id))]
    return columns, rows


def plain_table(storage: Storage, name: str, unique: bool) -> Table:
    template = chat_table("bench_template", MetaData(), storage.catalog.id_collation)
    cols = [Column(c.name, c.type, primary_key=c.primary_key, autoincrement=c.autoincrement, nullable=c.nullable)
            for c in template.columns]  # fmt: skip
    args: list[Any] = []
    if unique:
        from sqlalchemy import UniqueConstraint

        args.append(UniqueConstraint("conversation_id", "message_id", name=f"uq_{name}"))
    table = Table(name, MetaData(), *cols, *args, mysql_charset="utf8mb4", mysql_collate="utf8mb4_unicode_ci")
    table.drop(storage.engine, checkfirst=True)
    table.create(storage.engine)
    return table


def run_raw(
    storage: Storage, columns: list[str], rows: list[tuple[Any, ...]], per_batch: int, unique: bool
) -> float:
    table = plain_table(storage, "bench_raw_unique" if unique else "bench_raw", unique)
    bulk = bulk_for(storage.engine)
    raw = storage.engine.raw_connection()
    try:
        start = time.perf_counter()
        for i in range(0, len(rows), per_batch):
            bulk.begin(raw.driver_connection)
            cur = raw.cursor()
            bulk.insert(cur, table, columns, rows[i : i + per_batch])
            cur.close()
            raw.commit()
        return time.perf_counter() - start
    finally:
        raw.close()


def run_naive(storage: Storage, events: list[dict[str, Any]], limit_rows: int) -> tuple[float, int]:
    """One INSERT + COMMIT per message, every message of every request, as Go does."""
    table = plain_table(storage, "bench_naive", unique=False)
    now = int(time.time())
    rows = 0
    with storage.engine.connect() as conn:
        start = time.perf_counter()
        for ev in events:
            answer = ev["response"]["choices"][0]["message"]
            for msg in [*ev["messages"], answer]:
                conn.execute(insert(table).values(
                    user_id=ev["user_id"], created_at=now, updated_at=now, conversation_id=ev["conversation_id"],
                    message_id=uuid.uuid4().hex, role=msg["role"], content=msg["content"], model_name=ev["model_name"],
                    token_id=1, channel_id=1, prompt_tokens=0, completion_tokens=0, total_tokens=0, is_stream=False,
                    event_id=ev["event_id"], seq=0, created_at_ms=ev["occurred_at"], is_response=False,
                ))  # fmt: skip
                conn.commit()
                rows += 1
            if rows >= limit_rows:
                break
        return time.perf_counter() - start, rows


def bench(backend: str, args: argparse.Namespace, events: list[dict[str, Any]]) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="mes-bench-writer-")
    target = Target(backend, args.mysql, args.postgres, folder)
    figures: dict[str, list[float]] = {"naive": [], "writer": [], "raw": [], "raw+unique": []}
    rows_written = 0
    for _ in range(args.repeat):
        seconds, rows_written, storage = run_writer(target, events, args.batch)
        figures["writer"].append(rows_written / seconds)
        columns, rows = stored_rows(storage)
        per_batch = max(1, len(rows) * args.batch // len(events))
        figures["raw"].append(len(rows) / run_raw(storage, columns, rows, per_batch, unique=False))
        figures["raw+unique"].append(len(rows) / run_raw(storage, columns, rows, per_batch, unique=True))
        seconds, n = run_naive(storage, events, args.naive_rows)
        figures["naive"].append(n / seconds)
        storage.close()
    target.reset()
    return {"rows": rows_written, **{k: statistics.median(v) for k, v in figures.items()}}


def bench_redaction(
    backend: str, args: argparse.Namespace, events: list[dict[str, Any]]
) -> tuple[float, float]:
    """Median rows/s of the writer with redaction off and with the default detectors on,
    alternated (off, on, on, off, ...), each run on fresh copies of the events."""
    from mes.config.settings import PrivacySettings

    on = PrivacySettings.from_env({"MES_REDACT": "default"}).build()
    target = Target(backend, args.mysql, args.postgres, tempfile.mkdtemp(prefix="mes-bench-redact-"))
    figures: dict[bool, list[float]] = {False: [], True: []}
    for n in range(args.repeat * 2):
        redact = n % 4 in (1, 2)
        fresh = orjson.loads(orjson.dumps(events))
        seconds, rows, storage = run_writer(target, fresh, args.batch, on if redact else None)
        figures[redact].append(rows / seconds)
        storage.close()
    target.reset()
    return statistics.median(figures[False]), statistics.median(figures[True])


def make_history(chats: int, turns: int, seed: int = 11) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``chats`` conversations whose first request sends ``turns`` messages (a system
    prompt, then user and assistant turns), and for each the next request: the same
    ``turns`` messages re-sent, the first answer, a new question. The first requests are
    written before the clock starts; the second ones are timed: each stores two new rows
    (the question and its answer) whatever ``turns`` is, as an agent's next call does."""
    rng = random.Random(seed + turns)
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    ms = BASE_MS
    for n in range(chats):
        cid = f"hist-{turns}-{n}"
        history: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent."}]
        while len(history) < turns:
            role = "user" if len(history) % 2 else "assistant"
            history.append({"role": role, "content": text_of(rng, rng.randint(10, 40))})
        answer = text_of(rng, rng.randint(10, 40))
        for messages, reply in (
            (history, answer),
            (
                [
                    *history,
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": text_of(rng, 12)},
                ],
                "done",
            ),
        ):
            ms += 1
            event = {
                "schema_version": 1, "kind": "chat", "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
                "occurred_at": ms, "conversation_id": cid, "model_name": "gpt-4o", "user_id": 1 + n % 50,
                "token_id": 1, "channel_id": 1, "messages": messages,
                "response": {"id": "", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 80, "total_tokens": 130}},
            }  # fmt: skip
            (first if reply is answer else second).append(orjson.loads(orjson.dumps(event)))
    return first, second


def bench_turns(backend: str, args: argparse.Namespace, lengths: list[int]) -> dict[int, float]:
    """Median µs per timed event at each history length, the lengths interleaved in each
    repetition (1, 10, 50, 150, then again) so that a machine getting busier weighs on all."""
    target = Target(backend, args.mysql, args.postgres, tempfile.mkdtemp(prefix="mes-bench-turns-"))
    figures: dict[int, list[float]] = {n: [] for n in lengths}
    events = {n: make_history(args.events, n) for n in lengths}
    for _ in range(args.repeat):
        for n in lengths:
            first, second = (orjson.loads(orjson.dumps(e)) for e in events[n])  # fresh objects each run
            storage = target.storage()
            storage.catalog.ensure_days({storage.calendar.day_of(ev["occurred_at"]) for ev in first + second})
            for i in range(0, len(first), args.batch):
                storage.writer.write(first[i : i + args.batch])
            start = time.perf_counter()
            for i in range(0, len(second), args.batch):
                storage.writer.write(second[i : i + args.batch])
            figures[n].append((time.perf_counter() - start) * 1e6 / len(second))
            storage.close()
    target.reset()
    return {n: statistics.median(v) for n, v in figures.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="all", choices=["all", "mysql", "postgresql", "sqlite"])
    parser.add_argument("--events", type=int, default=3000, help="chat events (multi-turn) per run")
    parser.add_argument("--batch", type=int, default=500, help="events per writer batch (a job)")
    parser.add_argument(
        "--active", type=int, default=1, help="chats under way at once (1: each chat's turns back to back)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--phases", action="store_true", help="also time each step of the writer's transaction"
    )
    parser.add_argument("--naive-rows", type=int, default=6000, help="rows the naive pattern inserts per run")
    parser.add_argument(
        "--redact",
        action="store_true",
        help="also the writer with MES_REDACT=default against off (target: 75 %%)",
    )
    parser.add_argument(
        "--turns",
        default=None,
        help="instead: µs per event by the length of the re-sent history, e.g. 1,10,50,150 "
        "(--events chats per length; target: the longest ≤ 2x the shortest)",
    )
    parser.add_argument("--mysql", default=f"root:@tcp(127.0.0.1:3306)/{DB}")
    parser.add_argument("--postgres", default=f"postgres://postgres@127.0.0.1:5432/{DB}")
    args = parser.parse_args(argv)
    configure_logging(level=logging.WARNING)
    backends = ["mysql", "postgresql", "sqlite"] if args.backend == "all" else [args.backend]
    if args.turns:
        return turns_report(args, backends, [int(n) for n in args.turns.split(",")])
    events = make_events(args.events, active=args.active)
    print(
        f"{len(events)} events, {args.active} chat(s) under way at once, batches of {args.batch},"
        f" median of {args.repeat}; message rows per second"
    )
    print(
        f"{'backend':<11}{'rows':>7}{'naive':>9}{'writer':>9}{'raw':>9}{'raw+uniq':>10}{'w/naive':>9}{'w/raw':>7}{'index cost':>12}"
    )
    ok = True
    for backend in backends:
        r = bench(backend, args, events)
        speedup, efficiency = r["writer"] / r["naive"], r["writer"] / r["raw"]
        index_cost = 1 - r["raw+unique"] / r["raw"]
        print(f"{backend:<11}{r['rows']:>7}{r['naive']:>9.0f}{r['writer']:>9.0f}{r['raw']:>9.0f}{r['raw+unique']:>10.0f}"
              f"{speedup:>8.1f}x{efficiency:>7.0%}{index_cost:>12.0%}")  # fmt: skip
        if backend != "sqlite" and (speedup < 8 or efficiency < 0.6):
            ok = False
        if args.phases:
            total, spent = run_phases(
                Target(backend, args.mysql, args.postgres, tempfile.mkdtemp()), events, args.batch
            )
            parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]))
            print(f"  {backend} writer, seconds for {len(events)} events: {total:.3f} in all; {parts}")
            # What the efficiency would be if planning (Python, per event) cost nothing and the
            # rest of the transaction stayed as it is: the most any faster planner could give.
            planning = sum(v for k, v in spent.items() if k.startswith("plan "))
            share = planning / total
            print(f"  {backend} planning {share:.0%} of the writer's time: without it w/raw would be"
                  f" {efficiency / (1 - share):.0%}")  # fmt: skip
    print("targets (MariaDB, PostgreSQL): writer >= 8x naive, efficiency >= 60%:", "met" if ok else "NOT met")
    if args.redact:
        print("redaction (MES_REDACT=default against off), message rows per second, medians:")
        for backend in backends:
            off, on = bench_redaction(backend, args, events)
            print(f"  {backend:<11} off {off:>8.0f}   on {on:>8.0f}   on / off {on / off:.0%}"
                  f"   (target 75 %: {'met' if on >= 0.75 * off else 'NOT met'})")  # fmt: skip
    return 0 if ok else 1


def turns_report(args: argparse.Namespace, backends: list[str], lengths: list[int]) -> int:
    print(f"µs per event by the length of the re-sent history: {args.events} chats per length, whose"
          f" first request is written before the clock; batches of {args.batch}; median of {args.repeat}")  # fmt: skip
    print(f"{'backend':<11}" + "".join(f"{f'{n} turns':>12}" for n in lengths) + f"{'ratio':>10}")
    ok = True
    for backend in backends:
        us = bench_turns(backend, args, lengths)
        ratio = us[lengths[-1]] / us[lengths[0]]
        ok = ok and ratio <= 2
        print(f"{backend:<11}" + "".join(f"{us[n]:>12,.0f}" for n in lengths) + f"{ratio:>9.1f}x")
    print(f"target: {lengths[-1]} turns <= 2x {lengths[0]}:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
