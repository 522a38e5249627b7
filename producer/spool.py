"""The on-disk spool: where events wait while Redis cannot take them.

Files in one folder (``MES_SPOOL_DIR``), one serialized event per line:

* ``batch-<ms>-<pid>-<n>.jsonl``: a batch the flusher could not push. Written to a
  ``.tmp`` name, flushed (and fsynced unless ``fsync=False``) and renamed, so a file
  under its final name is always complete.
* ``overflow-<pid>-<n>.jsonl.open``: events a caller wrote itself because the in-memory
  buffer was full. One ``write`` per event with ``O_APPEND``: a crash of the process loses
  none of them. Renamed to ``.jsonl`` when rotated; an ``.open`` file whose process is
  gone is ready too.

Any process using the folder may re-send any ready file: it takes an exclusive
``flock`` first, pushes, deletes, and the lock dies with the process if it crashes
midway. A file re-sent twice (pushed, then a crash before the delete) duplicates
nothing in the tables: the worker's ledger drops event ids it has applied.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Spool", "SpoolFile"]

_counter = itertools.count()


@dataclass(frozen=True)
class SpoolFile:
    path: str
    size: int


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


class Spool:
    """One spool folder. Thread-safe for writes: each write uses its own file or O_APPEND."""

    def __init__(self, directory: str, *, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        self._overflow_fd: int | None = None
        self._overflow_path: str | None = None

    def _ensure_dir(self) -> None:
        os.makedirs(self.directory, exist_ok=True)

    # -- writing -----------------------------------------------------------------------
    def write_batch(self, items: list[bytes]) -> str:
        """Store a batch durably; returns its path.

        Raises:
            OSError: the disk refused (full, read-only, ...): the caller counts the events dropped.
        """
        self._ensure_dir()
        name = f"batch-{time.time_ns() // 1_000_000}-{os.getpid()}-{next(_counter)}.jsonl"
        final = os.path.join(self.directory, name)
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\n".join(items) + b"\n")
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, final)
        return final

    def append_overflow(self, item: bytes) -> None:
        """Append one event to this process's overflow file (called on the caller's thread).

        Raises:
            OSError: the disk refused.
        """
        if self._overflow_fd is None:
            self._ensure_dir()
            path = os.path.join(self.directory, f"overflow-{os.getpid()}-{next(_counter)}.jsonl.open")
            self._overflow_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._overflow_path = path
        os.write(self._overflow_fd, item + b"\n")

    def rotate_overflow(self) -> None:
        """Close the overflow file and make it ready for re-sending."""
        fd, path = self._overflow_fd, self._overflow_path
        if fd is None or path is None:
            return
        self._overflow_fd = self._overflow_path = None
        if self.fsync:
            with contextlib.suppress(OSError):
                os.fsync(fd)
        os.close(fd)
        os.rename(path, path[: -len(".open")])

    def forget_overflow_after_fork(self) -> None:
        """In a forked child: the parent owns the open overflow file."""
        self._overflow_fd = self._overflow_path = None

    # -- reading -----------------------------------------------------------------------
    def ready_files(self) -> list[SpoolFile]:
        """Files that may be re-sent, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            path = os.path.join(self.directory, name)
            if name.endswith(".jsonl"):
                pass
            elif name.endswith(".jsonl.open") and path != self._overflow_path:
                pid = _pid_of(name)
                if pid is None or _pid_alive(pid):
                    continue  # another live process is still appending to it
            else:
                continue
            with contextlib.suppress(FileNotFoundError):
                out.append(SpoolFile(path, os.stat(path).st_size))
        out.sort(key=lambda f: _age_key(os.path.basename(f.path)))
        return out

    def total_bytes(self) -> int:
        return sum(f.size for f in self.ready_files()) + self._open_overflow_size()

    def _open_overflow_size(self) -> int:
        if self._overflow_path is None:
            return 0
        with contextlib.suppress(OSError):
            return os.stat(self._overflow_path).st_size
        return 0

    def resend(self, file: SpoolFile, push: Callable[[list[bytes]], None]) -> int | None:
        """Push a file's events with ``push`` and delete it; returns the event count, or
        None when another process holds it or it vanished.

        Raises:
            whatever ``push`` raises (the file is kept for a later try).
        """
        try:
            fd = os.open(file.path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            if not os.path.exists(file.path):  # re-sent and deleted while we waited
                return None
            items = list(_lines(fd))
            if items:
                push(items)
            os.unlink(file.path)
            return len(items)
        finally:
            os.close(fd)

    def cleanup_stale_tmp(self, older_than_s: float = 600) -> None:
        """Remove half-written ``.tmp`` files of processes that are gone."""
        now = time.time()
        for name in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
            if name.endswith(".tmp"):
                path = os.path.join(self.directory, name)
                pid = _pid_of(name)
                with contextlib.suppress(OSError):
                    if (pid is None or not _pid_alive(pid)) and now - os.stat(path).st_mtime > older_than_s:
                        os.unlink(path)


def _lines(fd: int) -> Iterator[bytes]:
    # A torn last line (power cut mid-write) is sent as it is: the worker dead-letters it
    # as invalid JSON, where an operator sees it, rather than it vanishing here.
    with os.fdopen(os.dup(fd), "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            if line:
                yield line


def _pid_of(name: str) -> int | None:
    parts = name.split("-")
    try:
        return int(parts[2] if name.startswith("batch-") else parts[1])
    except (IndexError, ValueError):
        return None


def _age_key(name: str) -> tuple[int, str]:
    if name.startswith("batch-"):
        try:
            return (int(name.split("-")[1]), name)
        except (IndexError, ValueError):
            pass
    return (0, name)
