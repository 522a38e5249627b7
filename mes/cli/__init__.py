"""The ``mes`` command line, one module per command group; each command reads the
environment once, at the edge (``common.load_settings``)."""

from mes.cli.main import main

__all__ = ["main"]
