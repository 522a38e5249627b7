"""Fault injection: record events from several producer processes while workers are
SIGKILLed, Redis restarts, the database goes away and producers lose Redis; then drain
and check that every event is in its table exactly once.

    python bench/chaos.py --backend mysql --events 100000 --producers 4 --workers 2
    python bench/chaos.py --backend postgresql --events 100000

What it runs, all its own: a ``redis-server`` with AOF (``appendfsync always``: an
acknowledged RPUSH survives a kill, so a restart may lose nothing), databases
``mes_chaos`` on the local MariaDB/PostgreSQL (SQLite in a temporary folder), ``mes
worker`` processes, producer processes (``--producers``, each with its own spool), and
two TCP proxies it can cut: producers → Redis, and workers → database. The database
servers are shared with other users of the machine, so "the database stops" is a cut of
every worker connection at the proxy (connections reset, new ones refused) for
``--db-outage`` seconds; on SQLite it is an exclusive lock held for that long.

Faults, in rotation at random intervals while producers record: SIGKILL of a random
worker (restarted a second later), SIGKILL and restart of Redis, database outage, and
producers cut off Redis.

With ``--redis sentinel`` the queue is a Redis Sentinel setup instead (a primary, a
replica and three sentinels, ``tests/sentinel_cluster.py``), every process uses the
``redis+sentinel://`` form of ``REDIS_CONN_STRING``, and the Redis faults are a
``SENTINEL FAILOVER`` (the replica promoted, the old primary demoted) and a SIGKILL of
the primary (the sentinels promote the replica; the killed node restarts and becomes its
replica); producers reach the nodes the sentinels name, so there is no producer cut. After the producers finish, it drains as an operator would
(``mes replay failed`` for jobs that used up their retries, ``mes replay spool`` for
what a producer left on disk) until every event is applied or ``--drain-timeout``.

Then it checks, per event id: lost (no row), duplicated (the answer row stored twice),
misfiled (not in the table of its own day in ``TZ``), and that the index and rollups
equal a recount. Prints the figures; exits 1 on any loss, duplicate or misfile.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import orjson
from sqlalchemy import text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import writer as wbench  # noqa: E402

from mes.config.settings import ProducerSettings  # noqa: E402
from mes.embedded import find_redis_binary  # noqa: E402
from mes.log import configure_logging  # noqa: E402
from tests.netproxy import Proxy  # noqa: E402
from tests.sentinel_cluster import SentinelCluster  # noqa: E402

DAY_MS = 86_400_000
log = print


def now_ms() -> int:
    return int(time.time() * 1000)


class Redis:
    def __init__(self, folder: str) -> None:
        self.binary = find_redis_binary()
        if self.binary is None:
            raise SystemExit("no redis-server (pip install 'mes-history[embedded]')")
        self.dir = os.path.join(folder, "redis")
        os.makedirs(self.dir, exist_ok=True)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        for _ in range(400):
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise SystemExit("redis did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def make_events(count: int, producer: int, days: int, seed: int) -> list[dict[str, Any]]:
    """Multi-turn chats and some failed requests, spread over the last ``days`` days."""
    rng = random.Random(seed * 100 + producer)
    out: list[dict[str, Any]] = []
    c = 0
    while len(out) < count:
        c += 1
        cid, user = f"p{producer}-c{c}", rng.randint(1, 200)
        base = now_ms() - rng.randint(0, days - 1) * DAY_MS - rng.randint(0, 3_600_000)
        history: list[dict[str, Any]] = []
        for turn in range(rng.randint(1, 5)):
            history.append(
                {"role": "user", "content": f"{cid} question {turn} " + "x" * rng.randint(10, 400)}
            )
            ev: dict[str, Any] = {"schema_version": 1, "event_id": f"p{producer}-e{len(out)}-{rng.getrandbits(32):08x}",
                                  "occurred_at": base + turn * 1000, "conversation_id": cid, "user_id": user,
                                  "model_name": "gpt-4o", "messages": list(history)}  # fmt: skip
            if rng.random() < 0.1:
                ev.update(kind="error", error_code=429, error_message="rate limited")
                history.pop()
            else:
                answer = f"{cid} answer {turn}"
                ev.update(kind="chat", response={"choices": [{"message": {"role": "assistant", "content": answer},
                          "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 4,
                          "total_tokens": 7}})  # fmt: skip
                history.append({"role": "assistant", "content": answer})
            out.append(ev)
            if len(out) >= count:
                break
    return out


def produce(url: str, spool: str, count: int, producer_no: int, seconds: float, days: int, out: str) -> None:
    """A producer process: ``count`` events over ``seconds``; notes ids, days and its worst call."""
    from mes.producer import Producer

    configure_logging(level=logging.ERROR)
    producer = Producer(ProducerSettings.from_env({"REDIS_CONN_STRING": url, "MES_SPOOL_DIR": spool}))
    events = make_events(count, producer_no, days, seed=7)
    gap = seconds / max(1, count)
    worst = 0
    t_next = time.perf_counter()
    for ev in events:
        t_next += gap
        delay = t_next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        data = orjson.dumps(ev)
        t0 = time.perf_counter_ns()
        producer.record_serialized(data)
        worst = max(worst, time.perf_counter_ns() - t0)
    producer.close(timeout=30)
    stats = producer.stats()
    with open(out, "w") as f:
        json.dump({"events": [(e["event_id"], e["kind"], e["occurred_at"]) for e in events], "worst_call_us": worst / 1000,
                   "stats": {k: getattr(stats, k) for k in ("recorded", "enqueued", "spooled", "resent", "dropped")}}, f)  # fmt: skip


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.folder = tempfile.mkdtemp(prefix="mes-chaos-")
        self.rng = random.Random(args.seed)
        self.faults: Counter[str] = Counter()
        self.workers: list[subprocess.Popen[Any]] = []
        self.stop_faults = threading.Event()
        dsn = {"mysql": f"root:@tcp(127.0.0.1:3306)/{args.database}",
               "postgresql": f"postgres://postgres@127.0.0.1:5432/{args.database}",
               "sqlite": f"sqlite:///{self.folder}/chaos.db"}[args.backend]  # fmt: skip
        if args.dsn:
            dsn = args.dsn
        self.target = wbench.Target(args.backend, dsn, dsn, self.folder)
        from mes.config.settings import DatabaseSettings

        self.target.settings = DatabaseSettings.from_env({"MES_SQL_DSN": dsn, "MES_DAILY_PARTITION": "true",
                                                          "SQL_MAX_IDLE_CONNS": "4", "MES_DATA_DIR": self.folder})  # fmt: skip
        self.redis = Redis(self.folder)
        self.sentinel: SentinelCluster | None = None
        if args.redis == "sentinel":
            assert self.redis.binary is not None
            self.sentinel = SentinelCluster(self.redis.binary, os.path.join(self.folder, "sentinel"))
        self.redis_proxy: Proxy | None = None
        self.db_proxy: Proxy | None = None

    # -- processes ---------------------------------------------------------------------
    def worker_env(self) -> dict[str, str]:
        from mes.storage.engine import sqlalchemy_url

        url = sqlalchemy_url(self.target.settings.db)
        if self.db_proxy is not None:
            url = url.set(host="127.0.0.1", port=self.db_proxy.port)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MES_", "SQL_", "REDIS_"))}
        return {**base, "MES_SQL_DSN": url.render_as_string(hide_password=False), "REDIS_CONN_STRING": self.redis_url,
                "MES_DAILY_PARTITION": "true", "SQL_MAX_IDLE_CONNS": "4", "MES_DATA_DIR": self.folder,
                "MES_RETRY_INTERVALS": "1,2,4,8", "MES_JOB_TIMEOUT": "20", "MES_MAINTENANCE_INTERVAL": "5",
                "SQL_MAX_LIFETIME": "30",
                # a worker restarted during an outage waits it out, as under systemd or compose
                "MES_STARTUP_WAIT": "3600"}  # fmt: skip

    def start_worker(self, slot: int) -> None:
        logf = open(os.path.join(self.folder, f"worker-{slot}.log"), "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "mes", "worker"], env=self.worker_env(), stdout=logf, stderr=logf
        )
        logf.close()
        if slot < len(self.workers):
            self.workers[slot] = proc
        else:
            self.workers.append(proc)

    @property
    def redis_url(self) -> str:
        return self.sentinel.url() if self.sentinel is not None else self.redis.url

    def fault_kinds(self) -> list[tuple[str, Any]]:
        if self.sentinel is not None:
            return [("worker SIGKILL", self.kill_worker), ("sentinel failover", self.sentinel_failover),
                    ("database outage", self.db_outage), ("primary SIGKILL", self.kill_primary)]  # fmt: skip
        return [("worker SIGKILL", self.kill_worker), ("redis restart", self.restart_redis),
                ("database outage", self.db_outage), ("producers cut off redis", self.cut_producers)]  # fmt: skip

    # -- faults ------------------------------------------------------------------------
    def kill_worker(self) -> None:
        slot = self.rng.randrange(len(self.workers))
        self.workers[slot].kill()
        self.workers[slot].wait(10)
        time.sleep(1.0)
        self.start_worker(slot)

    def restart_redis(self) -> None:
        self.redis.kill()
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.redis.start()

    def db_outage(self) -> None:
        seconds = self.rng.uniform(*self.args.db_outage)
        if self.db_proxy is not None:
            self.db_proxy.cut()
            time.sleep(seconds)
            self.db_proxy.restore()
            return
        import sqlite3

        conn = sqlite3.connect(self.target.settings.db.database, timeout=30)
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.rollback()
        conn.close()

    def sentinel_failover(self) -> None:
        assert self.sentinel is not None
        self.sentinel.failover(timeout=180)

    def kill_primary(self) -> None:
        assert self.sentinel is not None
        self.sentinel.kill_primary(timeout=180)

    def cut_producers(self) -> None:
        assert self.redis_proxy is not None
        self.redis_proxy.cut()
        time.sleep(self.rng.uniform(*self.args.redis_cut))
        self.redis_proxy.restore()

    def inject(self) -> None:
        kinds = self.fault_kinds()
        n = 0
        while not self.stop_faults.wait(self.rng.uniform(*self.args.fault_gap)):
            name, fault = kinds[n % len(kinds)]
            n += 1
            log(f"  fault: {name}", flush=True)
            try:
                fault()
            except RuntimeError as exc:  # a Sentinel setup that did not settle: say so, go on
                log(f"  fault: {name}: {exc}", flush=True)
                self.faults[f"{name} (unsettled)"] += 1
            self.faults[name] += 1

    # -- the run -----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from mes.storage import Storage

        args = self.args
        self.target.reset()
        storage = Storage.open(self.target.settings)
        if self.sentinel is not None:
            self.sentinel.start()
            proxied = self.sentinel.url()
        else:
            self.redis.start()
            self.redis_proxy = Proxy("127.0.0.1", self.redis.port)
            proxied = f"redis://127.0.0.1:{self.redis_proxy.port}/0"
        if args.backend != "sqlite":
            db = self.target.settings.db
            self.db_proxy = Proxy(db.host or "127.0.0.1", db.port or 0)
        for slot in range(args.workers):
            self.start_worker(slot)
        per = args.events // args.producers
        outs = [os.path.join(self.folder, f"producer-{p}.json") for p in range(args.producers)]
        spools = [os.path.join(self.folder, f"spool-{p}") for p in range(args.producers)]
        t0 = time.monotonic()
        producers = [subprocess.Popen([sys.executable, __file__, "_produce", proxied, spools[p], str(per), str(p),
                                       str(args.seconds), str(args.days), outs[p]]) for p in range(args.producers)]  # fmt: skip
        injector = threading.Thread(target=self.inject, daemon=True)
        injector.start()
        for p in producers:
            p.wait()
        self.stop_faults.set()
        injector.join()
        # every kind at least once, even in a short run
        for name, fault in self.fault_kinds():
            if not self.faults[name]:
                log(f"  fault: {name}", flush=True)
                fault()
                self.faults[name] += 1
        recorded_at = time.monotonic() - t0
        noted = []
        for out in outs:
            with open(out) as f:
                noted.append(json.load(f))
        expected = {eid: (kind, ms) for n in noted for eid, kind, ms in n["events"]}
        drain_start = time.monotonic()
        applied = self.drain(storage, len(expected), spools)
        drain_s = time.monotonic() - drain_start
        result = self.check(storage, expected)
        result.update(
            recorded=len(expected), applied_ledger=applied, faults=dict(self.faults), drain_s=drain_s,
            record_s=recorded_at, worst_call_us=max(n["worst_call_us"] for n in noted),
            dropped_by_producers=sum(n["stats"]["dropped"] for n in noted),
            spooled_by_producers=sum(n["stats"]["spooled"] for n in noted),
        )  # fmt: skip
        storage.close()
        return result

    def ledger_count(self, storage: Any) -> int:
        q = storage.engine.dialect.identifier_preparer.quote
        total = 0
        try:
            with storage.engine.connect() as conn:
                for name in storage.catalog.refresh():
                    if name.startswith("mes_event_ledger"):
                        total += int(conn.execute(text(f"SELECT COUNT(*) FROM {q(name)}")).scalar_one())
        except Exception:
            return -1
        return total

    def drain(self, storage: Any, expected: int, spools: list[str]) -> int:
        deadline = time.monotonic() + self.args.drain_timeout
        env = self.worker_env()
        last_replay = 0.0
        while time.monotonic() < deadline:
            count = self.ledger_count(storage)
            if count >= expected:
                return count
            if time.monotonic() - last_replay > 10:
                last_replay = time.monotonic()
                subprocess.run(
                    [sys.executable, "-m", "mes", "replay", "failed"], env=env, capture_output=True
                )
                for spool in spools:
                    subprocess.run([sys.executable, "-m", "mes", "replay", "spool", "--dir", spool], env=env,
                                   capture_output=True)  # fmt: skip
            time.sleep(1.0)
        return self.ledger_count(storage)

    def check(self, storage: Any, expected: dict[str, tuple[str, int]]) -> dict[str, Any]:
        from mes.storage.verify import compare, read_index, recount

        q = storage.engine.dialect.identifier_preparer.quote
        found: dict[str, list[str]] = defaultdict(list)  # event id -> tables with its answer / error rows
        with storage.engine.connect() as conn:
            for name in sorted(storage.catalog.refresh()):
                if name.startswith("conversation_histories_2"):
                    sql = f"SELECT event_id FROM {q(name)} WHERE is_response = :t"
                    for (eid,) in conn.execute(text(sql), {"t": True}):
                        found[eid].append(name)
                elif name.startswith("error_conversation_histories_2"):
                    for (eid,) in conn.execute(text(f"SELECT DISTINCT event_id FROM {q(name)}")):
                        found[eid].append(name)
            dead = int(conn.execute(text("SELECT COUNT(*) FROM mes_dead_letters")).scalar_one())
        lost = dup = misfiled = 0
        for eid, (kind, ms) in expected.items():
            tables = found.get(eid, [])
            if not tables:
                lost += 1
                continue
            if len(tables) > 1:
                dup += 1
            day = storage.calendar.day_of(ms)
            base = "conversation_histories" if kind == "chat" else "error_conversation_histories"
            if any(t != f"{base}_{day:%Y_%m_%d}" for t in tables):
                misfiled += 1
        problems = compare(recount(storage.catalog, storage.calendar), read_index(storage.catalog))
        return {"lost": lost, "duplicated": dup, "misfiled": misfiled, "dead_lettered": dead,
                "rollup_differences": len(problems), "rollup_examples": problems[:3]}  # fmt: skip

    def close(self) -> None:
        self.stop_faults.set()
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
        for proxy in (self.redis_proxy, self.db_proxy):
            if proxy is not None:
                proxy.close()
        self.redis.stop()
        if self.sentinel is not None:
            self.sentinel.stop()
        if not self.args.keep:
            self.target.reset()
            shutil.rmtree(self.folder, ignore_errors=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="mysql", choices=["mysql", "postgresql", "sqlite"])
    parser.add_argument("--dsn", default=None, help="the database (default: mes_chaos on the local server)")
    parser.add_argument("--database", default="mes_chaos")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--redis",
        default="single",
        choices=["single", "sentinel"],
        help="one redis-server, or a Sentinel setup (primary, replica, 3 sentinels)",
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="how long producers record")
    parser.add_argument("--days", type=int, default=3, help="events spread over this many days")
    parser.add_argument("--db-outage", type=float, nargs=2, default=(10.0, 30.0), metavar=("MIN", "MAX"))
    parser.add_argument("--redis-cut", type=float, nargs=2, default=(3.0, 10.0), metavar=("MIN", "MAX"))
    parser.add_argument("--fault-gap", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN", "MAX"))
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the databases and folder for a look")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the whole thing; returns the figures (tests call this)."""
    args = parse(argv)
    configure_logging(level=logging.ERROR)
    chaos = Chaos(args)
    try:
        return chaos.run()
    finally:
        chaos.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_produce":
        url, spool, count, no, seconds, days, out = argv[1:8]
        produce(url, spool, int(count), int(no), float(seconds), int(days), out)
        return 0
    r = run(argv)
    print(f"events recorded        {r['recorded']}")
    print(f"faults injected        {r['faults']}")
    print(f"lost                   {r['lost']}")
    print(f"duplicated             {r['duplicated']}")
    print(f"misfiled               {r['misfiled']}")
    print(f"dead-lettered          {r['dead_lettered']}")
    print(f"rollups vs recount     {r['rollup_differences']} difference(s) {r['rollup_examples']}")
    print(
        f"producers: worst call  {r['worst_call_us']:.0f} µs (spooled {r['spooled_by_producers']}, dropped {r['dropped_by_producers']})"
    )
    print(f"recording took         {r['record_s']:.0f} s; drain after it {r['drain_s']:.0f} s")
    bad = r["lost"] or r["duplicated"] or r["misfiled"] or r["rollup_differences"]
    print("RESULT:", "FAIL" if bad else "0 lost, 0 duplicated, 0 misfiled")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
