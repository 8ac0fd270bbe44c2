"""``freshet historical``: a point-in-time training set from the offline log."""

from __future__ import annotations

import time
from pathlib import Path

import click

from freshet.dsl.registry import UnknownServiceError, UnknownViewError, get_service, get_view
from freshet.offline.historical import (
    HistoricalError,
    key_columns,
    parse_feature_specs,
    read_entities,
    write_historical,
)
from freshet.sinks.settings import Settings

__all__ = ["historical"]


@click.command()
@click.option(
    "--entities",
    "entities_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Parquet or CSV file of rows: entity, timestamp[, label…] (labels are kept); for a "
    "view keyed by several fields, one column per key field (named as the field) instead of "
    "entity.",
)
@click.option(
    "--features",
    "feature_specs",
    multiple=True,
    help="view:feature,… (or view:* for all of a view's features); repeatable. "
    "Give --features or --service.",
)
@click.option(
    "--service",
    "service_name",
    default=None,
    help="A feature service: the output gets exactly the columns POST /v1/services/NAME "
    "answers (<view>__<feature>, then the derived features). The rows hold the key fields of "
    "its views, the timestamp and its request fields.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Output file: .parquet or .csv (written to a temporary name, then renamed).",
)
@click.option("--entity-column", default="entity", show_default=True)
@click.option(
    "--timestamp-column",
    default="timestamp",
    show_default=True,
    help="Epoch milliseconds, timestamps or ISO-8601 strings (no offset = UTC).",
)
@click.option(
    "--full-names", is_flag=True, help="Name feature columns <view>__<feature> (default: feature)."
)
@click.option("--with-as-of", is_flag=True, help="Add <view>__as_of: the matched log row's time.")
@click.option(
    "--offline-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The offline log root (default: FRESHET_OFFLINE_DIR, else ./data/offline).",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="DuckDB threads.")
@click.option(
    "--memory-limit",
    default=None,
    help="DuckDB memory limit, e.g. 2GB (default 80% of RAM; beyond it, joins spill to disk).",
)
def historical(
    entities_path: Path,
    feature_specs: tuple[str, ...],
    service_name: str | None,
    out_path: Path,
    entity_column: str,
    timestamp_column: str,
    full_names: bool,
    with_as_of: bool,
    offline_dir: Path | None,
    threads: int | None,
    memory_limit: str | None,
) -> None:
    """Join entity/timestamp rows with feature values as of each timestamp (point in time).

    Each row gets, per view, the values of the entity's latest log row with as_of <= timestamp
    (never a later one); nulls when the entity has no such row or the value had expired (older
    than the view's TTL at that timestamp). Rows keep the input's order and columns.

    A view keyed by several fields (e.g. card_id, merchant) takes its key from the input's
    columns named as those fields; views keyed differently can be joined in one call.

    With --service NAME, the rows are a feature service's (key fields, timestamp, request
    fields) and the output has the service's columns, derived features computed by the same
    code as the endpoint:

    \b
        freshet historical --service fraud_v1 --entities rows.csv --out train.parquet
    """
    root = offline_dir if offline_dir is not None else Settings.from_env().offline_dir
    started = time.perf_counter()
    if service_name is not None:
        if feature_specs:
            raise click.UsageError("give --features or --service, not both")
        _service(service_name, entities_path, out_path, root, timestamp_column, with_as_of,
                 threads, memory_limit, started)  # fmt: skip
        return
    if not feature_specs:
        raise click.UsageError("give --features view:feature,… or --service NAME")
    try:
        requests = parse_feature_specs(feature_specs, get_view)
        entities = read_entities(
            entities_path,
            entity_column=entity_column,
            timestamp_column=timestamp_column,
            key_columns=key_columns(requests),
        )
        rows = write_historical(
            root,
            entities,
            requests,
            out_path,
            entity_column=entity_column,
            timestamp_column=timestamp_column,
            full_names=full_names,
            with_as_of=with_as_of,
            threads=threads,
            memory_limit=memory_limit,
        )
    except UnknownViewError as exc:
        raise click.BadParameter(str(exc), param_hint="--features") from exc
    except HistoricalError as exc:
        raise click.ClickException(str(exc)) from exc
    elapsed = time.perf_counter() - started
    features = sum(len(r.features) for r in requests)
    click.echo(
        f"wrote {rows:,} rows x {features} feature(s) from {len(requests)} view(s) to "
        f"{out_path} in {elapsed:.1f} s ({rows / max(elapsed, 1e-9):,.0f} rows/s)"
    )


def _service(
    name: str,
    entities_path: Path,
    out_path: Path,
    root: Path,
    timestamp_column: str,
    with_as_of: bool,
    threads: int | None,
    memory_limit: str | None,
    started: float,
) -> None:
    from freshet.offline.services import read_service_rows, write_service_historical

    try:
        plan = get_service(name)
    except UnknownServiceError as exc:
        raise click.BadParameter(str(exc), param_hint="--service") from None
    try:
        rows_table = read_service_rows(entities_path, plan, timestamp_column=timestamp_column)
        rows = write_service_historical(
            root,
            rows_table,
            plan,
            out_path,
            timestamp_column=timestamp_column,
            with_as_of=with_as_of,
            threads=threads,
            memory_limit=memory_limit,
        )
    except HistoricalError as exc:
        raise click.ClickException(str(exc)) from exc
    elapsed = time.perf_counter() - started
    click.echo(
        f"wrote {rows:,} rows x {len(plan.columns)} column(s) of service {name!r} from "
        f"{len(plan.views)} view(s) to {out_path} in {elapsed:.1f} s"
    )
