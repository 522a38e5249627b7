"""Reading history back (importable without the worker or the producer). It only reads:
deleting a conversation is storage's (``mes.storage.delete.delete_conversation``).

::

    from mes.reader import HistoryReader
    reader = HistoryReader(Storage.open(DatabaseSettings.from_env(os.environ)))
    reader.get_user_conversations(user_id, limit=20, offset=0)
    reader.get_conversation_messages(conversation_id, limit=50, user_id=user_id)
    reader.get_conversation_stats(user_id)
    reader.get_user_errors(user_id); reader.get_conversation_errors(conversation_id, user_id=user_id)
"""

from mes.reader.history import AmbiguousConversation, BadCursor, HistoryReader, Page

__all__ = ["AmbiguousConversation", "BadCursor", "HistoryReader", "Page"]
