"""Reads at any retention: MES's read API next to the Go version's every-table method.

    python bench/read.py --backend all --rows 1000000
    python bench/read.py --backend mysql --rows 1000000 --reuse      # data already loaded

For each backend, two databases hold ``--rows`` message rows of multi-turn chats by
``--users`` users: one spread over 30 daily tables, one over 365. On each, through real
HTTP (``mes serve`` in a subprocess, one keep-alive client, one request at a time; both
retentions are served at once and measured in ``--rounds`` alternating rounds, so that a
change in the shared machine's load falls on both alike and the ratio compares like with like):

* list: ``GET /api/v1/conversations?user_id=…`` (20 newest of a random user)
* get: ``GET /api/v1/conversations/{id}`` (a random conversation, 50 messages)
* stats: ``GET /api/v1/stats/conversations?user_id=…``

``--requests`` of each; p50 / p99 / max in ms. Beside them, the Go version's method on
the same data, in this process (no HTTP, which only flatters it): list and stats query
every daily table for the user's rows and merge in memory (stats from the latest 1,000
messages, as Go does), get queries every daily table for the conversation. To be fair to
it, every daily table gets the indexes Go's model declares (``user_id``,
``conversation_id``) before it is measured. Targets (issue 4): MES p99 ≤ 10 ms for each
route at 1M rows, and 365 days within 1.5x of 30 days.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
from sqlalchemy import text

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import writer as wbench

from mes.config.settings import DatabaseSettings
from mes.embedded import free_port
from mes.log import configure_logging
from mes.storage import Storage
from mes.storage.engine import sqlalchemy_url

DAY_MS = 86_400_000
END_MS = 1_768_464_000_000  # 2026-01-15
KEY = "bench-read-operator-key-000000"


def gen_events(
    rows: int, days: int, users: int, part: int, parts: int, seed: int = 11
) -> list[dict[str, Any]]:
    """Conversations of 4 turns (9 stored rows each), spread over ``days``; this process's share."""
    rng = random.Random(seed * 1000 + part)
    conversations = rows // 9
    out = []
    for c in range(part, conversations, parts):
        user = 1 + (c * 7919) % users
        start = END_MS - rng.randint(1, days) * DAY_MS + rng.randint(0, DAY_MS - 10_000)
        history: list[dict[str, Any]] = [{"role": "system", "content": "You are helpful."}]
        for turn in range(4):
            history.append(
                {"role": "user", "content": f"question {turn} about topic {rng.randint(1, 10**6)} " * 3}
            )
            answer = f"answer {turn}: " + "lorem ipsum dolor sit amet " * rng.randint(2, 8)
            out.append({
                "schema_version": 1, "kind": "chat", "event_id": f"e{c:08d}t{turn}", "occurred_at": start + turn * 1000,
                "conversation_id": f"c{c:08d}", "model_name": ("gpt-4o", "claude-3-5-sonnet")[c % 2], "user_id": user,
                "messages": list(history),
                "response": {"choices": [{"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 30, "completion_tokens": 40, "total_tokens": 70}},
            })  # fmt: skip
            history.append({"role": "assistant", "content": answer})
    return out


def _load_part(settings: DatabaseSettings, rows: int, days: int, users: int, part: int, parts: int) -> None:
    configure_logging(level=logging.ERROR)
    storage = Storage(settings)
    events = gen_events(rows, days, users, part, parts)
    for i in range(0, len(events), 1000):
        storage.writer.write(events[i : i + 1000])
    storage.close()


def load(settings: DatabaseSettings, rows: int, days: int, users: int, processes: int) -> float:
    Storage.open(settings).close()
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_load_part, args=(settings, rows, days, users, p, processes))
        for p in range(processes)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"loading failed (exit {p.exitcode})")
    return time.perf_counter() - t0


def pct(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    return s[len(s) // 2] * 1000, s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, s[-1] * 1000


def serve(settings: DatabaseSettings, dsn: str, folder: str) -> tuple[subprocess.Popen[Any], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MES_", "SQL_", "REDIS_"))}
    env.update(MES_SQL_DSN=dsn, MES_DAILY_PARTITION="true", MES_API_KEY=KEY, MES_API_PORT=str(port),
               MES_DATA_DIR=folder, SQL_MAX_IDLE_CONNS="8")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "mes", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("mes serve did not start")


def measure_http(
    base: str, users: int, conv_ids: list[str], n: int, rng: random.Random, warm: bool
) -> dict[str, list[float]]:
    """``n`` requests of each route, one at a time; the seconds each took."""
    out = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        ops = {
            "list": lambda: client.get("/api/v1/conversations", params={"user_id": rng.randint(1, users)}),
            "get": lambda: client.get(f"/api/v1/conversations/{rng.choice(conv_ids)}"),
            "stats": lambda: client.get(
                "/api/v1/stats/conversations", params={"user_id": rng.randint(1, users)}
            ),
        }
        for name, op in ops.items():
            for _ in range(50 if warm else 5):
                op()  # warm up (a new keep-alive connection each round)
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = op()
                samples.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            out[name] = samples
    return out


def go_method(
    storage: Storage, users: int, conv_ids: list[str], n: int
) -> dict[str, tuple[float, float, float]]:
    """The Go version's reads: every daily table, merged and sorted in memory."""
    q = storage.engine.dialect.identifier_preparer.quote
    tables = sorted(t for t in storage.catalog.refresh() if t.startswith("conversation_histories_2"))
    from sqlalchemy import inspect

    inspector = inspect(storage.engine)
    for t in tables:  # the indexes Go's model declares
        have = {ix["name"] for ix in inspector.get_indexes(t)}
        for col in ("user_id", "conversation_id"):
            ix = f"ix_go_{t[-10:]}_{col}"
            if ix not in have:
                with storage.engine.begin() as conn:
                    conn.execute(text(f"CREATE INDEX {q(ix)} ON {q(t)} ({col})"))
    rng = random.Random(5)
    out = {}
    with storage.engine.connect() as conn:

        def go_list() -> None:
            user = rng.randint(1, users)
            convs: dict[str, int] = {}
            for t in tables:
                for cid, last in conn.execute(text(
                        f"SELECT conversation_id, MAX(created_at_ms) FROM {q(t)} WHERE user_id = :u GROUP BY conversation_id"),
                        {"u": user}):  # fmt: skip
                    convs[cid] = max(convs.get(cid, 0), last)
            sorted(convs.items(), key=lambda kv: -kv[1])[:20]

        def go_get() -> None:
            cid = rng.choice(conv_ids)
            rows = []
            for t in tables:
                rows += conn.execute(text(f"SELECT role, content, created_at_ms FROM {q(t)} WHERE conversation_id = :c "
                                          "ORDER BY created_at_ms DESC LIMIT 50"), {"c": cid}).fetchall()  # fmt: skip
            sorted(rows, key=lambda r: r[2])[-50:]

        def go_stats() -> None:
            user = rng.randint(1, users)
            rows = []
            for t in tables:
                rows += conn.execute(text(f"SELECT conversation_id, model_name, total_tokens, created_at_ms FROM {q(t)} "
                                          "WHERE user_id = :u ORDER BY created_at_ms DESC LIMIT 1000"), {"u": user}).fetchall()  # fmt: skip
            rows = sorted(rows, key=lambda r: -r[3])[:1000]
            len({r[0] for r in rows}), sum(r[2] for r in rows)

        for name, op in (("list", go_list), ("get", go_get), ("stats", go_stats)):
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                op()
                samples.append(time.perf_counter() - t0)
            out[name] = pct(samples)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="all", choices=["all", "mysql", "postgresql", "sqlite"])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--go-requests", type=int, default=100, help="requests of the (slow) every-table method"
    )
    parser.add_argument("--processes", type=int, default=2, help="loader processes")
    parser.add_argument("--reuse", action="store_true", help="keep and reuse loaded databases")
    parser.add_argument("--days", default="30,365")
    parser.add_argument(
        "--rounds", type=int, default=10, help="alternating rounds the requests are split into"
    )
    args = parser.parse_args(argv)
    configure_logging(level=logging.ERROR)
    backends = ["mysql", "postgresql", "sqlite"] if args.backend == "all" else [args.backend]
    folder = os.environ.get("MES_BENCH_DIR") or tempfile.mkdtemp(prefix="mes-bench-read-")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    day_counts = [int(d) for d in args.days.split(",")]
    for backend in backends:
        # Load (or find) every retention first, then serve them all at once and measure them
        # in alternating rounds, so a change in the machine's load falls on each alike.
        prepared = {}
        for days in day_counts:
            db = f"mes_bench_read_{days}"
            dsn = {"mysql": f"root:@tcp(127.0.0.1:3306)/{db}", "postgresql": f"postgres://postgres@127.0.0.1:5432/{db}",
                   "sqlite": f"sqlite:///{folder}/{db}.db"}[backend]  # fmt: skip
            target = wbench.Target(backend, dsn, dsn, folder)
            target.settings = DatabaseSettings.from_env({"MES_SQL_DSN": dsn, "MES_DAILY_PARTITION": "true",
                                                         "SQL_MAX_IDLE_CONNS": "4", "MES_DATA_DIR": folder})  # fmt: skip
            storage = Storage.open(target.settings)
            with storage.engine.connect() as conn:
                have = int(
                    conn.execute(text("SELECT COALESCE(SUM(messages), 0) FROM mes_daily_stats")).scalar_one()
                )
            storage.close()
            if not (args.reuse and have >= args.rows * 0.9):
                target.reset()
                seconds = load(target.settings, args.rows, days, args.users, args.processes)
                print(f"{backend} {days} days: loaded {args.rows} rows in {seconds:.0f} s", flush=True)
            storage = Storage.open(target.settings)
            with storage.engine.connect() as conn:
                rows = int(conn.execute(text("SELECT SUM(messages) FROM mes_daily_stats")).scalar_one())
                conv_ids = [
                    r[0]
                    for r in conn.execute(text("SELECT conversation_id FROM mes_conversations LIMIT 5000"))
                ]
            prepared[days] = (target, storage, rows, conv_ids)
        servers = {
            days: serve(
                target.settings,
                sqlalchemy_url(target.settings.db).render_as_string(hide_password=False),
                folder,
            )
            for days, (target, _s, _r, _c) in prepared.items()
        }
        samples: dict[int, dict[str, list[float]]] = {d: {} for d in prepared}
        rngs = {d: random.Random(5) for d in prepared}
        try:
            per_round = max(1, args.requests // args.rounds)
            for i in range(args.rounds):
                order = day_counts if i % 2 == 0 else day_counts[::-1]
                for days in order:
                    got = measure_http(
                        servers[days][1], args.users, prepared[days][3], per_round, rngs[days], i == 0
                    )
                    for op, s in got.items():
                        samples[days].setdefault(op, []).extend(s)
        finally:
            for proc, _base in servers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        for days, (target, storage, rows, conv_ids) in prepared.items():
            go = go_method(storage, args.users, conv_ids, args.go_requests)
            storage.close()
            mes_http = {op: pct(s) for op, s in samples[days].items()}
            results[(backend, days)] = {"rows": rows, "mes": mes_http, "go": go}
            if not args.reuse:
                target.reset()
    print(
        f"\n{'backend':<11}{'days':>5}{'rows':>9}  {'op':<6}{'MES p50':>9}{'p99':>8}{'max':>8}   {'every-table p50':>15}{'p99':>9}{'max':>9}"
    )
    ok = True
    for (backend, days), r in results.items():
        for op in ("list", "get", "stats"):
            m, g = r["mes"][op], r["go"][op]
            print(
                f"{backend:<11}{days:>5}{r['rows']:>9}  {op:<6}{m[0]:>9.2f}{m[1]:>8.2f}{m[2]:>8.1f}   {g[0]:>15.2f}{g[1]:>9.2f}{g[2]:>9.1f}"
            )
            ok = ok and m[1] <= 10
    for backend in backends:
        if (backend, 30) in results and (backend, 365) in results:
            for op in ("list", "get", "stats"):
                ratio = results[(backend, 365)]["mes"][op][1] / results[(backend, 30)]["mes"][op][1]
                print(f"{backend:<11} {op:<6} MES p99 365 days / 30 days: {ratio:.2f}")
                ok = ok and ratio <= 1.5
    print("targets: p99 <= 10 ms through HTTP, 365 days within 1.5x of 30 days:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
