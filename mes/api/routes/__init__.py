"""The HTTP routes, one module per area; ``mes.api.app`` includes their routers in order."""
