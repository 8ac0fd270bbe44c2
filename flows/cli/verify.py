"""``freshet verify VIEW`` and ``freshet reconcile VIEW``: Redis against the offline log.

Exit status of ``verify``: 0 when Redis serves the log's latest value for every checked entity,
1 when some entity is ``mismatch`` or ``missing_online`` (``reconcile`` repairs both), 3 when
Redis is unreachable; ``reconcile`` exits 0 or 3. Outcomes: see :mod:`flows.reconcile`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
import redis

from flows.definitions import FeatureView
from flows.reconcile import FAILING, Outcome, ReconcileReport, VerifyReport
from flows.reconcile import reconcile as run_reconcile
from flows.reconcile import verify as run_verify
from flows.registry import UnknownViewError, get_view
from sinks.redis_store import RedisClient, RedisFeatureWriter, connect
from sinks.settings import Settings

__all__ = ["reconcile", "verify"]

_STORE_DOWN_EXIT = 3
# How long reconcile keeps retrying a batch while Redis is unreachable before it gives up.
_GIVE_UP_AFTER_S = 30.0


class _StoreDown(click.ClickException):
    exit_code = _STORE_DOWN_EXIT


def _view(name: str) -> FeatureView:
    try:
        return get_view(name)
    except UnknownViewError as exc:
        raise click.BadParameter(str(exc), param_hint="VIEW") from exc


def _client(settings: Settings) -> RedisClient:
    try:
        client = connect(settings.redis_url)
        client.ping()
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise _StoreDown(f"Redis at {settings.redis_url} is unavailable: {exc}") from exc
    return client


def _root(offline_dir: Path | None, settings: Settings) -> Path:
    return offline_dir if offline_dir is not None else settings.offline_dir


_offline_dir_option = click.option(
    "--offline-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The offline log root (default: FRESHET_OFFLINE_DIR, else ./data/offline).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")


def _values(view: FeatureView, record: Any) -> str:
    if record is None:
        return "-"
    names = [f.name for f in view.features]
    pairs = ", ".join(f"{n}={v!r}" for n, v in zip(names, record.values, strict=False))
    as_of = datetime.fromtimestamp(record.as_of / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return f"as_of={as_of} offset={record.offset} {pairs}"


def _print_verify(view: FeatureView, report: VerifyReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    scope = (
        f"sample of {report.checked_offline:,} of {report.offline_entities:,} log entities, "
        f"{report.checked_online:,} Redis records scanned"
        if report.sample is not None
        else f"{report.checked_offline:,} log entities, {report.checked_online:,} Redis records"
    )
    console.print(
        f"[bold]verify {report.view}[/] v{report.version}: {scope} ({report.elapsed_s:.1f} s)"
    )
    table = Table()
    table.add_column("outcome")
    table.add_column("entities", justify="right")
    for outcome in Outcome:
        style = "red" if outcome in FAILING and report.counts[outcome] else ""
        table.add_row(outcome.value, f"{report.counts[outcome]:,}", style=style)
    console.print(table)
    for outcome, examples in report.examples.items():
        for ex in examples:
            detail = f" ({ex.detail})" if ex.detail else ""
            console.print(f"[bold]{outcome.value}{detail}[/] entity {ex.entity!r}", markup=True)
            console.print(f"    offline: {_values(view, ex.offline)}", markup=False)
            console.print(f"    online:  {_values(view, ex.online)}", markup=False)
    console.print("OK" if report.ok else "FAILED: run `freshet reconcile` to repair Redis")


@click.command()
@click.argument("view_name", metavar="VIEW")
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=None,
    help="Check N random log entities (and scan at most N Redis records) instead of all.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option(
    "--examples", type=click.IntRange(min=0), default=5, show_default=True, help="Per outcome."
)
@_offline_dir_option
@_json_option
def verify(
    view_name: str,
    sample: int | None,
    seed: int,
    examples: int,
    offline_dir: Path | None,
    as_json: bool,
) -> None:
    """Compare VIEW's Redis records with the latest offline log row of each entity.

    Reports how many entities match, mismatch (Redis older or different), are missing online
    or offline, expired, or newer online (the log not caught up yet), with examples. Exits 1
    on mismatches or missing-online entities.
    """
    view = _view(view_name)
    settings = Settings.from_env()
    client = _client(settings)
    try:
        report = run_verify(
            client,
            _root(offline_dir, settings),
            view.layout(),
            sample=sample,
            seed=seed,
            examples=examples,
        )
    except redis.RedisError as exc:
        raise _StoreDown(f"Redis at {settings.redis_url} failed during verify: {exc}") from exc
    finally:
        client.close()
    if as_json:
        click.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_verify(view, report)
    if not report.ok:
        raise SystemExit(1)


def _print_reconcile(report: ReconcileReport) -> None:
    click.echo(
        f"reconcile {report.view} v{report.version}: {report.offline_entities:,} log entities; "
        f"wrote {report.written:,} latest rows, {report.won:,} won, "
        f"{report.kept_newer:,} kept a newer Redis value, "
        f"{report.skipped_expired:,} skipped (expired) in {report.elapsed_s:.1f} s"
    )


@click.command()
@click.argument("view_name", metavar="VIEW")
@_offline_dir_option
@_json_option
def reconcile(view_name: str, offline_dir: Path | None, as_json: bool) -> None:
    """Rewrite VIEW's Redis records from the latest offline log row of each entity.

    Writes go through the newer-wins writer: a Redis value newer than the log's is kept,
    never replaced by an older one. Rows already older than the view's TTL are skipped.
    """
    view = _view(view_name)
    layout = view.layout()
    settings = Settings.from_env()
    client = _client(settings)
    writer = RedisFeatureWriter(client, {layout.name: layout}, give_up_after_s=_GIVE_UP_AFTER_S)
    try:
        report = run_reconcile(client, _root(offline_dir, settings), layout, writer=writer)
    except redis.RedisError as exc:
        raise _StoreDown(f"Redis at {settings.redis_url} failed during reconcile: {exc}") from exc
    finally:
        client.close()
    if as_json:
        click.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_reconcile(report)
