"""Overload: producers record faster than the workers can write, for a sustained period.

    python bench/overload.py --backend mysql --producers 3 --rate 3000 --seconds 60

``--producers`` processes record ``--rate`` events/s each for ``--seconds`` against one
worker (``--workers``), with the producer's memory bound set low
(``MES_BUFFER_MAX_EVENTS``). Reports each producer's peak RSS (``VmHWM``) next to its
buffer bound, the peak backlog in Redis (events staged + batches waiting) and in the
spools, the time to drain once load stops, and checks that every event was applied
exactly once. Uses its own ``redis-server`` and database ``mes_overload``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos

from mes.config.settings import ProducerSettings
from mes.log import configure_logging


def vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def produce(url: str, spool: str, rate: float, seconds: float, no: int, buffer_events: int, out: str) -> None:
    from mes.producer import Producer

    configure_logging(level=logging.ERROR)
    settings = ProducerSettings.from_env({"REDIS_CONN_STRING": url, "MES_SPOOL_DIR": spool,
                                          "MES_BUFFER_MAX_EVENTS": str(buffer_events)})  # fmt: skip
    count = int(rate * seconds)
    events = chaos.make_events(count, no, 2, seed=5)
    rss_start = vm_hwm_kb()
    producer = Producer(settings)
    gap = 1.0 / rate
    t_next = time.perf_counter()
    for ev in events:
        t_next += gap
        delay = t_next - time.perf_counter()
        if delay > 0.0002:
            time.sleep(delay)
        producer.record_serialized(orjson.dumps(ev))
    producer.close(timeout=120)
    stats = producer.stats()
    with open(out, "w") as f:
        json.dump({"ids": [e["event_id"] for e in events], "rss_start_kb": rss_start, "rss_peak_kb": vm_hwm_kb(),
                   "spooled": stats.spooled, "dropped": stats.dropped}, f)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_produce":
        url, spool, rate, seconds, no, buf, out = argv[1:8]
        produce(url, spool, float(rate), float(seconds), int(no), int(buf), out)
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="mysql", choices=["mysql", "postgresql", "sqlite"])
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=3000.0, help="events/s per producer")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--buffer-events", type=int, default=2000, help="each producer's MES_BUFFER_MAX_EVENTS"
    )
    args = parser.parse_args(argv)
    configure_logging(level=logging.ERROR)
    c = chaos.Chaos(
        chaos.parse(["--backend", args.backend, "--database", "mes_overload", "--workers", str(args.workers)])
    )
    from mes.queue import queue_figures
    from mes.storage import Storage

    try:
        c.target.reset()
        storage = Storage.open(c.target.settings)
        c.redis.start()
        for slot in range(args.workers):
            c.start_worker(slot)
        import redis

        client = redis.Redis(port=c.redis.port)
        spools = [os.path.join(c.folder, f"spool-{p}") for p in range(args.producers)]
        outs = [os.path.join(c.folder, f"out-{p}.json") for p in range(args.producers)]
        peak = {"redis_events": 0, "spool_bytes": 0}
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.5):
                fig = queue_figures(client, "mes")
                batched = sum(client.llen(k) for k in client.scan_iter("mes:batch:*", count=1000))
                peak["redis_events"] = max(peak["redis_events"], fig["staged_events"] + batched)
                size = sum(
                    os.path.getsize(os.path.join(s, f))
                    for s in spools
                    if os.path.isdir(s)
                    for f in os.listdir(s)
                )
                peak["spool_bytes"] = max(peak["spool_bytes"], size)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.monotonic()
        procs = [subprocess.Popen([sys.executable, __file__, "_produce", c.redis.url, spools[p], str(args.rate),
                                   str(args.seconds), str(p), str(args.buffer_events), outs[p]])
                 for p in range(args.producers)]  # fmt: skip
        for p in procs:
            p.wait()
        load_end = time.monotonic()
        results = []
        for out in outs:
            with open(out) as f:
                results.append(json.load(f))
        expected = sum(len(r["ids"]) for r in results)
        applied = c.drain(storage, expected, spools)
        drained = time.monotonic()
        done.set()
        check = (
            c.check(storage, {eid: ("chat", 0) for r in results for eid in r["ids"]}) if applied >= 0 else {}
        )
        storage.close()
    finally:
        c.close()
    print(
        f"{args.producers} producers x {args.rate:.0f} events/s for {args.seconds:.0f} s against {args.workers} worker(s) on {args.backend}"
    )
    for n, r in enumerate(results):
        print(f"  producer {n}: RSS {r['rss_start_kb'] / 1024:.0f} MB at start, peak {r['rss_peak_kb'] / 1024:.0f} MB "
              f"(buffer bound {args.buffer_events} events); spooled {r['spooled']}, dropped {r['dropped']}")  # fmt: skip
    print(f"  offered {expected / (load_end - t0):.0f} events/s; peak backlog in Redis {peak['redis_events']} events, "
          f"in the spools {peak['spool_bytes'] / 1e6:.1f} MB")  # fmt: skip
    print(f"  drained {drained - load_end:.0f} s after the load stopped; applied {applied} of {expected}")
    lost = expected - applied
    print(f"  lost {max(0, lost)}; rollups vs recount: {check.get('rollup_differences')} difference(s)")
    return 0 if lost <= 0 and not check.get("rollup_differences") else 1


if __name__ == "__main__":
    sys.exit(main())
