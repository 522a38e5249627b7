"""Prometheus metrics: worker counters move with real batches, queue gauges read real Redis,
and a worker started with MES_METRICS_PORT serves them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import orjson
from prometheus_client import REGISTRY, generate_latest

from mes.metrics import register_queue_collector
from mes.producer import Producer
from mes.queue import queue_figures
from mes.storage import Storage

from .factories import conversation
from .test_pipeline import mes_settings, run_workers


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_worker_counters_and_queue_gauges(backend, redis_server):
    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    producer = Producer(settings.producer)
    for ev in conversation("m", 3):
        producer.record_serialized(orjson.dumps(ev))
    producer.record_serialized(b'{"broken": true}')
    assert producer.flush(10)
    register_queue_collector(lambda: queue_figures(redis_server.client(), "mes"))
    assert value("mes_queue_staged_events") == 4
    before = (value("mes_worker_rows_total", kind="chat"), value("mes_worker_dead_letters_total"),
              value("mes_worker_batches_total", outcome="written"))  # fmt: skip
    run_workers(settings, redis_server, storage)
    assert value("mes_worker_rows_total", kind="chat") - before[0] == 7
    assert value("mes_worker_dead_letters_total") - before[1] == 1
    assert value("mes_worker_batches_total", outcome="written") - before[2] == 1
    assert value("mes_queue_staged_events") == 0 and value("mes_queue_jobs_failed") == 0
    assert b"mes_worker_batch_seconds_bucket" in generate_latest()
    producer.close()
    storage.close()


def test_a_worker_serves_metrics_on_its_port(backend, redis_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **backend.env(REDIS_CONN_STRING=redis_server.url, MES_METRICS_PORT=str(port))}
    worker = subprocess.Popen([sys.executable, "-m", "mes", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
                if "mes_queue_jobs_failed" in text:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and worker.poll() is None, "no metrics from the worker"
            time.sleep(0.2)
        assert "mes_worker_rows_total" in text
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def test_producer_counters_are_exported_at_scrape_time(tmp_path):
    from mes.config.settings import ProducerSettings

    producer = Producer(
        ProducerSettings.from_env({"MES_SPOOL_DIR": str(tmp_path / "spool")})
    )  # no Redis: spools
    before = value("mes_producer_events_total", outcome="spooled")
    for n in range(5):
        producer.save_chat_completion(f"c{n}", [], {"choices": []}, "m", 1, 1, 1)
    producer.close()
    assert value("mes_producer_events_total", outcome="spooled") - before == 5
