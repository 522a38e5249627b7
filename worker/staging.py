"""Turning the staging list into large jobs, and finding batches that lost their job.

Quiet gateways push a few events every 50 ms onto ``{q}:staging``. Every worker, while
waiting for jobs, calls :meth:`Stager.cut`; a Lua script decides atomically, for all
workers at once, whether to cut: when a full job's worth is waiting, or when the first
event it noticed has waited ``MES_DRAIN_LINGER_MS``. The cut moves the events into a new
batch list in the same script, so no event is ever only in a worker's memory. Enqueuing
the job for it is a second step; if a worker dies between the two, :meth:`Stager.reap`
(run by one worker at a time) finds the batch in ``{q}:batches`` without a job and
enqueues it.
"""

from __future__ import annotations

import time
from typing import Any

from rq.job import Job

from mes.config.settings import QueueSettings
from mes.log import get_logger
from mes.queue import Keys, enqueue_batch
from mes.schemas.ids import new_event_id

__all__ = ["Stager"]

log = get_logger("mes.worker")

# KEYS: staging, since-clock, batches index, new batch list.
# ARGV: max events, linger ms, batch id, force (1: cut whatever is there).
_CUT = """
local n = redis.call('LLEN', KEYS[1])
if n == 0 then
  redis.call('DEL', KEYS[2])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max = tonumber(ARGV[1])
if ARGV[4] ~= '1' and n < max then
  local since = redis.call('GET', KEYS[2])
  if not since then
    redis.call('SET', KEYS[2], now)
    return 0
  end
  if now - tonumber(since) < tonumber(ARGV[2]) then
    return 0
  end
end
local items = redis.call('LPOP', KEYS[1], max)
for i = 1, #items, 1000 do
  redis.call('RPUSH', KEYS[4], unpack(items, i, math.min(i + 999, #items)))
end
redis.call('ZADD', KEYS[3], now, ARGV[3])
if redis.call('LLEN', KEYS[1]) > 0 then
  redis.call('SET', KEYS[2], now)
else
  redis.call('DEL', KEYS[2])
end
return #items
"""

ORPHAN_AGE_MS = 60_000


class Stager:
    """Cuts staging into batch jobs and re-enqueues orphaned batches, for one queue."""

    def __init__(
        self,
        redis: Any,
        queue: Any,
        keys: Keys,
        queue_settings: QueueSettings,
        *,
        max_events: int,
        linger_ms: int,
    ) -> None:
        self.redis = redis
        self.queue = queue
        self.keys = keys
        self.queue_settings = queue_settings
        self.max_events = max_events
        self.linger_ms = linger_ms
        self._cut = redis.register_script(_CUT)

    def cut(self, *, force: bool = False) -> int:
        """Cut at most one batch if one is due; returns how many events it took.

        Raises:
            redis.RedisError: Redis is unreachable (the events stay where they were).
        """
        batch_id = "s" + new_event_id()
        keys = [self.keys.staging, self.keys.cut_clock, self.keys.batches, self.keys.batch(batch_id)]
        taken = int(
            self._cut(keys=keys, args=[self.max_events, self.linger_ms, batch_id, "1" if force else "0"])
        )
        if taken:
            enqueue_batch(self.redis, self.queue, self.keys, batch_id, None, self.queue_settings)
            log.debug("staging_cut", batch_id=batch_id, events=taken)
        return taken

    def cut_all(self) -> int:
        """Cut everything waiting, whatever the linger (burst mode, shutdown, tests)."""
        total = 0
        while taken := self.cut(force=True):
            total += taken
        return total

    def reap(self, *, older_than_ms: int = ORPHAN_AGE_MS, limit: int = 500) -> int:
        """Enqueue batches that have events but no job (a crash between cut and enqueue)."""
        cutoff = time.time_ns() // 1_000_000 - older_than_ms
        revived = 0
        for raw in self.redis.zrangebyscore(self.keys.batches, 0, cutoff, start=0, num=limit):
            batch_id = raw.decode() if isinstance(raw, bytes) else raw
            if Job.exists(batch_id, connection=self.redis):
                continue  # queued, running, scheduled for retry or failed: RQ owns it
            if not self.redis.exists(self.keys.batch(batch_id)):
                self.redis.zrem(self.keys.batches, batch_id)
                continue
            enqueue_batch(self.redis, self.queue, self.keys, batch_id, None, self.queue_settings)
            log.warning("orphan_batch_enqueued", batch_id=batch_id)
            revived += 1
        return revived
