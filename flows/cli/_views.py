"""Views named on the command line: ``VIEW`` arguments resolved in the registry, an unknown name
reported as a usage error that lists the known ones."""

from __future__ import annotations

from collections.abc import Sequence

import click

from freshet.dsl.definitions import FeatureView
from freshet.dsl.registry import UnknownViewError, all_views, get_view

__all__ = ["resolve_view", "resolve_views"]


def resolve_view(name: str) -> FeatureView:
    """The registered view ``name`` (``NAME`` or ``NAME@VERSION``); click.BadParameter if none."""
    try:
        return get_view(name)
    except UnknownViewError as exc:
        raise click.BadParameter(str(exc), param_hint="VIEW") from None


def resolve_views(names: Sequence[str], *, default_all: bool = False) -> tuple[FeatureView, ...]:
    """The registered views ``names``; every registered view when ``names`` is empty and
    ``default_all``. click.BadParameter names the first unknown one."""
    if not names and default_all:
        return tuple(all_views())
    return tuple(resolve_view(name) for name in names)
