"""MES: the chat-history store for LLM API gateways.

Packages: ``mes.producer`` (imported by the gateway), ``mes.worker`` (RQ jobs and the
worker), ``mes.schemas`` (the event contract), ``mes.storage`` (the database),
``mes.reader`` and ``mes.api`` (reading it back), ``mes.cli`` (the ``mes`` command);
beneath them ``mes.config`` (settings from the environment), ``mes.errors``, ``mes.log``,
``mes.metrics``, ``mes.queue`` and ``mes.days``. ARCHITECTURE.md draws the layers.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
