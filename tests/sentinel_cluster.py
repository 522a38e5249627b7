"""A real Redis Sentinel setup for tests and bench/chaos.py: a primary, a replica and
three sentinels (``redis-server --sentinel``), each its own process on a free port, with
generated config files in one folder.

Failover is made fast on purpose (a node is down after ``down_after_ms``, default
1000 ms), but nothing here sleeps for a fixed time: waits poll what the sentinels and
nodes report, up to a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import redis

from mes.embedded import free_port

__all__ = ["SentinelCluster"]

SERVICE = "mymaster"


class SentinelCluster:
    """``nodes[0]`` starts as the primary, ``nodes[1]`` as its replica."""

    def __init__(
        self, binary: str, directory: str, *, password: str | None = None,
        sentinel_password: str | None = None, down_after_ms: int = 1000,
    ) -> None:  # fmt: skip
        self.binary = binary
        self.directory = directory
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.node_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[Any]] = {}
        os.makedirs(directory, exist_ok=True)

    # -- addresses ---------------------------------------------------------------------
    def url(self, **options: str) -> str:
        """``REDIS_CONN_STRING`` for this setup, with extra query ``options``."""
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        if self.sentinel_password:
            options = {"sentinel_password": self.sentinel_password, **options}
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/0" + (f"?{query}" if query else "")

    def node(self, port: int, **kwargs: Any) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, socket_timeout=2, **kwargs)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port, password=self.sentinel_password, socket_timeout=2, decode_responses=True
        )

    # -- processes ---------------------------------------------------------------------
    def start(self) -> None:
        primary, replica = self.node_ports
        self.start_node(primary)
        self.start_node(replica, replica_of=primary)
        for port in self.sentinel_ports:
            self._start_sentinel(port, primary)
        self.wait_ready(primary)

    def start_node(self, port: int, *, replica_of: int | None = None) -> None:
        folder = os.path.join(self.directory, f"node-{port}")
        os.makedirs(folder, exist_ok=True)
        args = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
                "--repl-diskless-sync-delay", "0", "--logfile", os.path.join(folder, "redis.log")]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.processes[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._until(lambda: self.node(port, socket_connect_timeout=0.2).ping(), f"redis on {port}")

    def _start_sentinel(self, port: int, primary: int) -> None:
        folder = os.path.join(self.directory, f"sentinel-{port}")
        os.makedirs(folder, exist_ok=True)
        lines = [f"port {port}", "bind 127.0.0.1", f"dir {folder}", f"logfile {folder}/sentinel.log",
                 f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2",
                 f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                 f"sentinel failover-timeout {SERVICE} 4000", f"sentinel parallel-syncs {SERVICE} 1"]  # fmt: skip
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        if self.sentinel_password:
            lines.append(f"requirepass {self.sentinel_password}")
            # the sentinels talk to each other with it too
            lines.append(f"sentinel sentinel-pass {self.sentinel_password}")
        config = os.path.join(folder, "sentinel.conf")
        with open(config, "w") as f:  # sentinel rewrites it: a file of its own
            f.write("\n".join(lines) + "\n")
        self.processes[port] = subprocess.Popen(
            [self.binary, config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._until(lambda: self.sentinel(port).ping(), f"sentinel on {port}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.processes.clear()

    # -- state -------------------------------------------------------------------------
    def primary_port(self) -> int:
        """The primary's port as the sentinels agree on it (all three)."""
        seen = {
            int(self.sentinel(p).sentinel_get_master_addr_by_name(SERVICE)[1]) for p in self.sentinel_ports
        }
        if len(seen) != 1:
            raise RuntimeError(f"sentinels disagree on the primary: {sorted(seen)}")
        return seen.pop()

    def wait_ready(self, primary: int, timeout: float = 90.0) -> None:
        """Every sentinel sees ``primary`` as the primary, the other node as its healthy,
        in-sync replica, and the two other sentinels (so a vote can be won)."""
        replica = next(p for p in self.node_ports if p != primary)

        def ready() -> bool:
            info = self.node(replica).info("replication")
            if info.get("role") != "slave" or info.get("master_link_status") != "up":
                return False
            if int(info.get("master_port", 0)) != primary:
                return False
            for port in self.sentinel_ports:
                s = self.sentinel(port)
                master = s.sentinel_master(SERVICE)
                if int(master["port"]) != primary or master.get("is_sdown") or master.get("is_odown"):
                    return False
                if master.get("failover_state", "none") not in ("none", ""):
                    return False
                replicas = s.sentinel_slaves(SERVICE)
                if not any(int(r["port"]) == replica and not r["is_sdown"] for r in replicas):
                    return False
                if int(master.get("num-other-sentinels", 0)) < 2:
                    return False
            return True

        self._until(ready, f"sentinels agreeing on primary {primary}", timeout)

    def failover(self, timeout: float = 30.0) -> int:
        """``SENTINEL FAILOVER``: the replica becomes the primary; returns its port once
        the old primary has become its replica, in sync."""
        old = self.primary_port()
        self.sentinel(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = next(p for p in self.node_ports if p != old)
        self._until(lambda: self._all_say(new), "the failover", timeout)
        self.wait_ready(new, timeout)
        return new

    def kill_primary(self, timeout: float = 90.0, *, restart: bool = True) -> int:
        """SIGKILL the primary; once the sentinels promoted the replica, start the killed
        node again (the sentinels make it the new primary's replica). Returns the new
        primary's port."""
        old = self.primary_port()
        self.processes[old].send_signal(signal.SIGKILL)
        self.processes[old].wait(10)
        new = next(p for p in self.node_ports if p != old)
        self._until(lambda: self._all_say(new), "the sentinels promoting the replica", timeout)
        if restart:
            # As an operator would restart it: with its own old config, as a primary;
            # the sentinels see it and make it the new primary's replica.
            self.start_node(old)
            self.wait_ready(new, timeout)
        return new

    def _all_say(self, port: int) -> bool:
        try:
            return self.primary_port() == port
        except (RuntimeError, redis.RedisError):
            return False

    @staticmethod
    def _until(check: Any, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.05)
