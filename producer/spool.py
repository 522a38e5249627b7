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

What is in the folder is chat content, and what is re-sent from it is taken as the
gateway's own events, so the folder is private and nothing planted in it is trusted:

* The folder is created ``0700``. One that exists with any group or other permission
  is tightened to ``0700`` when this user owns it (a warning, ``spool_dir_tightened``,
  says so once), and warned about (``spool_dir_not_private``) when it does not: nothing
  but the gateway's user (and root, for ``mes replay spool``) has any business in it.
* Files are created ``0600`` with ``O_EXCL | O_NOFOLLOW``: a name that is taken (a
  symlink planted where the next overflow file would go) is never written through; the
  next name is used.
* Only what is plainly ours is re-sent: a regular file with a spool file's name, one
  link, owned by this user or by the folder's owner (so root's ``mes replay spool`` can
  empty a gateway's folder), opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again on
  the open descriptor. A symlink, FIFO, directory, hard link, stranger's file or unknown
  name is left where it is and logged once (``spool_file_skipped``, with the reason).
* Files are streamed: read line by line and pushed in batches within the caller's
  bounds, never read whole into memory (an overflow file can hold a flood's worth).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from mes.log import get_logger

__all__ = ["MAX_LINE_BYTES", "Spool", "SpoolFile"]

log = get_logger("mes.producer.spool")

_counter = itertools.count()
_BATCH = re.compile(r"batch-[0-9]+-[0-9]+-[0-9]+\.jsonl")
_OVERFLOW = re.compile(r"overflow-[0-9]+-[0-9]+\.jsonl")
_OVERFLOW_OPEN = re.compile(r"overflow-[0-9]+-[0-9]+\.jsonl\.open")
_TMP = re.compile(r"batch-[0-9]+-[0-9]+-[0-9]+\.jsonl\.tmp")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The worker's limit (``mes.schemas.decode.MAX_EVENT_BYTES``, not imported: it brings
# pydantic into the gateway). A longer line is refused there whatever follows its first
# bytes, so only those are read and sent: the worker dead-letters it with its reason.
MAX_LINE_BYTES = 16 << 20
_SCRUB_CHUNK = 5000  # events per file a scrub writes back
_REPORTED_MAX = 1000  # names remembered as reported; past it, reported again (the set is bounded)


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

    def __init__(self, directory: str, *, fsync: bool = True, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.directory = directory
        self.fsync = fsync
        self.max_line_bytes = max_line_bytes
        self._overflow_fd: int | None = None
        self._overflow_path: str | None = None
        self._dir_checked = False
        self._reported: set[tuple[str, str]] = set()

    def _ensure_dir(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        if not self._dir_checked:
            self._dir_checked = True
            self._make_private()

    def _make_private(self) -> None:
        try:
            st = os.stat(self.directory)
            if not st.st_mode & 0o077:
                return
            mode = oct(stat.S_IMODE(st.st_mode))
            if st.st_uid == os.geteuid():
                os.chmod(self.directory, 0o700)
                log.warning("spool_dir_tightened", directory=self.directory, mode_was=mode, mode="0o700")
                return
        except OSError as exc:  # a folder we cannot tighten still takes the events: say so
            log.warning("spool_dir_not_private", directory=self.directory, error=str(exc))
            return
        log.warning("spool_dir_not_private", directory=self.directory, mode=mode, owner_uid=st.st_uid)

    def _create(self, make_name: Callable[[], str]) -> tuple[int, str]:
        """A new file, ``0600``, under a name nothing holds yet; never through a symlink."""
        for _ in range(100):
            path = os.path.join(self.directory, make_name())
            try:
                return os.open(path, _CREATE | os.O_APPEND, 0o600), path
            except FileExistsError:
                # Ours are unique (pid, counter); a taken name was planted, or left by a
                # process of the same pid long gone. Either way: not written through.
                log.warning("spool_name_taken", file=os.path.basename(path))
        raise FileExistsError(errno.EEXIST, "no free spool file name", self.directory)

    # -- writing -----------------------------------------------------------------------
    def write_batch(self, items: list[bytes]) -> str:
        """Store a batch durably; returns its path.

        Raises:
            OSError: the disk refused (full, read-only, ...): the caller counts the events dropped.
        """
        self._ensure_dir()
        fd, tmp = self._create(
            lambda: f"batch-{time.time_ns() // 1_000_000}-{os.getpid()}-{next(_counter)}.jsonl.tmp"
        )
        try:
            _write_all(fd, b"\n".join(items) + b"\n")
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        final = tmp[: -len(".tmp")]
        os.rename(tmp, final)  # replaces (never follows) whatever was planted at the name
        return final

    def append_overflow(self, item: bytes) -> None:
        """Append one event to this process's overflow file (called on the caller's thread).

        Raises:
            OSError: the disk refused.
        """
        if self._overflow_fd is None:
            self._ensure_dir()
            self._overflow_fd, self._overflow_path = self._create(
                lambda: f"overflow-{os.getpid()}-{next(_counter)}.jsonl.open"
            )
        _write_all(self._overflow_fd, item + b"\n")

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
        """Files that may be re-sent, oldest first. What is not plainly a spool file of
        ours is skipped and logged once (see the module docstring)."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        trusted = self._trusted_uids()
        out = []
        for entry in entries:
            name, path = entry.name, entry.path
            if _TMP.fullmatch(name):
                continue  # being written (or a crash's half-written leftover: never sent)
            if _OVERFLOW_OPEN.fullmatch(name):
                if path == self._overflow_path:
                    continue
                pid = _pid_of(name)
                if pid is None or _pid_alive(pid):
                    continue  # another live process is still appending to it
            elif not (_BATCH.fullmatch(name) or _OVERFLOW.fullmatch(name)):
                self._skip(name, "not a spool file's name")
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            reason = _foreign(st, trusted)
            if reason:
                self._skip(name, reason)
                continue
            out.append(SpoolFile(path, st.st_size))
        out.sort(key=lambda f: _age_key(os.path.basename(f.path)))
        return out

    def _trusted_uids(self) -> frozenset[int]:
        uids = {os.geteuid()}
        with contextlib.suppress(OSError):
            uids.add(os.stat(self.directory).st_uid)
        return frozenset(uids)

    def _skip(self, name: str, reason: str) -> None:
        key = (name, reason)
        if key in self._reported:
            return  # the flusher looks every second: once is enough
        if len(self._reported) >= _REPORTED_MAX:
            self._reported.clear()
        self._reported.add(key)
        log.warning("spool_file_skipped", file=name, reason=reason, directory=self.directory)

    def resend(
        self,
        file: SpoolFile,
        push: Callable[[list[bytes]], None],
        *,
        max_events: int = 500,
        max_bytes: int = 4 << 20,
    ) -> int | None:
        """Stream a file's events to ``push`` in batches within ``max_events`` and
        ``max_bytes`` (an event larger travels alone), then delete it; returns the event
        count, or None when another process holds it, it vanished, or it is not ours.

        Memory: one batch, never the whole file. If a later batch fails, the file is
        kept and sent again whole; the worker's ledger drops what the earlier batches
        already delivered.

        Raises:
            whatever ``push`` raises (the file is kept for a later try).
        """
        with self._claimed(file) as fd:
            if fd is None:
                return None
            count = 0
            batch: list[bytes] = []
            size = 0
            for line in self._lines(fd, os.path.basename(file.path)):
                if batch and (len(batch) >= max_events or size + len(line) > max_bytes):
                    push(batch)
                    count += len(batch)
                    batch, size = [], 0
                batch.append(line)
                size += len(line)
            if batch:
                push(batch)
                count += len(batch)
            os.unlink(file.path)
            return count

    @contextlib.contextmanager
    def _claimed(self, file: SpoolFile) -> Iterator[int | None]:
        """``file`` opened and locked (``flock``) for this process alone, or None when
        another process holds it, it vanished, or it is not ours; closed after."""
        fd = self._open_ours(file.path)
        if fd is None:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            try:
                now = os.lstat(file.path)
            except FileNotFoundError:
                yield None  # re-sent and deleted while we waited
                return
            opened = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
                yield None  # the name now holds another file: leave it to a later look
                return
            yield fd
        finally:
            os.close(fd)

    def scrub(self, file: SpoolFile, drop: Callable[[bytes], bool]) -> int | None:
        """Remove from a file the events ``drop`` says (an erased user's): the rest go to a
        new batch file (written as ``write_batch`` does), then the file is deleted; a file
        left with nothing is just deleted. Returns the events removed, or None when another
        process holds the file (it is being re-sent: the worker drops them, see
        ``mes.storage.erase``), it vanished, or it is not ours.

        Memory: ``_SCRUB_CHUNK`` events at a time (an overflow file can hold a flood's
        worth): read once to find them, once more to write the rest."""
        name = os.path.basename(file.path)
        with self._claimed(file) as fd:
            if fd is None:
                return None
            if not any(drop(line) for line in self._lines(fd, name)):
                return 0
            os.lseek(fd, 0, os.SEEK_SET)
            kept: list[bytes] = []
            dropped = written = 0
            for line in self._lines(fd, name):
                if drop(line):
                    dropped += 1
                    continue
                kept.append(line)
                if len(kept) >= _SCRUB_CHUNK:
                    self.write_batch(kept)
                    written, kept = written + len(kept), []
            if kept:
                self.write_batch(kept)
                written += len(kept)
            os.unlink(file.path)
            log.info("spool_scrubbed", file=name, removed=dropped, kept=written)
            return dropped

    def _open_ours(self, path: str) -> int | None:
        """``path`` opened for reading if it is plainly ours, else None (logged)."""
        name = os.path.basename(path)
        try:
            # O_NONBLOCK: a FIFO planted under a spool name must not hang the flusher here.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._skip(name, "a symlink" if exc.errno == errno.ELOOP else f"cannot open: {exc.strerror}")
            return None
        # Checked again on what was opened: the name may have changed hands since listed.
        reason = _foreign(os.fstat(fd), self._trusted_uids())
        if reason:
            os.close(fd)
            self._skip(name, reason)
            return None
        return fd

    def _lines(self, fd: int, name: str) -> Iterator[bytes]:
        # A torn last line (power cut mid-write) is sent as it is: the worker dead-letters it
        # as invalid JSON, where an operator sees it, rather than it vanishing here.
        limit = self.max_line_bytes
        with os.fdopen(os.dup(fd), "rb") as f:
            while line := f.readline(limit + 1):
                if len(line) > limit and not line.endswith(b"\n"):
                    skipped = _skip_line(f)
                    log.warning("spool_line_too_long", file=name, bytes=len(line) + skipped, sent=len(line))
                line = line.rstrip(b"\n")
                if line:
                    yield line


def _foreign(st: os.stat_result, trusted: frozenset[int]) -> str | None:
    """Why a file is not one of ours, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
    if st.st_nlink != 1:
        return "has other hard links"  # ours never do: a link would let us send someone's file
    if st.st_uid not in trusted:
        return f"owned by uid {st.st_uid}, not by this user or the folder's owner"
    return None


def _skip_line(f: BinaryIO) -> int:
    """Read past the rest of an over-long line, a MiB at a time; returns the bytes skipped."""
    skipped = 0
    while chunk := f.readline(1 << 20):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
