"""The poison brake: a batch mostly made of invalid events pauses its invalid events,
visibly, for the operator; it never holds back or discards the valid ones."""

from __future__ import annotations

import orjson
from click.testing import CliRunner
from prometheus_client import REGISTRY
from rq.registry import FailedJobRegistry
from sqlalchemy import text

from mes.cli import main as cli
from mes.queue import make_queue
from mes.worker.safety import MESJob

from .factories import assert_consistent, chat
from .test_pipeline import applied_events, mes_settings, run_workers, settings_env


def _events() -> tuple[list[bytes], list[str]]:
    """11 invalid events (a gateway deploy that sends user ids as names) and 9 valid."""
    valid = [chat(f"ok-{n}", [{"role": "user", "content": f"q{n}"}], "a", user_id=n) for n in range(9)]
    invalid = [
        chat(f"bad-{n}", [{"role": "user", "content": "q"}], "a") | {"user_id": f"u{n}"} for n in range(11)
    ]
    items = [orjson.dumps(ev) for pair in zip(invalid, valid + [None] * 2, strict=True) for ev in pair if ev]
    return items, [ev["event_id"] for ev in valid]


def _braked() -> float:
    return REGISTRY.get_sample_value("mes_worker_braked_events_total", {"state": "held"}) or 0.0


def test_a_mostly_invalid_batch_writes_its_valid_events_and_holds_the_invalid_visibly(backend, redis_server):
    settings = mes_settings(backend, redis_server)
    from mes.storage import Storage

    storage = Storage.open(settings.database)
    redis = redis_server.client()
    items, valid_ids = _events()
    assert len(items) == 20
    redis.rpush("mes:staging", *items)  # one RPUSH, one batch
    held_before = _braked()
    run_workers(settings, redis_server, storage)
    assert sorted(applied_events(storage)) == sorted(valid_ids), "the valid events were held back"
    failed = FailedJobRegistry(queue=make_queue(redis, "mes", job_class=MESJob))
    assert failed.count == 1  # the line of invalid events stops, loudly
    assert _braked() - held_before == 11
    env = settings_env(backend, redis_server, {})
    stats = CliRunner().invoke(cli, ["stats", "--json"], env=env)
    assert stats.exit_code == 0, stats.output
    assert orjson.loads(stats.output)["braked"] == {"batches": 1, "events": 11}
    human = CliRunner().invoke(cli, ["stats"], env=env)
    assert "braked: 11 invalid event(s) in 1 batch(es)" in human.output
    doctor = CliRunner().invoke(cli, ["doctor"], env=env)
    assert "poison brake" in doctor.output and "mes replay failed" in doctor.output
    with storage.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM mes_dead_letters")).scalar_one() == 0
    # The operator looked (a bad deploy, now fixed): replaying releases the brake.
    replay = CliRunner().invoke(cli, ["replay", "failed"], env=env)
    assert replay.exit_code == 0 and "requeued 1" in replay.output, replay.output
    run_workers(settings, redis_server, storage)
    assert sorted(applied_events(storage)) == sorted(valid_ids)  # still once
    with storage.engine.connect() as conn:
        reasons = [r[0] for r in conn.execute(text("SELECT reason FROM mes_dead_letters"))]
    assert len(reasons) == 11 and all("user_id" in r for r in reasons)
    assert failed.count == 0 and not redis.keys("mes:batch:*") and redis.hlen("mes:braked") == 0
    after = orjson.loads(CliRunner().invoke(cli, ["stats", "--json"], env=env).output)
    assert after["braked"] == {"batches": 0, "events": 0}
    assert_consistent(storage)
    storage.close()


def test_a_batch_with_fewer_invalid_events_than_the_brake_dead_letters_them_at_once(backend, redis_server):
    settings = mes_settings(backend, redis_server)
    from mes.storage import Storage

    storage = Storage.open(settings.database)
    redis = redis_server.client()
    items, valid_ids = _events()
    redis.rpush("mes:staging", *items[:10])  # 5 invalid, 5 valid: under the brake's minimum
    run_workers(settings, redis_server, storage)
    assert sorted(applied_events(storage)) == sorted(valid_ids[:5])
    with storage.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM mes_dead_letters")).scalar_one() == 5
    assert redis.hlen("mes:braked") == 0
    storage.close()
