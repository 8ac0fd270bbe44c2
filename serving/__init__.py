"""The lookup endpoint (ASGI app in :mod:`serving.app`) and its Python client."""

from serving.client import Client, ServingError

__all__ = ["Client", "ServingError"]
