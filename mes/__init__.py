"""MES: the chat-history store for LLM API gateways.

Packages: ``mes.producer`` (imported by the gateway), ``mes.worker`` (RQ jobs and the
worker), ``mes.schemas`` (the event contract), ``mes.storage`` (the database),
``mes.reader`` and ``mes.api`` (reading it back), ``mes.core`` (settings and errors).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
