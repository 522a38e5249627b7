"""The producer: batching on a fake clock, then real Redis (up, down, back), threads, fork, exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from typing import Any

import orjson

from mes.config.settings import ProducerSettings
from mes.producer import Producer
from mes.producer.batcher import Batcher

from .factories import sample_calls


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(tmp_path: Any, url: str | None, **env: str) -> ProducerSettings:
    values = {"MES_DATA_DIR": str(tmp_path / "data"), **env}
    if url:
        values["REDIS_CONN_STRING"] = url
    return ProducerSettings.from_env(values)


def staged(server: Any) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in server.client().lrange("mes:staging", 0, -1)]


def batched(server: Any) -> list[dict[str, Any]]:
    client = server.client()
    out = []
    for key in client.keys("mes:batch:*"):
        out.extend(orjson.loads(x) for x in client.lrange(key, 0, -1))
    return out


def call(producer: Producer, n: int, **kw: Any) -> str:
    return producer.save_chat_completion(
        f"conv-{n}", [{"role": "user", "content": f"q{n}"}], {"choices": []}, "gpt-4o", 1, 2, 3, **kw
    )


# -- the batcher, a pure object -------------------------------------------------------
def test_batcher_is_ready_by_count_by_bytes_and_by_age_of_oldest_event():
    clock = FakeClock()
    b = Batcher(max_events=3, max_bytes=100, max_age=0.5, clock=clock)  # binary fractions: exact float sums
    assert not b.ready() and b.seconds_until_due() is None
    assert b.append(b"a") is False
    clock.now += 0.25
    b.append(b"b")
    assert not b.ready() and b.seconds_until_due() == 0.25
    clock.now += 0.25  # the *first* event is now 0.5 s old, the second only 0.25 s
    assert b.ready()
    assert b.append(b"c") is True  # full by count
    assert b.drain() == [[b"a", b"b", b"c"]]
    assert not b.ready() and len(b) == 0
    assert b.append(b"x" * 100) is True  # full by bytes


def test_batcher_age_clock_starts_at_first_event_after_a_flush_not_at_the_flush():
    clock = FakeClock()
    b = Batcher(max_events=10, max_bytes=1000, max_age=0.5, clock=clock)
    b.append(b"a")
    b.drain()
    clock.now += 10  # long idle after the flush
    b.append(b"b")
    assert not b.ready()  # a clock started at the flush would call this overdue
    clock.now += 0.5
    assert b.ready()


def test_batcher_drain_cuts_batches_within_both_bounds_and_big_items_travel_alone():
    b = Batcher(max_events=2, max_bytes=10, max_age=1, clock=FakeClock())
    for item in (b"12345", b"123", b"1234", b"x" * 30, b"1", b"2", b"3"):
        b.append(item)
    assert b.drain() == [[b"12345", b"123"], [b"1234"], [b"x" * 30], [b"1", b"2"], [b"3"]]


# -- with a real Redis -----------------------------------------------------------------
def test_calls_return_event_ids_and_flush_puts_small_batches_on_staging(redis_server, tmp_path):
    producer = Producer(settings(tmp_path, redis_server.url))
    ids = [call(producer, n, ip="10.0.0.1") for n in range(5)]
    assert producer.flush(5)
    events = staged(redis_server)
    assert [e["event_id"] for e in events] == ids
    assert events[0]["ip"] == "10.0.0.1" and events[0]["kind"] == "chat" and events[0]["schema_version"] == 1
    assert producer.stats().enqueued == 5 and producer.stats().spooled == 0
    producer.close()


def test_a_large_flush_becomes_its_own_rq_job(redis_server, tmp_path):
    producer = Producer(
        settings(tmp_path, redis_server.url, MES_DIRECT_JOB_MIN_EVENTS="10", MES_LINGER_MS="10000")
    )
    for n in range(25):
        call(producer, n)
    assert producer.flush(5)
    client = redis_server.client()
    assert client.llen("mes:staging") == 0
    assert len(batched(redis_server)) == 25
    job_ids = client.lrange("rq:queue:mes", 0, -1)
    assert len(job_ids) == 1
    data = client.hget(b"rq:job:" + job_ids[0], "data")
    import zlib

    assert orjson.loads(zlib.decompress(data))[0] == "mes.worker.jobs.write_batch"  # JSON, not pickle
    producer.close()


def test_a_batch_goes_to_redis_in_one_socket_write(redis_server):
    """redis-py would write a 500-event push in hundreds of pieces, each letting go of the
    GIL (and waiting up to 5 ms to get it back while the gateway's threads run): MES's
    connection joins them. The batch arrives whole."""
    from mes.producer.transport import Transport, connect_redis

    client = connect_redis(redis_server.url)
    transport = Transport(ProducerSettings.from_env({"REDIS_CONN_STRING": redis_server.url}), client)
    events = [orjson.dumps({"n": n, "text": "x" * 4000}) for n in range(500)]
    transport.push(events)  # connected, and RQ has asked the server its version
    conn = client.connection_pool.get_connection()
    writes: list[int] = []
    real = conn._sock.sendall
    conn._sock = _Counting(conn._sock, lambda data: (writes.append(len(data)), real(data))[1])
    client.connection_pool.release(conn)
    transport.push(events)
    assert len(writes) == 1 and writes[0] > 500 * 4000
    assert batched(redis_server).count({"n": 499, "text": "x" * 4000}) == 2  # both pushes, whole
    transport.close()


class _Counting:
    def __init__(self, sock: Any, sendall: Any) -> None:
        self._sock, self.sendall = sock, sendall

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_linger_flushes_without_an_explicit_flush(redis_server, tmp_path):
    producer = Producer(settings(tmp_path, redis_server.url, MES_LINGER_MS="20"))
    call(producer, 1)
    deadline = time.monotonic() + 5
    while not staged(redis_server) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(staged(redis_server)) == 1
    producer.close()


def test_sample_calls_serialize_exactly_as_given(redis_server, tmp_path):
    producer = Producer(settings(tmp_path, redis_server.url))
    for c in sample_calls():
        getattr(producer, c["call"])(**c["args"])
    producer.flush(5)
    events = staged(redis_server)
    for c, ev in zip(sample_calls(), events, strict=True):
        for key, value in c["args"].items():
            assert ev[key] == value, (c["name"], key)
    producer.close()


def test_many_threads_and_asyncio_record_every_event_once(redis_server, tmp_path):
    producer = Producer(settings(tmp_path, redis_server.url))

    def work(t: int) -> None:
        for n in range(1000):
            call(producer, t * 10_000 + n)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()

    async def from_async() -> None:
        for n in range(500):
            call(producer, 900_000 + n)
            if n % 50 == 0:
                await asyncio.sleep(0)

    asyncio.run(from_async())
    for t in threads:
        t.join()
    producer.flush(10)
    ids = [e["event_id"] for e in staged(redis_server) + batched(redis_server)]
    assert len(ids) == 8500 and len(set(ids)) == 8500
    assert producer.stats().recorded == 8500 == producer.stats().enqueued
    producer.close()


def test_redis_down_spools_to_disk_and_resends_when_redis_is_back(redis_server, tmp_path):
    redis_server.stop()
    producer = Producer(settings(tmp_path, redis_server.url, MES_LINGER_MS="5"))
    ids = [call(producer, n) for n in range(300)]
    assert producer.flush(10)
    stats = producer.stats()
    assert stats.spooled == 300 and stats.enqueued == 0 and stats.dropped == 0
    assert os.listdir(tmp_path / "data" / "spool")
    redis_server.start()
    deadline = time.monotonic() + 20
    while producer.stats().resent < 300 and time.monotonic() < deadline:
        time.sleep(0.1)  # the flusher's idle tick notices Redis is back
    stats = producer.stats()
    assert stats.resent == 300 and stats.spooled == 300 and stats.dropped == 0
    got = {e["event_id"] for e in staged(redis_server) + batched(redis_server)}
    assert set(ids) <= got
    assert not [f for f in os.listdir(tmp_path / "data" / "spool") if f.endswith(".jsonl")]
    producer.close()


def test_a_full_buffer_spills_to_the_spool_from_the_calling_thread(tmp_path):
    """No Redis configured and a tiny buffer: nothing is dropped, everything is on disk."""
    producer = Producer(settings(tmp_path, None, MES_BUFFER_MAX_EVENTS="10", MES_LINGER_MS="60000"))
    for n in range(50):
        call(producer, n)
    producer.close()
    spool = tmp_path / "data" / "spool"
    lines = [line for f in spool.iterdir() for line in f.read_bytes().splitlines()]
    assert len(lines) == 50 and producer.stats().spooled == 50 and producer.stats().dropped == 0


def test_a_big_spool_file_goes_back_as_jobs_within_the_batch_bounds(redis_server, tmp_path):
    """A full buffer spills hundreds of events into one spool file; re-sent as one job it
    would hold a worker and a transaction far past MES_BATCH_MAX_EVENTS."""
    producer = Producer(settings(
        tmp_path, redis_server.url, MES_BUFFER_MAX_EVENTS="10", MES_BATCH_MAX_EVENTS="20",
        MES_DIRECT_JOB_MIN_EVENTS="5", MES_LINGER_MS="60000",
    ))  # fmt: skip
    ids = [call(producer, n) for n in range(300)]
    assert producer.flush(10)
    assert producer.stats().spooled >= 250  # the spill: most of them are in the spool
    deadline = time.monotonic() + 20
    while producer.stats().resent < producer.stats().spooled and time.monotonic() < deadline:
        time.sleep(0.1)  # the flusher's idle tick re-sends the spool
    producer.close()
    stats = producer.stats()
    assert stats.resent == stats.spooled and stats.dropped == 0
    client = redis_server.client()
    sizes = [client.llen(key) for key in client.keys("mes:batch:*")]
    assert sum(sizes) == 300 and max(sizes) <= 20, sizes
    assert {e["event_id"] for e in batched(redis_server)} == set(ids)
    assert len(client.lrange("rq:queue:mes", 0, -1)) == len(sizes)


def test_unserializable_and_invalid_input_never_raises(redis_server, tmp_path):
    class Weird:
        pass

    class Model:
        def model_dump(self, mode: str = "python") -> dict[str, Any]:
            return {"id": "x", "choices": []}

    producer = Producer(settings(tmp_path, redis_server.url))
    call(producer, 1, metadata={"w": Weird()})  # not JSON: falls back to str()
    producer.save_chat_completion("c", [{"role": "user", "content": "\ud800"}], Model(), "m", 1, 1, 1)
    producer.save_chat_completion("c", "not a list", None, "m", "user?", 1, 1)  # type: ignore[arg-type]
    producer.flush(5)
    raw = redis_server.client().lrange("mes:staging", 0, -1)
    assert len(raw) == 3
    assert orjson.loads(raw[0])["metadata"]["w"].startswith("<")
    producer.close()


def test_flush_at_interpreter_exit_delivers_what_was_buffered(redis_server, tmp_path):
    code = (
        "from mes.producer import get_producer\n"
        "p = get_producer()\n"
        "for n in range(20): p.save_chat_completion(f'c{n}', [], {}, 'm', 1, 1, 1)\n"
    )
    env = {
        **os.environ,
        "REDIS_CONN_STRING": redis_server.url,
        "MES_LINGER_MS": "60000",
        "MES_DATA_DIR": str(tmp_path),
    }
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert len(staged(redis_server)) == 20


def test_forked_child_starts_empty_and_both_processes_deliver(redis_server, tmp_path):
    producer = Producer(settings(tmp_path, redis_server.url, MES_LINGER_MS="60000"))
    call(producer, 1)
    pid = os.fork()
    if pid == 0:  # the child: record one of its own, flush, exit without atexit
        code = 1
        try:
            call(producer, 2)
            ok = producer.flush(5) and producer.stats().buffered == 0
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    producer.flush(5)
    assert sorted(e["conversation_id"] for e in staged(redis_server)) == ["conv-1", "conv-2"]
    producer.close()


def test_the_producer_imports_no_database_code():
    """It runs inside the gateway: no SQLAlchemy, no drivers, no pydantic, no rq at import."""
    code = (
        "import sys, mes.producer\n"
        "heavy = [m for m in ('sqlalchemy', 'pymysql', 'psycopg2', 'pydantic', 'rq') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_a_lone_event_leaves_within_the_linger_even_after_the_flusher_went_idle(redis_server, tmp_path):
    """A quiet gateway: the flusher has slept through idle ticks; one event must still
    reach Redis within MES_LINGER_MS (plus a round trip), not at the next idle tick."""
    import time

    from mes.config.settings import ProducerSettings
    from mes.producer import Producer

    settings = ProducerSettings.from_env({"REDIS_CONN_STRING": redis_server.url, "MES_SPOOL_DIR": str(tmp_path),
                                          "MES_LINGER_MS": "50"})  # fmt: skip
    producer = Producer(settings)
    client = redis_server.client()
    producer.save_chat_completion("warm", [], {"choices": []}, "m", 1, 1, 1)
    producer.flush(5)
    waits = []
    for n in range(5):
        time.sleep(1.3)  # the flusher is idle now, in its one-second wait
        before = client.llen("mes:staging")
        t0 = time.monotonic()
        producer.save_chat_completion(f"quiet-{n}", [], {"choices": []}, "m", 1, 1, 1)
        while client.llen("mes:staging") == before:
            time.sleep(0.005)
        waits.append(time.monotonic() - t0)
    producer.close()
    assert max(waits) < 0.3, waits
