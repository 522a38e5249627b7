"""The ``mes`` group: each command group lives in a module of its own and is added here."""

from __future__ import annotations

import click

from mes import __version__
from mes.cli import database, doctor, erase, partitions, replay, service, stats


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mes")
def main() -> None:
    """MES stores the chat history of LLM API gateways (New API / One API).

    Configuration comes from the environment, with the names New API uses:
    MES_SQL_DSN (or SQL_DSN; unset: SQLite in ./mes-data), MES_DAILY_PARTITION,
    REDIS_CONN_STRING, TZ, DEBUG. See README.md for every variable.
    """


for command in (
    database.init_db,
    database.migrate,
    database.verify,
    service.worker,
    service.serve,
    service.up,
    service.demo,
    replay.replay,
    partitions.partitions,
    doctor.doctor,
    stats.stats,
    erase.erase,
):
    main.add_command(command)
