"""The library the gateway imports: record chat history without slowing the request.

::

    from mes.producer import get_producer

    mes = get_producer()          # process-wide, configured from the environment
    mes.save_chat_completion(conversation_id, messages, response, model_name,
                             user_id, token_id, channel_id, ip=client_ip, is_stream=True)
    mes.save_error_conversation(conversation_id, messages, 429, "rate limited",
                                model_name, user_id, token_id, channel_id)

Call ``get_producer()`` once at start-up: a configuration error (a malformed
``REDIS_CONN_STRING``) is raised there, as a :class:`~mes.errors.ConfigError`,
and never from a request. This package imports neither SQLAlchemy nor a database driver.
"""

from __future__ import annotations

import os
import threading

from mes.config.settings import ProducerSettings
from mes.metrics import register_producer_collector
from mes.producer.flusher import _LIVE
from mes.producer.producer import Producer, ProducerStats

__all__ = ["Producer", "ProducerStats", "get_producer"]

register_producer_collector(lambda: list(_LIVE))
_instance: Producer | None = None
_instance_lock = threading.Lock()


def get_producer() -> Producer:
    """The process-wide producer, created from the environment on first call (the
    seed's ``GetMESHelper()``).

    Raises:
        ConfigError: a MES variable in the environment is malformed.
    """
    global _instance
    if _instance is None:
        with _instance_lock:
            if _instance is None:
                _instance = Producer(ProducerSettings.from_env(os.environ))
    return _instance
