"""``mes stats``: queue depth, failed jobs, what the brake holds, dead letters, and the
last days' messages, requests, errors and tokens."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import click

from mes.cli.common import handle_errors, load_settings, open_storage


@click.command()
@click.option(
    "--days", default=7, show_default=True, type=click.IntRange(1, 3660), help="Recent days to show."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@handle_errors
def stats(days: int, as_json: bool) -> None:
    """Queue depth, failed jobs, what the poison brake holds, dead letters, messages and
    errors per recent day, totals."""
    import orjson
    import redis
    from sqlalchemy import func, select

    from mes.days import date_of_int, day_int
    from mes.queue import queue_figures
    from mes.redis_conn import connect as redis_connect
    from mes.worker.brake import figures as braked_figures

    settings = load_settings()
    storage = open_storage(settings)
    out: dict[str, Any] = {"queue": None, "braked": None}
    try:
        s, c, d = storage.catalog.daily_stats, storage.catalog.conversations, storage.catalog.dead_letters
        since = day_int(storage.calendar.today() - dt.timedelta(days=days - 1))
        with storage.engine.connect() as conn:
            per_day = conn.execute(
                select(s.c.day, func.sum(s.c.messages), func.sum(s.c.requests), func.sum(s.c.errors),
                       func.sum(s.c.total_tokens)).where(s.c.day >= since).group_by(s.c.day).order_by(s.c.day)
            ).fetchall()  # fmt: skip
            totals = conn.execute(select(func.sum(s.c.messages), func.sum(s.c.requests), func.sum(s.c.errors),
                                         func.sum(s.c.total_tokens))).first()  # fmt: skip
            out["conversations"] = int(conn.execute(select(func.count()).select_from(c)).scalar_one())
            out["dead_letters"] = int(conn.execute(select(func.count()).select_from(d)).scalar_one())
        out["days"] = {date_of_int(r[0]).isoformat(): {"messages": int(r[1] or 0), "requests": int(r[2] or 0),
                       "errors": int(r[3] or 0), "tokens": int(r[4] or 0)} for r in per_day}  # fmt: skip
        out["totals"] = dict(
            zip(("messages", "requests", "errors", "tokens"), (int(v or 0) for v in totals), strict=True)
        )
    finally:
        storage.close()
    if settings.queue.redis_url:
        try:
            client = redis_connect(settings.queue.redis_url, socket_timeout=3, socket_connect_timeout=3)
            out["queue"] = queue_figures(client, settings.queue.queue_name)
            out["braked"] = braked_figures(client, settings.queue.queue_name)
            client.close()
        except redis.RedisError as exc:
            out["queue"] = {"error": str(exc)}
    out["at"] = int(time.time())
    if as_json:
        click.echo(orjson.dumps(out).decode())
        return
    q = out["queue"]
    if q is None:
        click.echo("queue: REDIS_CONN_STRING is not set")
    elif "error" in q:
        click.echo(f"queue: unreachable ({q['error']})")
    else:
        click.echo("queue: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in q.items()))
    b = out["braked"]
    if b is not None:
        click.echo(f"braked: {b['events']} invalid event(s) in {b['batches']} batch(es) held by the poison brake"
                   + (" (see mes doctor; release: mes replay failed)" if b["batches"] else ""))  # fmt: skip
    click.echo(f"dead letters: {out['dead_letters']}")
    t = out["totals"]
    click.echo(f"totals: {out['conversations']} conversations, {t['messages']} messages, {t['requests']} requests, "
               f"{t['errors']} errors, {t['tokens']} tokens")  # fmt: skip
    click.echo(f"last {days} day(s):")
    for day, v in out["days"].items():
        click.echo(
            f"  {day}  {v['messages']:>10} messages {v['requests']:>9} requests {v['errors']:>7} errors"
        )
