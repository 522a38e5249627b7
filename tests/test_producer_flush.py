"""A forced flush is an argument, not a mutation: a ``flush()`` that times out leaves the
batching policy as it was, so later events still travel in batches of ``MES_LINGER_MS``.

(Issue 16: ``flush`` set the batcher's ``max_age`` to 1e-9 and restored it only when it
succeeded; after a timeout every event went to Redis alone until a flush succeeded.)
The batcher on a fake clock, then the producer on a real Redis, counting its pushes.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from mes.config.settings import ProducerSettings
from mes.producer import Producer
from mes.producer.batcher import Batcher

from .test_producer import FakeClock, call, staged


# -- the batcher, a pure object -------------------------------------------------------
def test_a_forced_ready_is_an_argument_and_changes_no_bound():
    clock = FakeClock()
    b = Batcher(max_events=100, max_bytes=10_000, max_age=0.5, clock=clock)
    assert not b.ready(force=True)  # nothing buffered: nothing to force
    b.append(b"a")
    assert b.ready(force=True) and not b.ready()  # forced now; by the policy not yet
    assert (b.max_events, b.max_bytes, b.max_age) == (100, 10_000, 0.5)
    assert b.drain() == [[b"a"]]
    b.append(b"b")
    clock.now += 0.25
    assert not b.ready()  # the next event waits its max_age as before the forced flush
    clock.now += 0.25
    assert b.ready()


def test_after_a_forced_flush_twenty_events_ten_ms_apart_make_two_batches():
    """The flusher's loop on a fake clock (whole milliseconds: exact sums): a forced
    flush, then 20 events 10 ms apart with a 150 ms linger leave in 2 batches, not 20."""
    clock = FakeClock()
    clock.now = 0
    b = Batcher(max_events=500, max_bytes=1 << 20, max_age=150, clock=clock)
    b.append(b"before")
    assert b.ready(force=True)
    b.drain()
    batches: list[list[bytes]] = []
    for n in range(20):
        clock.now += 10
        b.append(b"%d" % n)
        if b.ready():
            batches += b.drain()
    clock.now += 150
    if b.ready():
        batches += b.drain()
    assert [len(batch) for batch in batches] == [16, 4]  # at 160 ms (10 to 160), then 170 to 200


# -- the producer, on a real Redis -----------------------------------------------------
def settings(tmp_path: Any, url: str, **env: str) -> ProducerSettings:
    return ProducerSettings.from_env(
        {"REDIS_CONN_STRING": url, "MES_SPOOL_DIR": str(tmp_path / "spool"), "MES_LINGER_MS": "150", **env}
    )


def rpush_calls(server: Any) -> int:
    """RPUSH commands the server has run: one per batch the producer pushed."""
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_rpush", {}).get("calls", 0))


def wait_for(predicate: Any, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def pushes_for_twenty_events(producer: Producer, server: Any) -> int:
    before_calls, before_events = rpush_calls(server), len(staged(server))
    for n in range(20):
        call(producer, 100 + n)
        time.sleep(0.01)
    wait_for(lambda: len(staged(server)) >= before_events + 20)
    return rpush_calls(server) - before_calls


def test_twenty_events_go_in_about_two_pushes_when_no_flush_timed_out(redis_server, tmp_path):
    """The baseline the next two tests compare with."""
    producer = Producer(settings(tmp_path, redis_server.url))
    try:
        assert producer.flush(5)
        assert pushes_for_twenty_events(producer, redis_server) <= 3
    finally:
        producer.close()


def test_a_flush_that_timed_out_leaves_batching_as_it_was(redis_server, tmp_path):
    producer = Producer(settings(tmp_path, redis_server.url))
    try:
        call(producer, 1)
        assert producer.flush(timeout=0) is False  # timed out: the event is still buffered
        wait_for(lambda: len(staged(redis_server)) == 1)
        pushes = pushes_for_twenty_events(producer, redis_server)
        assert pushes <= 3, f"{pushes} pushes for 20 events: the forced flush outlived its call"
        assert producer.flush(5) and producer.stats().enqueued == 21
    finally:
        producer.close()


def test_a_flush_that_timed_out_on_a_hung_redis_leaves_batching_as_it_was(redis_server, tmp_path):
    """Redis frozen (SIGSTOP: connections open, no replies): the flush times out while
    the flusher waits for its reply; the batch is spooled, Redis thaws and the spool is
    re-sent; then 20 events 10 ms apart still go in about 2 pushes, not 20."""
    producer = Producer(settings(tmp_path, redis_server.url))
    process = redis_server.process
    try:
        assert producer.flush(5)  # connected
        process.send_signal(signal.SIGSTOP)
        call(producer, 1)
        assert producer.flush(timeout=0.3) is False
        wait_for(lambda: producer.stats().spooled == 1)  # the push timed out (2 s) and spooled
        process.send_signal(signal.SIGCONT)
        wait_for(lambda: producer.stats().resent == 1)  # Redis answers again: the spool went back
        pushes = pushes_for_twenty_events(producer, redis_server)
        assert pushes <= 3, f"{pushes} pushes for 20 events: the forced flush outlived its call"
        stats = producer.stats()
        assert stats.enqueued == 20 and stats.spooled == 1 and stats.dropped == 0
    finally:
        process.send_signal(signal.SIGCONT)
        producer.close()
