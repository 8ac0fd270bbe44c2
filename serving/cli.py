"""``freshet serve`` (the lookup endpoint) and ``freshet get`` (one entity's features).

``freshet get`` reads Redis directly (``FRESHET_REDIS_URL``) with the same reader as the
endpoint, so it works as soon as a flow has written, without a server; ``--url`` sends the
lookup through a running endpoint instead (and ``--api-key`` authenticates there).
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from typing import Any

import click
import orjson

from freshet.sinks.settings import Settings

__all__ = ["get", "serve"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers", "-w", default=1, show_default=True, type=click.IntRange(1), help="Processes."
)
@click.option(
    "--server",
    type=click.Choice(["uvicorn", "granian"]),
    default="uvicorn",
    show_default=True,
    help="HTTP server: uvicorn (httptools; least CPU per lookup, lowest latency, steady under "
    "CPU contention) or granian (Rust I/O thread: more lookups/s at 32+ concurrent clients "
    "when a spare core exists); see tests/bench/serving.",
)
@click.option("--access-log/--no-access-log", default=False, show_default=True)
@click.option(
    "--ui/--no-ui",
    default=None,
    help="The web console at /ui (default: on, unless FRESHET_UI=off).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def serve(
    host: str,
    port: int,
    workers: int,
    server: str,
    access_log: bool,
    ui: bool | None,
    log_level: str,
) -> None:
    """Serve feature lookups over HTTP (uvicorn or granian, on uvloop).

    GET /v1/features/VIEW/ENTITY[?features=a,b] (VIEW/K1/K2 for a view keyed by several
    fields), POST /v1/features/VIEW with {"entities": [...], "features": [...]} (at most
    1,000 entities; objects of key fields for such views), POST /v1/services/NAME with
    {"rows": [...]} (feature services), GET /v1/views, /v1/services, /healthz, /readyz,
    /metrics, /openapi.json. VIEW may be VIEW@N (a registered older version). Reads
    FRESHET_REDIS_URL and FRESHET_API_KEYS ("key1:view_a,view_b;key2:*"; unset: no auth).
    The web console is at /ui (README "Web console"; FRESHET_UI_FLOW_METRICS names the
    flows' metrics addresses for its health page).
    """
    from freshet.serving.auth import ApiKeys
    from freshet.serving.redis_link import RedisLink

    settings = Settings.from_env()
    try:
        ApiKeys.from_env()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="FRESHET_API_KEYS") from exc
    try:
        RedisLink(settings.redis_url)  # validates the URL; connects only when serving
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="FRESHET_REDIS_URL") from exc
    if ui is not None:  # workers build the app from the environment
        os.environ["FRESHET_UI"] = "on" if ui else "off"
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers are separate processes: share metric values through files so /metrics on
        # any worker reports them all. Set before the workers start (they inherit it).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="freshet-metrics-")
    click.echo(f"freshet serve: http://{host}:{port}  ({server}, {workers} worker(s))", err=True)
    # uvicorn handles SIGTERM/SIGINT itself (stops accepting, finishes requests in flight) and
    # then re-raises the signal to the handler it found: a no-op one here, so a stopped server
    # exits 0 like every long-running freshet command, not -15.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    if server == "granian":
        _run_granian(host, port, workers, access_log, log_level)
    else:
        _run_uvicorn(host, port, workers, access_log, log_level)


def _run_granian(host: str, port: int, workers: int, access_log: bool, log_level: str) -> None:
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    Server(
        "freshet.serving.app:app_from_env",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        websockets=False,
        log_access=access_log,
        log_level=LogLevels(log_level),
        factory=True,
        # A worker that has not stopped 10 s after SIGTERM is killed (granian's default waits
        # forever: a stuck worker once held `serve` past a 20 s shutdown under load). The app
        # keeps nothing that a kill loses: its metrics are flushed every second.
        workers_kill_timeout=10,
    ).serve()


def _run_uvicorn(host: str, port: int, workers: int, access_log: bool, log_level: str) -> None:
    import uvicorn

    uvicorn.run(
        "freshet.serving.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=access_log,
        log_level=log_level,
        lifespan="on",
    )


@click.command()
@click.argument("view", required=False)
@click.argument("entity", nargs=-1)
@click.option("--features", "-f", help="Comma-separated subset of the view's features.")
@click.option(
    "--service",
    "-s",
    help="Look up a feature service instead of a view; the arguments are then FIELD=VALUE "
    "pairs: every key field of its views and every request field.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the lookup as JSON.")
@click.option("--url", help="Ask a running endpoint (e.g. http://127.0.0.1:8000), not Redis.")
@click.option("--api-key", help="API key for --url.")
def get(
    view: str | None,
    entity: tuple[str, ...],
    features: str | None,
    service: str | None,
    as_json: bool,
    url: str | None,
    api_key: str | None,
) -> None:
    """Show one entity's current features in VIEW (read from Redis, or from --url).

    ENTITY is the entity's id; for a view keyed by several fields, give one value per key
    field, in the order the view declares its key: freshet get card_merchant c1 m2. VIEW may
    be VIEW@N (version N while a newer one is registered).

    With --service NAME, one row of a feature service, given as FIELD=VALUE pairs (request
    fields are parsed as their declared types; null is null):

    \b
        freshet get --service fraud_v1 card_id=c1 merchant=m2 amount=12.5
    """
    from freshet.serving.keys import entity_problem

    if service is not None:
        if features:
            raise click.UsageError("--features applies to views; a service names its features")
        pairs = (view, *entity) if view is not None else entity
        answer = _service_lookup(service, pairs, url, api_key)
        if as_json:
            click.echo(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
        else:
            _print_service(service, answer)
        return
    if view is None or not entity:
        raise click.UsageError("give VIEW and ENTITY (or --service NAME FIELD=VALUE ...)")

    # The endpoint's rule: an id it answers with a 422 is refused here with the same message,
    # not looked up (such ids are never stored, so Redis would only say "not found").
    if len(entity) == 1:
        problem = entity_problem(entity[0])
        if problem is not None:
            raise click.BadParameter(problem, param_hint="ENTITY")
    names = [f for f in features.split(",") if f] if features else None
    lookup = (
        _via_http(url, api_key, view, entity, names) if url else _via_redis(view, entity, names)
    )
    if as_json:
        click.echo(orjson.dumps(lookup, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_table(lookup)


def _via_redis(view: str, values: tuple[str, ...], names: list[str] | None) -> dict[str, Any]:
    import redis

    from freshet.dsl.registry import UnknownViewError, get_view
    from freshet.serving.keys import EntityKeyError, composite_key, key_shape
    from freshet.sinks.redis_store import RedisFeatureReader, UnknownFeatureError, connect

    try:
        layout = get_view(view).layout()
    except UnknownViewError as exc:
        raise click.BadParameter(str(exc), param_hint="VIEW") from None
    key = None
    if layout.is_composite:
        try:
            entity, key = composite_key(layout, values)
        except EntityKeyError as exc:
            raise click.BadParameter(str(exc), param_hint="ENTITY") from None
    elif len(values) != 1:
        raise click.BadParameter(
            f"{len(values)} values given; {key_shape(layout)}: give one", param_hint="ENTITY"
        )
    else:
        entity = values[0]
    settings = Settings.from_env()
    # A cluster client fails in its constructor, with an error outside redis.RedisError.
    unavailable = (redis.RedisError, redis.exceptions.RedisClusterException)
    try:
        client = connect(settings.redis_url)
    except unavailable as exc:
        raise click.ClickException(f"Redis at FRESHET_REDIS_URL is unavailable: {exc}") from exc
    try:
        # VIEW may be NAME@N: the reader knows the view by its name.
        reader = RedisFeatureReader(
            client, {layout.name: layout}, stale_grace_ms=settings.stale_grace_ms
        )
        lookup = reader.get(layout.name, entity, names)
    except UnknownFeatureError as exc:
        raise click.BadParameter(str(exc), param_hint="--features") from None
    except unavailable as exc:
        raise click.ClickException(f"Redis at FRESHET_REDIS_URL is unavailable: {exc}") from exc
    finally:
        client.close()
    if key is not None:
        lookup["key"] = key
    return dict(lookup)


def _via_http(
    url: str, api_key: str | None, view: str, entity: tuple[str, ...], names: list[str] | None
) -> dict[str, Any]:
    from freshet.serving.client import Client, ServingError

    with Client(url, api_key=api_key) as client:
        try:
            # several values: one path segment each, in key order (the endpoint checks them)
            return client.get(view, entity[0] if len(entity) == 1 else entity, names)
        except ServingError as exc:
            raise click.ClickException(str(exc)) from exc


def _service_lookup(
    name: str, pairs: tuple[str, ...], url: str | None, api_key: str | None
) -> dict[str, Any]:
    """One service row's result, through ``url`` or straight from Redis."""
    from freshet.dsl.registry import UnknownServiceError, get_service

    if not pairs:
        raise click.UsageError("give the row as FIELD=VALUE pairs, e.g. card_id=c1 amount=9.5")

    def parse(types: dict[str, str]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for pair in pairs:
            field, sep, text = pair.partition("=")
            if not sep or not field:
                raise click.BadParameter(f"{pair!r} is not FIELD=VALUE", param_hint="FIELD=VALUE")
            row[field] = _typed(field, text, types.get(field))
        return row

    if url is not None:
        from freshet.serving.client import Client, ServingError

        with Client(url, api_key=api_key) as client:
            try:
                # the endpoint's listing gives the request fields' types
                listed = {s["name"]: s for s in client.services()}
                if name not in listed:
                    known = ", ".join(listed) or "(none)"
                    raise click.BadParameter(
                        f"unknown service {name!r}; known: {known}", param_hint="--service"
                    )
                return client.get_service(name, [parse(listed[name]["request"])])[0]
            except ServingError as exc:
                raise click.ClickException(str(exc)) from exc
    try:
        plan = get_service(name)
    except UnknownServiceError as exc:
        raise click.BadParameter(str(exc), param_hint="--service") from None
    return _service_via_redis(plan, parse(dict(plan.request)))


def _typed(field: str, text: str, kind: str | None) -> Any:
    """A FIELD=VALUE value as its request field's type (``null`` is null); key fields (no
    ``kind``) and string fields stay text (a long key field takes its digits)."""
    if kind is None or kind == "string":
        return text
    if text.lower() == "null":
        return None
    try:
        if kind == "float64":
            return float(text)
        if kind == "int64":
            return int(text)
    except ValueError:
        raise click.BadParameter(
            f"{field}={text!r}: {field} is a {kind} request field", param_hint="FIELD=VALUE"
        ) from None
    if text.lower() not in ("true", "false"):
        raise click.BadParameter(
            f"{field}={text!r}: {field} is a bool request field (true or false)",
            param_hint="FIELD=VALUE",
        )
    return text.lower() == "true"


def _service_via_redis(plan: Any, row: dict[str, Any]) -> dict[str, Any]:
    import redis

    from freshet.serving.errors import HttpError
    from freshet.serving.services import ServiceRows
    from freshet.sinks.redis_store import RedisFeatureReader, connect

    rows = ServiceRows(plan, max_batch=1)
    try:
        entities, values, _ = rows.parse(orjson.dumps({"rows": [row]}))
    except HttpError as exc:
        raise click.BadParameter(exc.message, param_hint="FIELD=VALUE") from None
    unavailable = (redis.RedisError, redis.exceptions.RedisClusterException)
    try:
        settings = Settings.from_env()
        client = connect(settings.redis_url)
    except unavailable as exc:
        raise click.ClickException(f"Redis at FRESHET_REDIS_URL is unavailable: {exc}") from exc
    try:
        reader = RedisFeatureReader(
            client,
            {v.ref: v.layout for v in plan.views},
            stale_grace_ms=settings.stale_grace_ms,
        )
        raws = reader.mget(rows.keys(reader, entities))  # one round trip, as the endpoint
        now = reader.now_ms()
        records = rows.records(reader, raws, now)
    except unavailable as exc:
        raise click.ClickException(f"Redis at FRESHET_REDIS_URL is unavailable: {exc}") from exc
    except HttpError as exc:
        raise click.BadParameter(exc.message, param_hint="FIELD=VALUE") from None
    finally:
        client.close()
    result: dict[str, Any] = rows.answer(values, entities, records, now)["results"][0]
    return result


def _print_service(name: str, result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    ages = []
    for view, info in result["views"].items():
        seen = "not found" if not info["found"] else f"age {info['age_ms'] / 1000:.1f} s"
        ages.append(f"{view}@{info['version']} {info['entity']}: {seen}")
    table = Table(
        title=f"[bold]service {name}[/]",
        caption="; ".join(ages),
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("feature")
    table.add_column("value", justify="right")
    table.add_column("status")
    colors = {"present": "green", "not_found": "yellow", "expired": "red", "stale": "red"}
    for feature, value in result["features"].items():
        status = result["status"][feature]
        table.add_row(feature, _shown(value), f"[{colors.get(status, 'white')}]{status}[/]")
    Console().print(table)


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".")
    return str(value)


def _print_table(lookup: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    key = lookup.get("key")
    shown_entity = ", ".join(f"{k}={v}" for k, v in key.items()) if key else lookup["entity"]
    title = f"[bold]{lookup['view']}[/] / [bold]{shown_entity}[/]"
    if lookup["found"]:
        as_of = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(lookup["as_of"] / 1000))
        caption = (
            f"as of {as_of}.{lookup['as_of'] % 1000:03d} UTC, age {lookup['age_ms'] / 1000:.1f} s"
        )
        valid_until = lookup.get("valid_until")
        if valid_until is not None:
            left = (valid_until - lookup["as_of"] - lookup["age_ms"]) / 1000
            caption += (
                f"; windowed values valid for {left:.1f} s more" if left >= 0
                else f"; windowed values due to change {-left:.1f} s ago"
            )  # fmt: skip
    else:
        caption = "[yellow]not found[/]"
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    table.add_column("feature")
    table.add_column("value", justify="right")
    table.add_column("status")
    colors = {"present": "green", "not_found": "yellow", "expired": "red", "stale": "red"}
    for name, value in lookup["features"].items():
        status = lookup["status"][name]
        if value is None:
            shown = "-"
        elif isinstance(value, float):
            shown = f"{value:.6f}".rstrip("0").rstrip(".")
        else:
            shown = str(value)
        table.add_row(name, shown, f"[{colors.get(status, 'white')}]{status}[/]")
    Console().print(table)
