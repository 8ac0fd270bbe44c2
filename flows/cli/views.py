"""``freshet views [--json]``: the registered feature views, as a table or as JSON."""

from __future__ import annotations

import click
import orjson

from freshet.dsl.registry import all_views, views_json

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
def views(as_json: bool) -> None:
    """List the feature views: entity, source, lateness, TTL and each feature's window and hop."""
    if as_json:
        click.echo(orjson.dumps(views_json(), option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
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
