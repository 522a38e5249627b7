"""The fault-injection run (bench/chaos.py), short, on every backend: 10,000 events from
two producer processes while workers are SIGKILLed, Redis restarts, the database goes
away and producers lose Redis; afterwards every event is stored once, in its own day's
table, and the rollups equal a recount."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "bench"))
import chaos

from mes.embedded import find_redis_binary

from .conftest import missing, needs_own_databases

pytestmark = pytest.mark.slow


def test_nothing_lost_nothing_duplicated_under_faults(backend):
    args = ["--backend", backend.name, "--events", "10000", "--producers", "2", "--workers", "2",
            "--seconds", "30", "--db-outage", "4", "6", "--redis-cut", "2", "4", "--fault-gap", "3", "5",
            "--drain-timeout", "240", "--seed", "3"]  # fmt: skip
    if backend.name != "sqlite":
        needs_own_databases(backend.name, "a database it may drop (the run drops it at its start and end)")
        args += ["--dsn", backend.dsn]
    result = chaos.run(args)
    assert result["recorded"] == 10000
    assert all(result["faults"].get(kind, 0) >= 1 for kind in
               ("worker SIGKILL", "redis restart", "database outage", "producers cut off redis")), result["faults"]  # fmt: skip
    assert (result["lost"], result["duplicated"], result["misfiled"]) == (0, 0, 0), result
    assert result["rollup_differences"] == 0, result["rollup_examples"]
    assert result["dropped_by_producers"] == 0


@pytest.mark.redis
@pytest.mark.sqlite
def test_nothing_lost_nothing_duplicated_through_sentinel_failovers():
    """The same run with the queue behind Redis Sentinel (``--redis sentinel``): a forced
    failover and a SIGKILLed primary while producers record and workers write."""
    if find_redis_binary() is None:
        missing("redis", "no embedded Redis (pip install 'mes-history[embedded]') and no redis-server")
    args = ["--backend", "sqlite", "--redis", "sentinel", "--events", "10000", "--producers", "2",
            "--workers", "2", "--seconds", "30", "--db-outage", "4", "6", "--fault-gap", "3", "5",
            "--drain-timeout", "240", "--seed", "3"]  # fmt: skip
    result = chaos.run(args)
    assert result["recorded"] == 10000
    assert all(result["faults"].get(kind, 0) >= 1 for kind in
               ("worker SIGKILL", "sentinel failover", "primary SIGKILL", "database outage")), result["faults"]  # fmt: skip
    assert (result["lost"], result["duplicated"], result["misfiled"]) == (0, 0, 0), result
    assert result["rollup_differences"] == 0, result["rollup_examples"]
    assert result["dropped_by_producers"] == 0
