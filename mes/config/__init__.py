"""Configuration: every environment variable MES reads, parsed into frozen settings
(``settings``), and the Go-format and URL DSNs of the database (``dsn``)."""

from mes.config.settings import Settings

__all__ = ["Settings"]
