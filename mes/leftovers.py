"""What a killed ``mes up`` left running, found and stopped by the next one.

``mes up`` starts its embedded Redis and its workers in sessions of their own (Ctrl-C
reaches ``mes up``, which stops them in order). If ``mes up`` itself is SIGKILLed (OOM
killer, ``kill -9``, a closed terminal's process group), they outlive it: a Redis on the
data folder's port with its append-only file open, workers writing to it. The next
``mes up`` would find the port taken, start a second Redis on the same files and move.

So ``mes up`` notes its own pid and its children's in ``<data>/run/up.json``, and at
start reads the note a previous run left: if that ``mes up`` is still alive it refuses
to start a second one on the same folder; otherwise it stops what it left, workers
first (SIGTERM: they finish their batch), Redis last (SIGTERM: it flushes its AOF), and
only a process that is still the one noted (Redis by its working folder, a worker by
its command line, read from ``/proc``): a pid reused by another program is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

from mes.errors import ConfigError

__all__ = ["Note"]


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (its parent never reaped it) is not running
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


def _is_mes(pid: int, command: str) -> bool:
    args = _cmdline(pid)  # `python -m mes up`, or the `mes` script: `python /venv/bin/mes up`
    return any(os.path.basename(a) == "mes" for a in args) and command in args


class Note:
    """``<data>/run/up.json``: this ``mes up`` and what it started."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.path = os.path.join(self.data_dir, "run", "up.json")
        self.pids: dict[str, int] = {}

    def clear_previous(self, timeout: float = 30.0) -> list[str]:
        """Stop what a killed ``mes up`` on this folder left; returns what was stopped."""
        try:
            with open(self.path, encoding="utf-8") as f:
                old = {k: int(v) for k, v in json.load(f).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return []
        up = old.get("up")
        if up and up != os.getpid() and _alive(up) and _is_mes(up, "up"):
            raise ConfigError(
                f"mes up is already running on {self.data_dir} (pid {up}): stop it first, "
                "or give this one another MES_DATA_DIR"
            )
        stopped = []
        worker = old.get("worker")
        if worker and _alive(worker) and _is_mes(worker, "worker"):
            _terminate(worker, timeout)
            stopped.append(f"workers (pid {worker})")
        redis = old.get("redis")
        if redis and _alive(redis) and _cwd(redis) == os.path.join(self.data_dir, "redis"):
            _terminate(redis, timeout)
            stopped.append(f"embedded Redis (pid {redis})")
        self.remove()
        return stopped

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"up": os.getpid(), **self.pids}, f)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline, killed = time.monotonic() + timeout, False
    while _alive(pid):
        if time.monotonic() > deadline:
            if killed:
                raise ConfigError(f"a process the last mes up left (pid {pid}) does not stop: kill it first")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline, killed = time.monotonic() + 10, True
        time.sleep(0.05)
