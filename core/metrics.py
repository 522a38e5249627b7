"""Prometheus metrics. Defined once here; each process exports the ones it moves.

* the API serves ``/metrics`` (its own request latency, plus the queue gauges below);
* a worker serves them on ``MES_METRICS_PORT`` when set (batches, rows, dead letters);
* a producer counts in-process (``Producer.stats()``) and into the counters here, which
  the gateway may expose with its own ``prometheus_client`` endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

__all__ = [
    "API_LATENCY",
    "BATCHES",
    "BATCH_SECONDS",
    "DEAD_LETTERS",
    "PARTITIONS_CREATED",
    "PRODUCER_EVENTS",
    "ROWS",
    "QueueCollector",
    "register_queue_collector",
]

API_LATENCY = Histogram(
    "mes_api_request_seconds",
    "HTTP API latency by route",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PRODUCER_EVENTS = Counter(
    "mes_producer_events_total", "events by what the producer did with them", ["outcome"]
)  # outcome: recorded, enqueued, spooled, resent, dropped
BATCHES = Counter("mes_worker_batches_total", "batches (jobs) a worker finished", ["outcome"])
ROWS = Counter("mes_worker_rows_total", "history rows written", ["kind"])  # chat, error
BATCH_SECONDS = Histogram(
    "mes_worker_batch_seconds",
    "time to decode, validate and write one batch",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEAD_LETTERS = Counter("mes_worker_dead_letters_total", "events set aside as dead letters")
PARTITIONS_CREATED = Counter("mes_partitions_created_total", "daily tables this process created")


class QueueCollector(Collector):
    """Queue depth and failed jobs, read from Redis when Prometheus scrapes."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        try:
            figures = self._read()
        except Exception:  # Redis down: export nothing rather than fail the scrape
            return
        for name, value in figures.items():
            family = GaugeMetricFamily(f"mes_queue_{name}", f"MES queue: {name.replace('_', ' ')}")
            family.add_metric([], value)
            yield family


_queue_collector: QueueCollector | None = None


def register_queue_collector(read: Callable[[], dict[str, int]]) -> None:
    """Export queue gauges from this process (once; later calls replace the reader)."""
    global _queue_collector
    if _queue_collector is not None:
        _queue_collector._read = read
        return
    _queue_collector = QueueCollector(read)
    REGISTRY.register(_queue_collector)
