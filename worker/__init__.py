"""RQ workers: the job that writes a batch, and the worker process that runs it.

``mes worker`` runs :func:`main.run_one` (or supervises N of them); the job function is
``mes.worker.jobs.write_batch`` (a wire contract). See ``runner`` for recovery timings.
"""

from mes.worker.jobs import write_batch
from mes.worker.main import run_one, supervise

__all__ = ["run_one", "supervise", "write_batch"]
