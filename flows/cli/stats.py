"""``freshet stats``: feature statistics and drift scores from the offline log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from freshet.dsl.registry import UnknownViewError, get_view
from freshet.offline.stats import (
    PSI_THRESHOLD,
    StatsError,
    TimeRange,
    ViewStats,
    parse_time,
    view_stats,
)
from freshet.sinks.settings import Settings

__all__ = ["stats"]

# Exit status when --fail-on-drift is given and a feature drifted.
EXIT_DRIFT = 4


@click.command()
@click.argument("view")
@click.option(
    "--from",
    "start",
    required=True,
    help="Range start (inclusive): ISO-8601 with an offset (2024-05-01T12:00:00Z), a date, "
    "epoch ms, now, -2h or now-1h.",
)
@click.option("--to", "end", required=True, help="Range end (exclusive), same forms.")
@click.option("--compare-from", default=None, help="Start of a range to compare with.")
@click.option("--compare-to", default=None, help="End of the range to compare with.")
@click.option(
    "--features", "-f", default=None, help="Comma-separated subset of the view's features."
)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.option(
    "--fail-on-drift",
    is_flag=True,
    help=f"Exit {EXIT_DRIFT} when a feature's PSI is above {PSI_THRESHOLD} (a CI gate).",
)
@click.option(
    "--offline-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The offline log root (default: FRESHET_OFFLINE_DIR, else ./data/offline).",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="DuckDB threads.")
def stats(
    view: str,
    start: str,
    end: str,
    compare_from: str | None,
    compare_to: str | None,
    features: str | None,
    as_json: bool,
    fail_on_drift: bool,
    offline_dir: Path | None,
    threads: int | None,
) -> None:
    """Statistics of VIEW's features over the offline log rows with --from <= as_of < --to.

    Per feature: rows, nulls, min/max/mean/stddev/quantiles and a histogram (numbers), or
    distinct values and the most frequent ones (strings, last_k and top_k lists). With
    --compare-from/--compare-to, the same for that range and each feature's drift from the
    first range as a PSI score, flagged above the threshold (README: "Statistics and drift").

    \b
        freshet stats card_txn --from now-2h --to now-1h --compare-from now-1h --compare-to now
    """
    if (compare_from is None) != (compare_to is None):
        raise click.UsageError("give both --compare-from and --compare-to, or neither")
    root = offline_dir if offline_dir is not None else Settings.from_env().offline_dir
    try:
        layout = get_view(view).layout()
    except UnknownViewError as exc:
        raise click.BadParameter(str(exc), param_hint="VIEW") from None
    try:
        base = TimeRange(parse_time(start), parse_time(end))
        compare = (
            TimeRange(parse_time(compare_from), parse_time(compare_to))
            if compare_from is not None and compare_to is not None
            else None
        )
        names = [f for f in features.split(",") if f] if features else None
        result = view_stats(root, layout, base, compare=compare, features=names, threads=threads)
    except StatsError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print(result)
    if fail_on_drift and result.drifted:
        raise SystemExit(EXIT_DRIFT)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _print(result: ViewStats) -> None:
    from rich.console import Console
    from rich.table import Table

    doc = result.to_json()
    console = Console()
    ranges = f"{doc['base']['from']} .. {doc['base']['to']}: {doc['base']['rows']:,} rows"
    if result.compare is not None:
        ranges += (
            f"; compared with {doc['compare']['from']} .. {doc['compare']['to']}: "
            f"{doc['compare']['rows']:,} rows"
        )
    table = Table(
        title=f"[bold]{result.view}[/] v{result.version}",
        caption=ranges,
        title_justify="left",
        caption_justify="left",
    )
    for column in ("feature", "rows", "nulls", "min", "p50", "mean", "max", "top values"):
        table.add_column(column, justify="left" if column in ("feature", "top values") else "right")
    if result.compare is not None:
        table.add_column("PSI", justify="right")
        table.add_column("drift")
    for name, feature in doc["features"].items():
        base = feature["base"]
        if feature["kind"] == "numeric":
            cells = [_num(base["min"]), _num(base["quantiles"]["0.5"]), _num(base["mean"]),
                     _num(base["max"]), ""]  # fmt: skip
        else:
            top = ", ".join(f"{t['value']} ({t['count']})" for t in base["top"][:3])
            cells = ["", "", "", "", top]
        row = [name, f"{base['rows']:,}", f"{base['nulls']:,}", *cells]
        if result.compare is not None:
            drift = feature["drift"]
            row += [
                _num(drift["psi"]),
                "[red]DRIFT[/]" if drift["drifted"] else "[green]ok[/]",
            ]
        table.add_row(*row)
    console.print(table)
