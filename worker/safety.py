"""A job class that runs MES's job function and nothing else.

Anyone who can write to Redis can write a job hash. RQ, by default, imports and calls
whatever dotted name the hash holds (``os.system`` included), and also its success,
failure and stop callbacks, and sends its webhooks. With the default serializer it
would even unpickle the payload. MES workers use the JSON serializer (a pickle payload
fails to decode: nothing runs) and this class, which refuses any function outside
:data:`ALLOWED` *before* importing it, ignores callbacks, webhooks and dependencies, and
turns a hash it cannot read into a failed job instead of a crashed worker.
"""

from __future__ import annotations

from typing import Any

from rq.exceptions import NoSuchJobError
from rq.job import Job

from mes.errors import ForeignJobError
from mes.queue import JOB_FUNCTION

__all__ = ["ALLOWED", "ForeignJobError", "MESJob"]

ALLOWED = frozenset({JOB_FUNCTION})


class MESJob(Job):
    _mes_restore_error: str | None = None

    def restore(self, raw_data: Any) -> Any:
        try:
            return super().restore(raw_data)
        except NoSuchJobError:
            raise
        except Exception as exc:  # a malformed hash: fail this job, keep the worker alive
            self._mes_restore_error = f"unreadable job hash: {type(exc).__name__}: {exc}"[:500]
            return None
        finally:
            self.webhooks = []
            self._dependency_ids = []

    @property
    def func(self) -> Any:
        if self._mes_restore_error:
            raise ForeignJobError(self._mes_restore_error)
        name = self.func_name  # raises DeserializationError for a pickle or broken payload
        if name not in ALLOWED or self.instance is not None:
            raise ForeignJobError(
                f"refusing to run {name!r}: MES workers run only {', '.join(sorted(ALLOWED))}"
            )
        return super().func

    # Callbacks are dotted names in the hash, imported and called by RQ: never honour them.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None
