"""``mes erase --user N``: a user's history erased from every table, the queue and the spool."""

from __future__ import annotations

import click

from mes.cli.common import handle_errors, load_settings, open_storage

_LINES = (
    ("conversations", "conversations (index rows)"),
    ("chat_rows", "messages (history rows)"),
    ("error_rows", "error rows"),
    ("counted_events", "requests kept as counts only (MES_CAPTURE=none)"),
    ("stats_rows", "daily stats rows"),
    ("dead_letters", "dead letters"),
    ("queued_events", "events waiting in Redis"),
    ("spool_events", "events in the spool folder"),
    ("stray_rows", "rows outside any indexed conversation"),
)


@click.command("erase")
@click.option("--user", "user_id", required=True, type=click.IntRange(0, 2_147_483_647), help="The user id.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
@click.option("--spool-dir", default=None, help="Spool folder to clean as well (default: MES_SPOOL_DIR).")
@handle_errors
def erase(user_id: int, dry_run: bool, spool_dir: str | None) -> None:
    """Erase a user's history: every day's history and error tables, the index, the
    rollups, the dead letters, their events waiting in Redis and in the spool folder;
    events of theirs from before the erasure that arrive later are not stored.
    Interrupted, it resumes when run again. Recorded in the audit trail."""
    from mes.worker.erasure import erase as erase_everywhere

    settings = load_settings()
    redis = None
    if settings.queue.redis_url:
        from mes.worker.main import connect

        redis = connect(settings)
    storage = open_storage(settings)
    try:
        if not dry_run:  # recorded before it happens, as every audited call
            from mes.storage import audit

            audit.record(storage, actor="cli", actor_user_id=None, action="erase", target_user_id=user_id,
                         resource="user", client="cli")  # fmt: skip
        report = erase_everywhere(
            storage,
            user_id,
            dry_run=dry_run,
            redis=redis,
            queue_name=settings.queue.queue_name,
            spool_dir=spool_dir or settings.producer.spool_dir,
        )
    finally:
        storage.close()
    done = report.as_dict()
    head = "would remove" if dry_run else "removed"
    click.echo(
        f"user {user_id}: {head}" + (" (resumed an erasure left unfinished)" if report.resumed else "")
    )
    for key, label in _LINES:
        click.echo(f"  {done[key]:>10}  {label}")
    if redis is None:
        click.echo("  (REDIS_CONN_STRING is not set: no queue to clean)")
    for line in report.left:
        click.echo(f"  left: {line}; the workers drop those events when they arrive")
    if not dry_run:
        click.echo("events of this user from before now that arrive later are not stored")
