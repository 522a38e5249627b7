"""``mes replay``: failed jobs, dead letters and spooled events sent through again."""

from __future__ import annotations

import click

from mes.cli.common import handle_errors, load_settings

_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    unit = text[-1:].lower()
    try:
        return float(text[:-1]) * _DURATION[unit] if unit in _DURATION else float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration such as 90s, 15m, 2h or 7d") from None


@click.group()
def replay() -> None:
    """Put back what failed: failed jobs, dead letters, spool files.

    Safe to repeat: events keep their ids and the database ledger drops any that were
    already written, so replaying too much never duplicates a row.
    """


class _QueueTools:
    """Settings, Redis, keys and the MES queue, for the commands that touch the queue."""

    def __init__(self) -> None:
        from mes.queue import Keys, make_queue
        from mes.worker.main import connect
        from mes.worker.safety import MESJob

        self.settings = load_settings()
        self.redis = connect(self.settings)
        self.keys = Keys(self.settings.queue.queue_name)
        self.queue = make_queue(self.redis, self.settings.queue.queue_name, job_class=MESJob)


@replay.command("failed")
@click.option("--job", "job_ids", multiple=True, help="Only this job id (repeatable).")
@click.option(
    "--older-than", default=None, help="Only jobs that failed longer ago than this (90s, 15m, 2h, 7d)."
)
@handle_errors
def replay_failed(job_ids: tuple[str, ...], older_than: str | None) -> None:
    """Requeue jobs from RQ's failed registry (all by default). `rq requeue --all
    --serializer rq.serializers.JSONSerializer --queue mes` does the same."""
    from mes.worker.brake import held
    from mes.worker.replay import replay_failed_jobs

    tools = _QueueTools()
    braked = held(tools.redis, tools.settings.queue.queue_name)
    done = replay_failed_jobs(tools.queue, job_ids=job_ids or None, older_than_s=_seconds(older_than))
    released = [job_id for job_id in done if job_id in braked]
    line = f"requeued {len(done)} failed job(s)"
    if released:
        events = sum(int(braked[j].get("invalid") or 0) for j in released)
        line += (f"; {len(released)} held by the poison brake: their {events} invalid event(s) become "
                 "dead letters unless the workers accept them now")  # fmt: skip
    click.echo(line)


@replay.command("dead-letters")
@click.option("--id", "ids", multiple=True, type=int, help="Only this dead letter id (repeatable).")
@handle_errors
def replay_dead(ids: tuple[int, ...]) -> None:
    """Send dead letters back through the pipeline (after fixing what rejected them)."""
    from mes.storage import Storage
    from mes.worker.replay import replay_dead_letters

    tools = _QueueTools()
    storage = Storage.open(tools.settings.database)
    try:
        done = replay_dead_letters(storage, tools.redis, tools.keys, ids=ids or None)
    finally:
        storage.close()
    line = f"replayed {done.replayed} dead letter(s)"
    if done.truncated:
        shown = ", ".join(map(str, done.truncated[:20])) + (", ..." if len(done.truncated) > 20 else "")
        line += (f"; {len(done.truncated)} kept: truncated (the event was too large to keep whole, so it "
                 f"cannot be replayed; its reason gives its size and digest): id {shown}")  # fmt: skip
    click.echo(line)


@replay.command("spool")
@click.option("--dir", "directory", default=None, help="Spool folder (default: MES_SPOOL_DIR).")
@handle_errors
def replay_spool_cmd(directory: str | None) -> None:
    """Re-send the events a producer left in its spool folder."""
    import dataclasses

    from mes.worker.replay import replay_spool

    settings = load_settings()
    producer_settings = settings.producer
    if directory:
        producer_settings = dataclasses.replace(producer_settings, spool_dir=directory)
    if not settings.queue.redis_url:
        from mes.errors import ConfigError

        raise ConfigError("REDIS_CONN_STRING is not set: the spool can only be re-sent to a Redis")
    click.echo(f"re-sent {replay_spool(producer_settings)} event(s)")
