"""The HTTP API (``mes serve``): history reads, error history, ingest, health and metrics."""

from mes.api.app import Services, create_app

__all__ = ["Services", "create_app"]
