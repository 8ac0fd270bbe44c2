"""``freshet views [--json] [--services]``: the registered feature views and feature services,
as tables or as JSON (``--json``: the views' list, as ``GET /v1/views``; ``--services --json``:
the services' list, as ``GET /v1/services``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
import orjson

from freshet.dsl.registry import all_services, all_views, services_json, views_json
from freshet.dsl.services import ServicePlan

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["views"]


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "lifetime"
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the views as JSON (as GET /v1/views).")
@click.option(
    "--services",
    "services_only",
    is_flag=True,
    help="Only the feature services (with --json: as GET /v1/services).",
)
def views(as_json: bool, services_only: bool) -> None:
    """List the feature views (entity, source, lateness, TTL and each feature's window and
    hop), then the feature services (their columns, key fields and request fields)."""
    if as_json:
        listing = services_json() if services_only else views_json()
        click.echo(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console

    console = Console()
    if not services_only:
        _print_views(console)
    for plan in all_services():
        console.print(_service_table(plan))


def _service_table(plan: ServicePlan) -> Table:
    from rich.table import Table

    request = ", ".join(f"{n} ({t})" for n, t in plan.request) or "none"
    table = Table(
        title=(f"[bold]service {plan.name}[/]  keys {', '.join(plan.keys)}  request {request}"),
        title_justify="left",
    )
    for heading in ("column", "from", "type"):
        table.add_column(heading)
    for view in plan.views:
        types = {f.name: f.type for f in view.layout.features}
        for feature, column in zip(view.features, view.columns, strict=True):
            table.add_row(column, f"{view.name}@{view.version}:{feature}", types[feature])
    for derived in plan.derived:
        table.add_row(derived.name, derived.expression.text, derived.type)
    return table


def _print_views(console: Console) -> None:
    from rich.table import Table

    for view in all_views():
        source = view.source
        table = Table(
            title=(
                f"[bold]{view.name}[/] v{view.version}  entity {', '.join(view.entity.keys)}  "
                f"{source.topic} ({source.encoding}, {source.schema_path.name}, "
                f"time {source.event_time_field})  lateness {view.allowed_lateness_seconds}s  "
                f"ttl {_duration(view.ttl_seconds) if view.ttl_seconds else 'none'}"
            ),
            title_justify="left",
        )
        if view.columns:
            table.caption = "columns: " + "; ".join(f"{n} = {e}" for n, e in view.columns)
            table.caption_justify = "left"
        for heading in ("feature", "aggregation", "field", "window", "hop", "where", "type"):
            table.add_column(heading)
        for feature, column in zip(view.features, view.layout().features, strict=True):
            agg = feature.agg.value
            if feature.quantile is not None:
                agg += f"(q={feature.quantile:g})"
            if feature.k is not None:
                agg += f"(k={feature.k})"
            table.add_row(
                feature.name,
                agg,
                feature.field or "-",
                _duration(feature.window_seconds),
                "-" if feature.hop_seconds is None else _duration(feature.hop_seconds),
                feature.where or "-",
                column.type,
            )
        console.print(table)
