"""The HTTP API (``mes serve``): history reads, error history, ingest, health and metrics."""

from mes.api.app import create_app
from mes.api.services import Services

__all__ = ["Services", "create_app"]
