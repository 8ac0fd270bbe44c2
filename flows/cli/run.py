"""``freshet run VIEW [VIEW…]``: run the streaming flow of one or more views.

One process with ``-w`` worker threads, ``-p N`` local processes (this command spawns and
supervises them), or one process of a cluster you start yourself (``-i ID -a ADDRESSES``,
e.g. one per pod). With ``--recovery-dir`` the flow snapshots its Kafka offsets, engine state
and Parquet writers every ``--snapshot-interval`` seconds and resumes from the last snapshot
after a crash; the directory is initialised on first use.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import click

from freshet.cli._views import resolve_views
from freshet.ops.processes import ProcessGroup, cluster_addresses, die_with_parent
from freshet.sinks.clock import TimeFormatError, now_ms, parse_time
from freshet.stream.metrics import DEFAULT_METRICS_PORT
from freshet.stream.runtime import (
    FlowClockFile,
    check_redis,
    ensure_dead_letter_topics,
    freeze_gc_survivors,
    init_recovery,
    log_end,
)
from freshet.stream.shutdown import STOP, block_stop_signals

__all__ = ["parse_start", "run"]

log = logging.getLogger("freshet.run")

# This interpreter running the ``freshet`` console script, whatever PATH says.
_FRESHET = (sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())")


def parse_start(value: str) -> str | int:
    """``earliest``, ``latest``, or a time :func:`freshet.sinks.clock.parse_time` accepts
    (epoch milliseconds, an ISO-8601 time with offset or date, ``now``, ``-2h``)."""
    text = value.strip()
    if text in ("earliest", "latest"):
        return text
    try:
        return parse_time(text, now_ms=now_ms(), what="--from")
    except TimeFormatError as exc:
        raise click.BadParameter(f"{exc}; or earliest, latest") from None


def _child_setup() -> None:
    die_with_parent()  # SIGKILL when the supervising ``freshet run -p`` process dies
    block_stop_signals()  # until the child's own handler is installed (freshet.stream.shutdown)


def _supervise(processes: int, argv: Sequence[str], metrics_port: int) -> int:
    """Run ``processes`` copies of this command as one cluster; the first failure stops all.

    They share this host, so child ``i`` serves its metrics on ``metrics_port + i``.
    """
    addresses = cluster_addresses(processes)
    group = ProcessGroup(
        [
            [
                *_FRESHET,
                "run",
                *argv,
                "-i",
                str(i),
                "-a",
                addresses,
                "--metrics-port",
                str(metrics_port + i if metrics_port else 0),
            ]
            for i in range(processes)
        ],
        preexec_fn=_child_setup,
    )
    return group.supervise()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("view_names", metavar="VIEW [VIEW…]", nargs=-1, required=True)
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker threads per process (they share the GIL: prefer -p).",
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Local processes forming one cluster (spawned and supervised here).",
)
@click.option(
    "-i",
    "--process-id",
    type=click.IntRange(0),
    default=None,
    envvar="BYTEWAX_PROCESS_ID",
    help="This process's index in a cluster you start.",
)
@click.option(
    "-a",
    "--addresses",
    default=None,
    envvar="BYTEWAX_ADDRESSES",
    help='Every cluster process as "host:port;host:port" (with -i).',
)
@click.option(
    "--recovery-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Snapshot state here and resume from it after a crash.",
)
@click.option(
    "--state-store",
    type=click.Choice(["segments", "snapshots"]),
    default="segments",
    show_default=True,
    help="With --recovery-dir, where engine state lives: 'segments' (files under the recovery "
    "dir that each snapshot points into: an epoch writes the entities that changed) or "
    "'snapshots' (each snapshot holds every entity: the earlier design, kept for comparison). "
    "'segments' resumes a 'snapshots' recovery dir; not the other way round.",
)
@click.option(
    "--snapshot-interval",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Seconds between snapshots (the epoch length; also when segments roll).",
)
@click.option(
    "--from",
    "start",
    default="earliest",
    show_default=True,
    help="First start only: earliest, latest, epoch ms, ISO-8601 time or date, -2h.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_METRICS_PORT,
    show_default=True,
    help="Serve /metrics here (0: off). With -p N, local process i uses port+i.",
)
@click.option(
    "--metrics-host", default="0.0.0.0", show_default=True, help="Interface of the /metrics server."
)
@click.option(
    "--shards",
    type=click.IntRange(1, 65536),
    default=256,
    show_default=True,
    help="Engine state shards per view (fixed for the life of a recovery dir).",
)
@click.option(
    "--topic",
    default=None,
    help="Read this topic instead of the view's source topic (one view only).",
)
@click.option(
    "--dead-letter-topic",
    default=None,
    help="Send dead letters here instead of the view's dead-letter topic (one view).",
)
@click.option(
    "--late-to-dlq/--no-late-to-dlq",
    default=True,
    show_default=True,
    help="Send late events to the dead-letter topic (always counted).",
)
@click.option(
    "--stop-at-end",
    is_flag=True,
    help="Exit once the end of every partition is reached (tests, catch-up jobs).",
)
@click.option(
    "--segment-rows",
    type=click.IntRange(1),
    default=100_000,
    show_default=True,
    help="Roll Parquet segments at this many rows.",
)
@click.option(
    "--segment-age",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Roll Parquet segments at this age in seconds (and, with --recovery-dir, at every "
    "snapshot).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    help="Kafka records per poll of each partition (at most; a poll takes what is there).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a stop (SIGTERM, Ctrl-C) may take to commit the batch in hand before the "
    "process exits anyway with 124 (0: no bound).",
)
def run(
    view_names: tuple[str, ...],
    workers: int,
    processes: int,
    process_id: int | None,
    addresses: str | None,
    recovery_dir: Path | None,
    state_store: str,
    snapshot_interval: int,
    start: str,
    metrics_port: int,
    metrics_host: str,
    shards: int,
    topic: str | None,
    dead_letter_topic: str | None,
    late_to_dlq: bool,
    stop_at_end: bool,
    segment_rows: int,
    segment_age: float,
    batch_size: int,
    drain_timeout: float,
) -> None:
    """Consume VIEW's source topic and keep Redis and the offline log current.

    Settings come from FRESHET_KAFKA_BOOTSTRAP, FRESHET_REDIS_URL and FRESHET_OFFLINE_DIR.

    SIGTERM or Ctrl-C stops it cleanly: reading stops, the batch in hand reaches Redis and the
    offline log, with --recovery-dir a final snapshot is taken, and it exits 0. A second signal
    exits at once (130 / 143); a drain longer than --drain-timeout exits 124.
    """
    STOP.install(drain_timeout_s=drain_timeout)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    views = list(resolve_views(view_names))
    start_at = parse_start(start)
    if (topic or dead_letter_topic) and len(views) != 1:
        raise click.UsageError("--topic and --dead-letter-topic need exactly one VIEW")
    if topic:
        views = [replace(views[0], source=replace(views[0].source, topic=topic))]
    if dead_letter_topic:
        views = [replace(views[0], dead_letter_topic=dead_letter_topic)]
    if processes > 1 and process_id is not None:
        raise click.UsageError("use either -p (local processes) or -i/-a (your own cluster)")
    if process_id is not None and not addresses:
        raise click.UsageError("-i needs -a with the addresses of every process")

    from freshet.sinks.settings import Settings

    settings = Settings.from_env()
    cluster = addresses.split(";") if addresses else None
    total_workers = workers * (len(cluster) if cluster else processes)
    # Parquet writers are named p0..p<n-1> after the first run's worker count and keep those
    # names (and their resume states) when a recovered flow runs with other worker counts.
    layout = {"shards": shards, "parquet_partitions": total_workers}
    if processes > 1:
        ctx = click.get_current_context()
        # Resolved once here, so every child starts from the same time (``-2h`` moves with now).
        ctx.params["start"] = str(start_at)
        argv = _child_argv(ctx)
        if recovery_dir is not None:
            init_recovery(recovery_dir, total_workers, layout, create=True)
        ensure_dead_letter_topics(settings, views)
        check_redis(settings.redis_url)
        sys.exit(_supervise(processes, argv, metrics_port))

    clock: FlowClockFile | None = None
    if recovery_dir is not None:
        layout = init_recovery(recovery_dir, total_workers, layout, create=not process_id)
        clock = FlowClockFile(recovery_dir, process_id or 0, snapshot_interval)
    if not process_id:
        ensure_dead_letter_topics(settings, views)
    else:  # process 0 creates the topics; every process checks that Kafka answers
        from freshet.stream import kafka_clients

        kafka_clients.preflight(settings.kafka_client_config(), timeout_s=settings.kafka_timeout_s)
    check_redis(settings.redis_url)

    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from freshet.stream.connectors import KafkaIO
    from freshet.stream.metrics import serve_metrics
    from freshet.stream.pipeline import FlowOptions, build_flow

    freeze_gc_survivors()
    if metrics_port:
        serve_metrics(metrics_port, metrics_host)
    io = KafkaIO(
        settings=settings,
        start=start_at,  # type: ignore[arg-type]  # parse_start returns the StartAt values
        tail=not stop_at_end,
        kafka_batch_size=batch_size,
        parquet_partitions=layout["parquet_partitions"],
        redis_partitions=total_workers,
        parquet_max_rows=segment_rows,
        parquet_max_age_s=segment_age,
        parquet_commit_at_snapshot=recovery_dir is not None,
        start_positions_dir=recovery_dir / "freshet-start" if recovery_dir else None,
    )
    options = FlowOptions(
        shards=shards,
        persist_state=recovery_dir is not None,
        state_dir=(
            recovery_dir / "freshet-state" if recovery_dir and state_store == "segments" else None
        ),
        late_to_dead_letters=late_to_dlq,
        clock_offset_ms=clock.offset_ms if clock else 0,
        schema_registry_url=settings.schema_registry_url,
    )
    flow = build_flow(views, io, options)
    log.info(
        "running %s: %d worker(s) in process %s of %s, from %s, recovery %s",
        ", ".join(view_names),
        workers,
        process_id or 0,
        len(cluster) if cluster else 1,
        start,
        recovery_dir or "off",
    )
    cli_main(  # type: ignore[no-untyped-call]
        flow,
        workers_per_process=workers,
        process_id=process_id,
        addresses=cluster,
        epoch_interval=timedelta(seconds=snapshot_interval),
        recovery_config=(
            RecoveryConfig(str(recovery_dir))  # type: ignore[no-untyped-call]
            if recovery_dir
            else None
        ),
    )
    if clock is not None:
        clock.stopped()
    log_end(views)


def _child_argv(ctx: click.Context) -> list[str]:
    """This invocation's arguments for one child process (everything but -p)."""
    params = dict(ctx.params)
    argv: list[str] = list(params.pop("view_names"))
    params.pop("processes")
    for param in ctx.command.params:
        if param.name not in params or not isinstance(param, click.Option):
            continue
        value = params[param.name]
        if value is None:
            continue
        if param.is_flag and param.secondary_opts:
            argv.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            if value:
                argv.append(param.opts[0])
        else:
            argv += [param.opts[-1], str(value)]
    return argv
