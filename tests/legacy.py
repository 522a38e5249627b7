"""Run an older MES (a commit of this repository) in a subprocess, on a test's database.

The migration tests need a database *written by* the older code, not a imitation of it:
``git archive`` takes the older tree out of this clone's history and lays its folders out
as the ``mes`` package, as ``pyproject.toml`` maps them.
"""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys
import tarfile
import tomllib
from typing import Any

# The last commit before transcripts (storage.migrate's step 2).
BEFORE_TRANSCRIPTS = "c5a8329"
_ROOT = pathlib.Path(__file__).resolve().parent.parent


def checkout(commit: str, into: pathlib.Path) -> pathlib.Path:
    """The ``mes`` package of ``commit`` under ``into``, laid out as that commit's
    ``pyproject.toml`` maps its folders; returns the folder to put on sys.path."""
    pyproject = subprocess.run(
        ["git", "-C", str(_ROOT), "show", f"{commit}:pyproject.toml"], check=True, capture_output=True
    ).stdout
    # the folder mes/ is the package mes unless the commit maps it elsewhere
    mapping: dict[str, str] = {
        "mes": "mes",
        **tomllib.loads(pyproject.decode())["tool"]["setuptools"]["package-dir"],
    }
    archive = subprocess.run(
        ["git", "-C", str(_ROOT), "archive", "--format=tar", commit, *sorted(set(mapping.values()))],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into / "tree", filter="data")
    # the top package first, then the folders mapped under it
    for package, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        target = into / "site" / package.replace(".", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        (into / "tree" / folder).rename(target)
    return into / "site"


_SCRIPT = """
import json, sys
from mes.core.settings import DatabaseSettings
from mes.storage import Storage
from mes.reader import HistoryReader
env, batches, reads, archive = json.load(sys.stdin)
storage = Storage.open(DatabaseSettings.from_env(env))
for batch in batches:
    storage.writer.write(batch)
reader = HistoryReader(storage)
out = {}
for cid, uid in reads:
    out[f"{cid}|{uid}|before"] = reader.get_conversation_messages(cid, limit=10000, user_id=uid)
if archive:
    import datetime
    from mes.storage.partitions import archive_day
    archive_day(storage, datetime.date.fromisoformat(archive[0]), archive[1])
for cid, uid in reads:
    out[f"{cid}|{uid}"] = reader.get_conversation_messages(cid, limit=10000, user_id=uid)
storage.close()
print(json.dumps(out))
"""


def run_old(
    site: pathlib.Path,
    env: dict[str, str],
    batches: list[list[dict[str, Any]]],
    reads: list[tuple[str, int]],
    archive: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``batches`` with the older writer and read ``reads`` back with the older reader
    (keyed ``"conversation_id|user_id"``); with ``archive`` (day, path), archive and drop
    that day first (the reads before it are keyed ``"...|before"``)."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        input=json.dumps([env, batches, reads, archive]), capture_output=True, text=True, check=False,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, cwd=site,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
