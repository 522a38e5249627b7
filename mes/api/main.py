"""The app for ASGI servers: ``uvicorn mes.api.main:app`` (what ``mes serve`` runs).

Settings are read from the environment when the server starts the app, not at import.
"""

from __future__ import annotations

from mes.api.app import create_app

app = create_app()
