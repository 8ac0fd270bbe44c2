"""``freshet run VIEW [VIEW…]``: run the streaming flow of one or more views.

One process with ``-w`` worker threads, ``-p N`` local processes (this command spawns and
supervises them), or one process of a cluster you start yourself (``-i ID -a ADDRESSES``,
e.g. one per pod). With ``--recovery-dir`` the flow snapshots its Kafka offsets, engine state
and Parquet writers every ``--snapshot-interval`` seconds and resumes from the last snapshot
after a crash; the directory is initialised on first use.
"""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from freshet.cli._views import resolve_views
from freshet.dsl.definitions import FeatureView
from freshet.ops.processes import ProcessGroup, cluster_addresses, die_with_parent
from freshet.sinks.clock import TimeFormatError, now_ms, parse_time
from freshet.sinks.durable import write_durably
from freshet.stream.metrics import DEFAULT_METRICS_PORT
from freshet.stream.shutdown import STOP, block_stop_signals

__all__ = ["clock_offset", "freeze_gc_survivors", "parse_start", "rows_emitted_in", "run"]

log = logging.getLogger("freshet.run")

_RECOVERY_INIT_TIMEOUT_S = 60.0
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


_LAYOUT_FILE = "freshet-layout.json"


def _init_recovery(
    directory: Path, partitions: int, layout: dict[str, int], *, create: bool
) -> dict[str, int]:
    """Create Bytewax's recovery partitions in ``directory`` unless it already has them.

    ``layout`` (shards, Parquet partitions) keys the saved state: it is written with the
    partitions and must match on every later start (state saved under 256 shards cannot be
    found under 128). Returns the layout in force.
    """
    from bytewax.recovery import init_db_dir

    directory.mkdir(parents=True, exist_ok=True)
    saved = directory / _LAYOUT_FILE
    if not create:
        deadline = time.monotonic() + _RECOVERY_INIT_TIMEOUT_S
        while not saved.exists():
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"recovery dir {str(directory)!r} is not initialised after "
                    f"{_RECOVERY_INIT_TIMEOUT_S:g} s; process 0 creates it"
                )
            time.sleep(0.2)
    else:
        with open(directory / ".freshet-init.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not any(directory.glob("part-*.sqlite3")):
                init_db_dir(directory, partitions)  # type: ignore[no-untyped-call]
                tmp = saved.with_suffix(".tmp")
                tmp.write_text(json.dumps(layout))
                tmp.replace(saved)
                log.info("initialised %d recovery partitions in %s", partitions, directory)
    in_force: dict[str, int] = json.loads(saved.read_text()) if saved.exists() else layout
    if in_force["shards"] != layout["shards"]:
        raise click.UsageError(
            f"--shards {layout['shards']} differs from the {in_force['shards']} shards the "
            f"state in {str(directory)!r} was saved with; pass --shards {in_force['shards']} "
            "or use a new --recovery-dir"
        )
    return in_force


_CLOCK_FILE_PERIOD_S = 1.0


def clock_offset(
    flow_times_ms: Sequence[int], now_ms: int, snapshot_interval_s: int, *, stopped: bool = False
) -> int:
    """How far the resumed flow clock runs behind real time: it continues one snapshot interval
    before the newest flow time any process recorded, or at that time when every process
    recorded a graceful stop (its final snapshot was taken then); 0 on a first start."""
    if not flow_times_ms:
        return 0
    behind = 0 if stopped else snapshot_interval_s * 1000
    return max(0, now_ms - (max(flow_times_ms) - behind))


class _FlowClockFile:
    """Keeps the flow's clock across restarts (``offset_ms``: how far it runs behind real time).

    Every process rewrites ``<recovery dir>/freshet-clock-<id>`` with the flow time once a
    second, and with ``"<time> stopped"`` once its flow ended gracefully. On restart the flow
    clock continues from the newest such time, minus one snapshot interval unless every process
    stopped gracefully (a crash resumes the last snapshot, taken up to an interval before), so
    the downtime does not count as idle time of the entities
    (``freshet.stream.pipeline.flow_clock``).
    """

    def __init__(self, directory: Path, process_id: int, snapshot_interval_s: int) -> None:
        last, stopped = [], True
        for path in directory.glob("freshet-clock-*"):
            try:
                text = path.read_text().split()
                last.append(int(text[0]))
            except (OSError, ValueError, IndexError):
                continue
            stopped = stopped and text[1:] == ["stopped"]
        self.offset_ms = clock_offset(last, now_ms(), snapshot_interval_s, stopped=stopped)
        self._path = directory / f"freshet-clock-{process_id}"
        self._done = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._beat, name="freshet-clock", daemon=True).start()
        if self.offset_ms:
            log.info("resuming the flow clock %.1f s behind real time", self.offset_ms / 1000)

    def _write(self, suffix: str = "") -> None:
        write_durably(self._path, f"{now_ms() - self.offset_ms}{suffix}")

    def _beat(self) -> None:
        while not self._done.is_set():
            with self._lock:
                if not self._done.is_set():
                    self._write()
            self._done.wait(_CLOCK_FILE_PERIOD_S)

    def stopped(self) -> None:
        """Record that the flow ended gracefully now (its final snapshot is taken)."""
        with self._lock:
            self._done.set()
            self._write(" stopped")


def freeze_gc_survivors() -> Callable[[str, dict[str, int]], None]:
    """Freeze what is alive now, and every object that survives a cyclic-GC collection.

    The engine keeps ~20 long-lived objects per entity. Left to the default policy, the
    cyclic GC traverses each new one in gen 0, again in gen 1 and in every gen 2 collection;
    frozen right after its first collection, an object is traversed once (the CPU this saves
    is in ``tests/bench/README.md``).

    Frozen objects are still freed by reference counting (entity states, rows and batches
    hold no cycles); only cyclic garbage that outlives a gen-0 collection is never collected
    (a few dozen objects per run). Returns the installed callback.
    """

    def freeze(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            gc.freeze()

    gc.freeze()
    gc.callbacks.append(freeze)
    return freeze


def _ensure_topics(
    config: Mapping[str, Any], topics: dict[str, int], *, timeout_s: float | None = None
) -> None:
    """Create missing topics (``name -> partitions``); existing ones are left alone.

    Also the start's check that Kafka answers: ``kafka_clients.KafkaUnreachable`` after
    ``timeout_s`` (default ``kafka_clients.DEFAULT_TIMEOUT_S``), before any flow starts.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.cimpl import NewTopic

    from freshet.stream import kafka_clients

    timeout_s = kafka_clients.DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    existing = kafka_clients.preflight(config, timeout_s=timeout_s).topics
    missing = [NewTopic(t, n, 1) for t, n in topics.items() if t not in existing]
    if not missing:
        return
    admin = kafka_clients.admin(config)
    for topic, future in admin.create_topics(missing, operation_timeout=15).items():
        try:
            future.result(timeout=30)
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise click.ClickException(f"cannot create topic {topic!r}: {exc}") from exc


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
            _init_recovery(recovery_dir, total_workers, layout, create=True)
        _ensure_dead_letter_topics(settings, views)
        _check_redis(settings.redis_url)
        sys.exit(_supervise(processes, argv, metrics_port))

    clock: _FlowClockFile | None = None
    if recovery_dir is not None:
        layout = _init_recovery(recovery_dir, total_workers, layout, create=not process_id)
        clock = _FlowClockFile(recovery_dir, process_id or 0, snapshot_interval)
    if not process_id:
        _ensure_dead_letter_topics(settings, views)
    else:  # process 0 creates the topics; every process checks that Kafka answers
        from freshet.stream import kafka_clients

        kafka_clients.preflight(settings.kafka_client_config(), timeout_s=settings.kafka_timeout_s)
    _check_redis(settings.redis_url)

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
    _log_end(views)


def _log_end(views: Sequence[FeatureView]) -> None:
    """One line with what the flow did, once its sinks committed everything."""
    from prometheus_client import REGISTRY

    def total(metric: str) -> int:
        return int(
            sum(
                s.value
                for v in views
                for m in REGISTRY.collect()
                for s in m.samples
                if s.name == metric and s.labels.get("view") == v.name
            )
        )

    counts = (
        f"{total('freshet_events_in_total'):,} records read, "
        f"{total('freshet_rows_emitted_total'):,} rows emitted (written to Redis and committed "
        f"to the offline log), {total('freshet_events_late_total'):,} late, "
        f"{total('freshet_dead_letters_total'):,} dead letters sent"
    )
    if STOP.requested:
        drained = time.monotonic() - (STOP.requested_at or time.monotonic())
        log.info("stopped on %s after a %.1f s drain: %s", STOP.reason, drained, counts)
    else:
        log.info("reached the end of every partition: %s", counts)


_END_LINE = re.compile(r"(?:stopped on SIG\w+ after a [\d.]+ s drain|reached the end of every "
                       r"partition): [\d,]+ records read, ([\d,]+) rows emitted")  # fmt: skip


def rows_emitted_in(log_text: str) -> int | None:
    """The rows a flow emitted, from the last end line (:func:`_log_end`) in its log."""
    found = _END_LINE.findall(log_text)
    return int(found[-1].replace(",", "")) if found else None


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


def _check_redis(url: str) -> None:
    """Fail before the flow starts when Redis does not answer (a ping inside Bytewax would
    fail too, with a Rust panic printed around the message); ``freshet.cli.main`` reports the
    connection error as one line."""
    from freshet.sinks.redis_store import connect

    client = connect(url)
    try:
        client.ping()
    finally:
        client.close()


def _ensure_dead_letter_topics(settings: Any, views: Sequence[FeatureView]) -> None:
    from freshet.stream.deadletter import dead_letter_topic

    topics = {dead_letter_topic(v): 1 for v in views}
    _ensure_topics(settings.kafka_client_config(), topics, timeout_s=settings.kafka_timeout_s)
