"""The registry of feature views: look a view up by name, list them, describe them as JSON.

Pure and Bytewax-free, so the serving path may import it. The registered views are the shipped
ones in :mod:`flows.views`.
"""

from __future__ import annotations

from typing import Any

from flows.definitions import FeatureView
from flows.views import DEMO_VIEWS

__all__ = ["UnknownViewError", "all_views", "get_view", "views_json"]

_VIEWS: dict[str, FeatureView] = {view.name: view for view in DEMO_VIEWS}


class UnknownViewError(KeyError):
    """No view has this name; the message lists the known views."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown view {self.name!r}; known: {', '.join(self.known)}"


def get_view(name: str) -> FeatureView:
    """The view called ``name``; raises :class:`UnknownViewError` naming the known views."""
    try:
        return _VIEWS[name]
    except KeyError:
        raise UnknownViewError(name, tuple(_VIEWS)) from None


def all_views() -> tuple[FeatureView, ...]:
    """Every registered view, in registration order."""
    return tuple(_VIEWS.values())


def views_json() -> list[dict[str, Any]]:
    """The content of ``freshet views --json`` and ``GET /v1/views``: one dict per view."""
    return [view.to_json() for view in _VIEWS.values()]
