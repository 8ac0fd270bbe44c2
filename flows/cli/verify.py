"""``freshet verify VIEW`` and ``freshet reconcile VIEW``: Redis against the offline log.

Exit status of ``verify``: 0 when Redis and the log agree for every checked entity (an entity
may be ``expired`` or ``in_flight``), 1 when any entity differs (``online_newer``,
``missing_offline``, ``missing_online``, ``online_stale``, ``values_differ``), 3 when Redis is
unreachable; ``reconcile`` exits 0 or 3. Outcomes and ``--allow-lag``: see
:mod:`freshet.offline.reconcile`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson
import redis

from freshet.cli._views import resolve_view
from freshet.dsl.definitions import FeatureView
from freshet.offline.reconcile import FAILING, Outcome, ReconcileReport, Record, VerifyReport
from freshet.offline.reconcile import reconcile as run_reconcile
from freshet.offline.reconcile import verify as run_verify
from freshet.sinks.redis_store import RedisClient, RedisFeatureWriter, connect
from freshet.sinks.settings import Settings

__all__ = ["reconcile", "verify"]

_STORE_DOWN_EXIT = 3
# `freshet run --segment-age` defaults to 60 s: a row may reach the log that long after Redis.
_DEFAULT_ALLOW_LAG_S = 90.0
# How long reconcile keeps retrying a batch while Redis is unreachable before it gives up.
_GIVE_UP_AFTER_S = 30.0


class _StoreDown(click.ClickException):
    exit_code = _STORE_DOWN_EXIT


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


# What each failing kind means, and what repairs it (one line of the summary).
_MEANING: dict[Outcome, str] = {
    Outcome.MATCH: "Redis serves the log's latest row",
    Outcome.EXPIRED: "latest row older than the TTL, Redis record gone or older (legitimate)",
    Outcome.IN_FLIGHT: "differed, then caught up while re-checked (a running flow)",
    Outcome.ONLINE_NEWER: "Redis newer than the log's latest row: the log lost rows "
    "(rebuild it with `freshet backfill`)",
    Outcome.MISSING_OFFLINE: "in Redis, no row in the log: the log lost rows "
    "(rebuild it with `freshet backfill`)",
    Outcome.MISSING_ONLINE: "latest log row not expired, no Redis record "
    "(`freshet reconcile` repairs)",
    Outcome.ONLINE_STALE: "Redis older than the log's latest row (`freshet reconcile` repairs)",
    Outcome.VALUES_DIFFER: "same as_of and offset, different values: a bug or a tampered "
    "store (`freshet reconcile` rewrites Redis from the log)",
}
# Summary order: failures first, then what is fine.
_ORDER = [
    Outcome.ONLINE_NEWER,
    Outcome.MISSING_OFFLINE,
    Outcome.MISSING_ONLINE,
    Outcome.ONLINE_STALE,
    Outcome.VALUES_DIFFER,
    Outcome.IN_FLIGHT,
    Outcome.EXPIRED,
    Outcome.MATCH,
]


def _side(view: FeatureView, record: Record | None) -> str:
    if record is None:
        return "-"
    names = [f.name for f in view.features]
    pairs = ", ".join(f"{n}={v!r}" for n, v in zip(names, record.values, strict=False))
    as_of = datetime.fromtimestamp(record.as_of / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return f"as_of={as_of} offset={record.offset} {pairs}"


def _print_verify(view: FeatureView, report: VerifyReport) -> None:
    scope = (
        f"sample of {report.checked_offline:,} of {report.offline_entities:,} log entities, "
        f"{report.checked_online:,} Redis records scanned"
        if report.sample is not None
        else f"{report.checked_offline:,} log entities, {report.checked_online:,} Redis records"
    )
    waited = f", waited {report.waited_s:.1f} s for rows in flight" if report.waited_s else ""
    click.echo(
        f"verify {report.view} v{report.version}: {scope}; --allow-lag {report.allow_lag_s:g} s "
        f"({report.elapsed_s:.1f} s{waited})"
    )
    width = max(len(o.value) for o in Outcome)
    for outcome in _ORDER:
        count = report.counts[outcome]
        if not count and outcome in FAILING:
            continue
        mark = "FAIL" if outcome in FAILING else "ok  "
        names = ", ".join(repr(e.entity) for e in report.examples.get(outcome, ()))
        example = f"; e.g. {names}" if names and outcome is not Outcome.MATCH else ""
        click.echo(f"  {mark} {outcome.value:<{width}} {count:>9,}  {_MEANING[outcome]}{example}")
    for outcome in _ORDER:
        if outcome not in FAILING:
            continue
        for ex in report.examples.get(outcome, ()):
            click.echo(f"{outcome.value} {ex.entity!r}")
            click.echo(f"    offline: {_side(view, ex.offline)}")
            click.echo(f"    online:  {_side(view, ex.online)}")
    if report.ok:
        click.echo("OK: Redis and the offline log agree")
    else:
        kinds = ", ".join(f"{o.value} {n:,}" for o, n in report.failing.items())
        click.echo(f"FAILED: Redis and the offline log differ ({kinds})")


def _say_waiting(allow_lag: float) -> Callable[[int, float], None]:
    def say(pending: int, seconds: float) -> None:
        click.echo(
            f"{pending:,} differing entities may be rows in flight (newer than --allow-lag "
            f"{allow_lag:g} s): re-checking them for up to {seconds:.0f} s",
            err=True,
        )

    return say


@click.command()
@click.argument("view_name", metavar="VIEW")
@click.option(
    "--allow-lag",
    type=click.FloatRange(min=0),
    default=_DEFAULT_ALLOW_LAG_S,
    show_default=True,
    metavar="SECONDS",
    help="How long a row may take to reach both stores. A difference whose newer row is "
    "younger than this (counted from its Redis write, or its log segment's commit) is "
    "re-checked until the other store catches up (reported in_flight, not a failure) or the "
    "row reaches this age (a failure): a running flow passes, a stopped one fails after at "
    "most this wait. Rows the log has and Redis lacks get at most 10 s. The default covers "
    "`freshet run --segment-age` (60 s by default); raise it with that. 0: fail every "
    "difference at once.",
)
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
    allow_lag: float,
    sample: int | None,
    seed: int,
    examples: int,
    offline_dir: Path | None,
    as_json: bool,
) -> None:
    """Check that VIEW's Redis records and its offline log agree, entity by entity.

    Compares each entity's Redis record with its latest log row and prints one line per
    kind of difference, with counts and example entities:

    \b
      online_newer     Redis has a newer row than the log's latest
      missing_offline  Redis has the entity, the log has no row of it
      missing_online   the log's latest row is not expired, Redis has no record
      online_stale     Redis has an older row than the log's latest
      values_differ    same as_of and offset, different values

    Not failures: expired (the latest row is older than the view's TTL, so Redis may
    legitimately have dropped it) and in_flight (see --allow-lag).

    Exit status: 0 when the stores agree, 1 when any entity differs, 3 when Redis is
    unreachable.
    """
    view = resolve_view(view_name)
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
            allow_lag_s=allow_lag,
            on_wait=None if as_json else _say_waiting(allow_lag),  # JSON: see waited_s
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
    view = resolve_view(view_name)
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
