"""The one place MES goes past RQ's public API (``worker/runner.py``'s ``RQ_CHECKED``)
still matches the RQ installed: a new RQ release is read again before it is trusted."""

from __future__ import annotations

import inspect

import pytest
import rq
from rq.worker import SimpleWorker
from rq.worker.base import BaseWorker

from mes.worker import runner

pytestmark = pytest.mark.redis


def test_the_rq_release_is_the_one_the_override_was_read_against():
    assert rq.__version__ == runner.RQ_CHECKED, "read BaseWorker.dequeue_job_and_maintain_ttl again"


def test_rq_still_calls_the_overridden_wait_with_the_same_parameters():
    ours = inspect.signature(runner.MESWorker.dequeue_job_and_maintain_ttl)
    theirs = inspect.signature(BaseWorker.dequeue_job_and_maintain_ttl)
    assert list(ours.parameters) == list(theirs.parameters)
    assert "self.dequeue_job_and_maintain_ttl(timeout, max_idle_time)" in inspect.getsource(BaseWorker.work)


def test_what_the_override_reads_is_still_there(redis_server):
    import redis

    from mes.worker.safety import MESJob

    worker = SimpleWorker(
        ["mes_rq_contract"], connection=redis.Redis.from_url(redis_server.url), job_class=MESJob
    )
    for name in ("_ordered_queues", "reorder_queues", "queue_class", "set_state", "heartbeat",
                 "should_run_maintenance_tasks", "get_redis_server_version", "max_connection_wait_time"):  # fmt: skip
        assert hasattr(worker, name), name
    assert callable(worker.queue_class.dequeue_any)
