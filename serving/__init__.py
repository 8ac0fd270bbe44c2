"""The lookup endpoint (ASGI app in :mod:`freshet.serving.app`) and its Python client."""

from freshet.serving.client import Client, ServingError

__all__ = ["Client", "ServingError"]
