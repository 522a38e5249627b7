"""Soak: steady load against MariaDB for ``--minutes``; memory flat, no connection leak.

    python bench/soak.py --minutes 30 --rate 500

One producer process records ``--rate`` events/s; ``--workers`` ``mes worker`` processes
write them. Every ``--every`` seconds it samples the RSS of the producer and of each
worker (``/proc/<pid>/status``) and MariaDB's ``Threads_connected``. Prints the samples
of the first and last minute and the change; fails if a process's RSS grew more than
``--rss-tolerance`` MB between the end of the first minute (warm) and the end, or if the
server's connection count grew. Uses its own ``redis-server`` and database ``mes_soak``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos

from mes.config.settings import ProducerSettings
from mes.log import configure_logging


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def produce(url: str, spool: str, rate: float, seconds: float) -> None:
    from mes.producer import Producer

    configure_logging(level=logging.ERROR)
    producer = Producer(ProducerSettings.from_env({"REDIS_CONN_STRING": url, "MES_SPOOL_DIR": spool}))
    gap, t_next, n = 1.0 / rate, time.perf_counter(), 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for ev in chaos.make_events(1000, n, 2, seed=n):  # fresh events, fresh conversations
            t_next += gap
            delay = t_next - time.perf_counter()
            if delay > 0.0002:
                time.sleep(delay)
            producer.record_serialized(orjson.dumps(ev))
        n += 1
    producer.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_produce":
        produce(argv[1], argv[2], float(argv[3]), float(argv[4]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument(
        "--rss-tolerance", type=float, default=20.0, help="MB a process may grow after warm-up"
    )
    args = parser.parse_args(argv)
    configure_logging(level=logging.ERROR)
    c = chaos.Chaos(
        chaos.parse(["--backend", "mysql", "--database", "mes_soak", "--workers", str(args.workers)])
    )
    from sqlalchemy import text

    from mes.storage import Storage

    samples: list[tuple[float, float, list[float], int]] = []
    try:
        c.target.reset()
        storage = Storage.open(c.target.settings)
        c.redis.start()
        for slot in range(args.workers):
            c.start_worker(slot)
        seconds = args.minutes * 60
        producer = subprocess.Popen([sys.executable, __file__, "_produce", c.redis.url,
                                     os.path.join(c.folder, "spool"), str(args.rate), str(seconds)])  # fmt: skip
        t0 = time.monotonic()
        while producer.poll() is None:
            with storage.engine.connect() as conn:
                threads = int(conn.execute(text("SHOW STATUS LIKE 'Threads_connected'")).one()[1])
            samples.append(
                (time.monotonic() - t0, rss_mb(producer.pid), [rss_mb(w.pid) for w in c.workers], threads)
            )
            time.sleep(args.every)
        applied = c.ledger_count(storage)
        storage.close()
    finally:
        c.close()
    print(
        f"{args.minutes:.0f} min at {args.rate:.0f} events/s, {args.workers} workers, MariaDB; {applied} events applied"
    )
    print(f"{'t (s)':>7}{'producer MB':>13}{'workers MB':>22}{'server conns':>14}")
    shown = [s for s in samples if s[0] <= 60] + samples[-6:]
    for t, p, ws, th in shown:
        print(f"{t:>7.0f}{p:>13.1f}{', '.join(f'{w:.1f}' for w in ws):>22}{th:>14}")
    warm = next((s for s in samples if s[0] >= 60), samples[0])
    end = samples[-1]
    growth = [end[1] - warm[1]] + [e - w for e, w in zip(end[2], warm[2], strict=False)]
    conn_growth = end[3] - warm[3]
    print(f"growth after warm-up: producer {growth[0]:+.1f} MB, workers {', '.join(f'{g:+.1f}' for g in growth[1:])} MB; "
          f"server connections {conn_growth:+d}")  # fmt: skip
    ok = all(g <= args.rss_tolerance for g in growth) and conn_growth <= 0
    print("memory flat and no connection leak:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
