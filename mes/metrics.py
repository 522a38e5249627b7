"""Prometheus metrics. Defined once here; each process exports the ones it moves.

* the API serves ``/metrics`` (its own request latency, plus the queue gauges below);
* a worker serves them on ``MES_METRICS_PORT`` when set (batches, rows, dead letters);
* a producer's counters (``Producer.stats()``) are in the process's default
  ``prometheus_client`` registry, read at scrape time: a gateway that serves
  ``prometheus_client`` metrics exports ``mes_producer_events_total`` with no extra work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

__all__ = [
    "API_LATENCY",
    "BATCHES",
    "BATCH_SECONDS",
    "BRAKED_EVENTS",
    "DEAD_LETTERS",
    "PARTITIONS_CREATED",
    "ROWS",
    "QueueCollector",
    "observe_api_request",
    "register_producer_collector",
    "register_queue_collector",
]

API_LATENCY = Histogram(
    "mes_api_request_seconds",
    "HTTP API latency by route",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
# Every label value is a new series kept for the life of the process, so none may come
# from what a caller sends: a made-up method is "other", a path no route matches is
# "unmatched" (routes are their templates), a status is one the app itself answered.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})


def observe_api_request(method: str, route: str | None, status: int, seconds: float) -> None:
    """One API request into ``API_LATENCY``, with labels from a bounded set.

    ``route`` is the matched route's template (``/api/v1/conversations/{conversation_id}``),
    or None when no route matched."""
    API_LATENCY.labels(
        method if method in HTTP_METHODS else "other", route or "unmatched", str(status)
    ).observe(seconds)


BATCHES = Counter("mes_worker_batches_total", "batches (jobs) a worker finished", ["outcome"])
ROWS = Counter("mes_worker_rows_total", "history rows written", ["kind"])  # chat, error
BATCH_SECONDS = Histogram(
    "mes_worker_batch_seconds",
    "time to decode, validate and write one batch",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEAD_LETTERS = Counter("mes_worker_dead_letters_total", "events set aside as dead letters")
BRAKED_EVENTS = Counter(
    "mes_worker_braked_events",
    "invalid events of mostly invalid batches: held by the poison brake, or released by a replay",
    ["state"],  # held, released
)
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


class ProducerCollector(Collector):
    """The producers of this process, read at scrape time: nothing on the hot path."""

    def __init__(self, live: Callable[[], list[Any]]) -> None:
        self._live = live

    def collect(self) -> Iterator[Any]:
        stats = [p.stats() for p in self._live()]
        events = CounterMetricFamily(
            "mes_producer_events", "events by what this process's producer did with them", labels=["outcome"]
        )
        for outcome in ("recorded", "enqueued", "spooled", "resent", "dropped"):
            events.add_metric([outcome], sum(getattr(s, outcome) for s in stats))
        yield events
        buffered = GaugeMetricFamily("mes_producer_buffered_events", "events in the producer's memory now")
        buffered.add_metric([], sum(s.buffered for s in stats))
        yield buffered


_producer_collector: ProducerCollector | None = None


def register_producer_collector(live: Callable[[], list[Any]]) -> None:
    """Export producer counters from this process (once)."""
    global _producer_collector
    if _producer_collector is None:
        _producer_collector = ProducerCollector(live)
        REGISTRY.register(_producer_collector)
