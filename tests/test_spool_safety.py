"""The spool folder is private and nothing planted in it is trusted: no symlink is
followed (to read or to write), foreign files (FIFOs, directories, hard links, a
stranger's, unknown names) are left alone and logged once, and a spool file is
streamed, never read whole. Real files on disk; a real Redis where events are re-sent."""

from __future__ import annotations

import itertools
import os
import stat
import tracemalloc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from mes.config.settings import ProducerSettings
from mes.producer import Producer
from mes.producer import spool as spool_module
from mes.producer.spool import Spool

from .test_producer import staged


class Recorder:
    """Stands in for the spool module's logger: what it warned about, by event name."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    info = error = warning

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for event, kw in self.lines if event == name]


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(spool_module, "log", recorder, raising=False)  # raising: c5a8329 had no log
    return recorder


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual umask, under which a plain makedirs gives 0755
    yield
    os.umask(old)


def mode(path: Any) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def event(n: int, size: int = 0) -> bytes:
    return orjson.dumps({"event_id": f"ev-{n}", "pad": "x" * size})


def producer_on(redis_server: Any, spool_dir: Any, **env: str) -> Producer:
    settings = ProducerSettings.from_env(
        {"REDIS_CONN_STRING": redis_server.url, "MES_SPOOL_DIR": str(spool_dir), **env}
    )
    return Producer(settings)


def write_spool_file(path: Any, lines: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        for line in lines:
            f.write(line + b"\n")


# -- the folder and the files it writes ------------------------------------------------
def test_the_folder_is_created_0700_and_its_files_0600(tmp_path, umask_022):
    spool = Spool(str(tmp_path / "data" / "spool"), fsync=False)
    batch = spool.write_batch([event(1)])
    spool.append_overflow(event(2))
    assert mode(spool.directory) == 0o700
    assert mode(batch) == 0o600 and mode(spool._overflow_path) == 0o600
    spool.rotate_overflow()


def test_an_existing_folder_open_to_others_is_tightened_and_said_so(tmp_path, logged):
    folder = tmp_path / "spool"
    folder.mkdir()
    folder.chmod(0o777)  # anyone could plant a file, or read the chat content
    Spool(str(folder), fsync=False).write_batch([event(1)])
    assert mode(folder) == 0o700
    assert logged.events("spool_dir_tightened") == [
        {"directory": str(folder), "mode_was": "0o777", "mode": "0o700"}
    ]


def test_a_symlink_planted_at_the_next_overflow_name_is_not_written_through(tmp_path, monkeypatch, logged):
    """Overflow names are predictable (pid, counter). One taken by a symlink (to the
    gateway user's ~/.bashrc, say) is skipped; the event goes to a fresh file."""
    folder = tmp_path / "spool"
    folder.mkdir(mode=0o700)
    target = tmp_path / "victim"
    target.write_bytes(b"precious\n")
    monkeypatch.setattr(spool_module, "_counter", itertools.count(7))
    (folder / f"overflow-{os.getpid()}-7.jsonl.open").symlink_to(target)
    spool = Spool(str(folder), fsync=False)
    spool.append_overflow(event(1))
    spool.rotate_overflow()
    assert target.read_bytes() == b"precious\n"
    assert (folder / f"overflow-{os.getpid()}-8.jsonl").read_bytes() == event(1) + b"\n"
    assert logged.events("spool_name_taken") == [{"file": f"overflow-{os.getpid()}-7.jsonl.open"}]


# -- what is re-sent -------------------------------------------------------------------
def test_a_planted_symlink_is_not_followed_and_its_target_not_sent(redis_server, tmp_path, logged):
    folder = tmp_path / "spool"
    ours = Spool(str(folder), fsync=False).write_batch([event(1), event(2)])
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_bytes(event(666) + b"\n")
    link = folder / "batch-1-1-1.jsonl"  # the oldest name: re-sent first
    link.symlink_to(outside)
    producer = producer_on(redis_server, folder)
    try:
        producer.resend_spool()
    finally:
        producer.close()
    assert [e["event_id"] for e in staged(redis_server)] == ["ev-1", "ev-2"]
    assert not os.path.exists(ours)
    assert link.is_symlink() and outside.read_bytes() == event(666) + b"\n"  # left alone
    assert logged.events("spool_file_skipped") == [
        {"file": "batch-1-1-1.jsonl", "reason": "a symlink", "directory": str(folder)}
    ]


@pytest.mark.timeout(60)  # a FIFO used to be opened and read: the flusher hung there
def test_foreign_files_are_left_alone_and_logged_once(redis_server, tmp_path, logged):
    folder = tmp_path / "spool"
    Spool(str(folder), fsync=False).write_batch([event(1)])
    outside = tmp_path / "someone-else.jsonl"
    outside.write_bytes(event(666) + b"\n")
    os.mkfifo(folder / "batch-2-1-1.jsonl", 0o600)
    (folder / "batch-3-1-1.jsonl").mkdir()
    os.link(outside, folder / "batch-4-1-1.jsonl")  # a hard link: one inode, two names
    write_spool_file(folder / "notes.jsonl", [event(667)])  # not a spool file's name
    foreign = {
        "batch-2-1-1.jsonl": "not a regular file",
        "batch-3-1-1.jsonl": "not a regular file",
        "batch-4-1-1.jsonl": "has other hard links",
        "notes.jsonl": "not a spool file's name",
    }
    if os.geteuid() == 0:  # only root can give a file away
        write_spool_file(folder / "batch-5-1-1.jsonl", [event(668)])
        os.chown(folder / "batch-5-1-1.jsonl", 65534, 65534)
        foreign["batch-5-1-1.jsonl"] = "owned by uid 65534, not by this user or the folder's owner"
    producer = producer_on(redis_server, folder)
    try:
        producer.resend_spool()
        producer.resend_spool()  # looked at again: logged once, not every second
    finally:
        producer.close()
    assert [e["event_id"] for e in staged(redis_server)] == ["ev-1"]
    assert sorted(os.listdir(folder)) == sorted(foreign)  # all still there, for an operator
    assert {kw["file"]: kw["reason"] for kw in logged.events("spool_file_skipped")} == foreign
    assert len(logged.events("spool_file_skipped")) == len(foreign)


def test_a_file_swapped_for_a_symlink_after_it_was_listed_is_not_read(tmp_path, logged):
    folder = tmp_path / "spool"
    spool = Spool(str(folder), fsync=False)
    path = spool.write_batch([event(1)])
    (file,) = spool.ready_files()
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_bytes(event(666) + b"\n")
    os.unlink(path)
    os.symlink(outside, path)
    pushed: list[list[bytes]] = []
    assert spool.resend(file, pushed.append) is None and pushed == []
    assert os.path.islink(path)


# -- streaming -------------------------------------------------------------------------
def big_spool_file(folder: Any, *, events: int, size: int) -> int:
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "batch-1000-1-1.jsonl"
    write_spool_file(path, [event(n, size) for n in range(events)])
    return os.path.getsize(path)


def test_a_large_spool_file_is_streamed_in_batches_not_read_whole(tmp_path):
    folder = tmp_path / "spool"
    file_size = big_spool_file(folder, events=20_000, size=2000)  # 40 MB
    spool = Spool(str(folder), fsync=False)
    (file,) = spool.ready_files()
    sizes: list[tuple[int, int]] = []
    tracemalloc.start()
    try:
        count = spool.resend(file, lambda batch: sizes.append((len(batch), sum(map(len, batch)))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000 == sum(n for n, _ in sizes)
    assert max(n for n, _ in sizes) <= 500 and max(b for _, b in sizes) <= 4 << 20  # the default bounds
    assert peak < file_size / 5, f"peak {peak} bytes for a {file_size}-byte file: read whole"
    assert not os.listdir(folder)


def test_a_large_spool_file_goes_back_to_redis_streaming(redis_server, tmp_path):
    folder = tmp_path / "spool"
    file_size = big_spool_file(folder, events=16_000, size=2000)  # 32 MB
    producer = producer_on(
        redis_server, folder, MES_BATCH_MAX_BYTES=str(1 << 20), MES_DIRECT_JOB_MIN_EVENTS="1000000"
    )
    tracemalloc.start()
    try:
        producer.resend_spool()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        producer.close()
    assert producer.stats().resent == 16_000 == redis_server.client().llen("mes:staging")
    assert peak < file_size / 4, f"peak {peak} bytes for a {file_size}-byte file: read whole"
    assert not os.listdir(folder)


def test_an_over_long_line_is_cut_short_and_the_rest_of_the_file_still_goes(tmp_path, logged):
    """A line past the worker's size limit is refused there whatever follows its first
    bytes: only those are read and sent (the worker dead-letters it with its reason)."""
    folder = tmp_path / "spool"
    folder.mkdir(mode=0o700)
    write_spool_file(folder / "batch-1-1-1.jsonl", [event(1), b"y" * 10_000, event(3)])
    spool = Spool(str(folder), fsync=False, max_line_bytes=1000)
    (file,) = spool.ready_files()
    pushed: list[bytes] = []
    assert spool.resend(file, pushed.extend) == 3
    assert pushed == [event(1), b"y" * 1001, event(3)]
    assert logged.events("spool_line_too_long") == [
        {"file": "batch-1-1-1.jsonl", "bytes": 10_001, "sent": 1001}
    ]


def test_the_spools_line_limit_is_the_workers_event_limit():
    """Copied, not imported (the worker's module brings pydantic into the gateway): kept equal here."""
    from mes.schemas.decode import MAX_EVENT_BYTES

    assert spool_module.MAX_LINE_BYTES == MAX_EVENT_BYTES
