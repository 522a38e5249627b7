"""What a large ingest does to every other request the API serves at the same time.

    python bench/ingest_stall.py
    python bench/ingest_stall.py --mb 15 --rounds 5 --route /api/v1/conversations?user_id=1

``mes serve`` runs in a subprocess on its own SQLite database and its own ``redis-server``
(both in a temporary folder, removed afterwards). One thread sends small GETs back to
back on a keep-alive connection (``--route``, default ``/healthz``); the main thread
first lets it run alone for ``--quiet`` seconds, then posts ``--rounds`` ingests of
``--mb`` MB (1,000 events, one ``--mb``/1000 KB message each; the body is built once,
off the clock) one after another, pausing ``--quiet`` seconds between them. It prints
the p50 and max latency of the GETs that overlapped an ingest next to those of the GETs
sent with no ingest running, and their ratio, plus how long each ingest took.

A server that parses and checks the body on its event loop stalls every GET for as long
as that takes (issue 16: ~0.8 s for 15 MB); one that does it in its thread pool keeps
answering, slowed only by sharing the GIL. Run it on both commits to compare them: the
ratio is what to read, the absolute figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import orjson

from mes.embedded import EmbeddedRedis, free_port

KEY = "bench-ingest-stall-operator-key-0000"


def body_of(megabytes: float, events: int = 1000) -> bytes:
    content = "x" * max(1, int(megabytes * 1_000_000 / events) - 200)
    return orjson.dumps({"events": [
        {"kind": "chat", "conversation_id": f"stall-{n}", "user_id": 1, "model_name": "gpt-4o",
         "messages": [{"role": "user", "content": content}],
         "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}}
        for n in range(events)
    ]})  # fmt: skip


def serve(folder: str, redis_url: str) -> tuple[subprocess.Popen[Any], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MES_", "SQL_", "REDIS_"))}
    env.update(MES_SQL_DSN=f"sqlite:///{folder}/mes.db", MES_DATA_DIR=folder, MES_API_KEY=KEY,
               MES_API_PORT=str(port), REDIS_CONN_STRING=redis_url, MES_SPOOL_DIR=f"{folder}/spool")  # fmt: skip
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
    proc.kill()
    raise SystemExit("mes serve did not start")


class Prober(threading.Thread):
    """GETs back to back until stopped; (start, end) of each, in perf_counter seconds."""

    def __init__(self, base: str, route: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        self.route = route
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            r = self.client.get(self.route)
            self.samples.append((t0, time.perf_counter()))
            if r.status_code != 200:
                raise SystemExit(f"GET {self.route}: {r.status_code} {r.text[:200]}")
        self.client.close()


def figures(latencies: list[float]) -> str:
    if not latencies:
        return "no samples"
    return f"n={len(latencies):>5}  p50 {statistics.median(latencies) * 1000:7.2f} ms  max {max(latencies) * 1000:8.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=15.0, help="size of each ingest body, MB")
    parser.add_argument("--rounds", type=int, default=5, help="ingests, one after another")
    parser.add_argument("--quiet", type=float, default=1.0, help="seconds of GETs alone before and between")
    parser.add_argument("--route", default="/healthz", help="what the small GETs ask for")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="mes-bench-stall-")
    redis = EmbeddedRedis(folder, port=0)
    redis.start()
    proc = None
    try:
        proc, base = serve(folder, redis.url)
        body = body_of(args.mb)
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as poster:
            poster.post("/api/v1/events", content=body_of(0.1, 10))  # warm up, off the clock
            prober = Prober(base, args.route)
            prober.start()
            windows: list[tuple[float, float]] = []
            time.sleep(args.quiet)
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                r = poster.post("/api/v1/events", content=body)
                windows.append((t0, time.perf_counter()))
                if r.status_code != 200 or r.json()["accepted"] != 1000:
                    raise SystemExit(f"ingest: {r.status_code} {r.text[:300]}")
                time.sleep(args.quiet)
            prober.stop.set()
            prober.join(60)
        during, alone = [], []
        for start, end in prober.samples[5:]:  # the first few warm the connection up
            overlaps = any(start < w_end and end > w_start for w_start, w_end in windows)
            (during if overlaps else alone).append(end - start)
        print(f"ingest of {len(body) / 1e6:.1f} MB (1000 events), {args.rounds} rounds; GET {args.route}")
        print(f"  ingest took    {figures([e - s for s, e in windows])}")
        print(f"  GETs alone     {figures(alone)}")
        print(f"  GETs during    {figures(during)}")
        if alone and during:
            p50 = statistics.median(during) / statistics.median(alone)
            print(f"  during / alone: p50 x{p50:.1f}, max x{max(during) / max(alone):.1f}")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        redis.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
