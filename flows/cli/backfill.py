"""``freshet backfill VIEW --from TIME [--to TIME]``: rebuild a view's rows for a time range by
replaying its topic (see :mod:`freshet.backfill.plan` for the plan, the writes and idempotence).

Like ``freshet run``: ``-w`` worker threads per process, ``-p N`` local processes (spawned and
watched here) or one process of a cluster you start (``-i ID -a ADDRESSES``, e.g. one pod of
a Kubernetes Indexed Job, ``deploy/k8s/jobs/backfill.yaml``)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click
import orjson

from freshet.backfill.plan import (
    DEFAULT_GRACE_MS,
    BackfillError,
    BackfillFailed,
    BackfillPlan,
    KafkaOffsets,
    PartitionProgress,
    ReplayJob,
    Tally,
    history_ms,
    iso_time,
    parse_grace,
    plan_backfill,
    progress_line,
)
from freshet.backfill.runner import run_backfill, run_member
from freshet.cli._views import resolve_view
from freshet.dsl.definitions import FeatureView
from freshet.sinks import clock
from freshet.sinks.settings import Settings
from freshet.stream import kafka_clients

__all__ = ["backfill"]


def _duration(ms: int) -> str:
    seconds = ms // 1000
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def _print_plan(plan: BackfillPlan, view: FeatureView) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    clamped = plan.to_ms != plan.requested_to_ms
    lateness_ms = view.allowed_lateness_seconds * 1000
    grace_ms = plan.replay_until_ms - plan.to_ms - lateness_ms
    console.print(f"[bold]{plan.ref}[/]  topic {plan.topic}")
    console.print(
        f"rows as of    {iso_time(plan.from_ms)} .. {iso_time(plan.to_ms)}"
        + ("  (--to clamped)" if clamped else "")
    )
    console.print(
        f"records from  {iso_time(plan.replay_from_ms)}  "
        f"({_duration(history_ms(view))} of window history + {_duration(grace_ms)} grace)"
    )
    console.print(
        f"records until {iso_time(plan.replay_until_ms)}  "
        f"({_duration(lateness_ms)} lateness + {_duration(grace_ms)} grace)"
    )
    table = Table()
    for heading in ("partition", "start offset", "end offset", "messages", "low", "high"):
        table.add_column(heading, justify="right")
    for p in plan.partitions:
        table.add_row(
            str(p.partition), str(p.start), str(p.end), f"{p.messages:,}", str(p.low), str(p.high)
        )
    table.add_row("all", "", "", f"{plan.messages:,}", "", "", style="bold")
    console.print(table)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if clamped:
        console.print(
            f"--to {iso_time(plan.requested_to_ms)} was clamped to now - lateness - grace: "
            "later expiry boundaries are the live flow's to write"
        )


def _summary(plan: BackfillPlan, tally: Tally, workers: int) -> dict[str, Any]:
    """The run's figures (``--json``); ``workers``: every worker whose work ``tally`` sums."""
    seconds = max(tally.seconds, 1e-9)
    return {
        "view": plan.view,
        "version": plan.version,
        "from": iso_time(plan.from_ms),
        "to": iso_time(plan.to_ms),
        "workers": workers,
        **tally.to_json(),
        "events_per_second": round(tally.consumed / seconds),
        "events_per_second_per_worker": round(tally.consumed / seconds / workers),
    }


class _ProgressLines:
    """Progress as a line every ``every_s`` and at the end, where no progress bar can show
    (output to a file or a pipe: CI, a pod's log)."""

    def __init__(self, planned: int, *, every_s: float = 2.0) -> None:
        self._planned = planned
        self._every_s = every_s
        self._started = time.monotonic()
        self._last: tuple[float, int] | None = None
        self._printed_at = 0.0

    def update(self, parts: dict[int, PartitionProgress]) -> None:
        now = time.monotonic()
        if now - self._printed_at < self._every_s:
            return
        done = sum(s.consumed for s in parts.values())
        planned = sum(s.planned for s in parts.values()) or self._planned
        since, before = self._last or (self._started, 0)
        rate = (done - before) / (now - since) if now > since else 0.0
        eta = (planned - done) / rate if rate > 0 else None
        self._last, self._printed_at = (now, done), now
        click.echo(progress_line(done, planned, rate, eta), err=True)

    def finish(self, tally: Tally) -> None:
        rate = tally.consumed / tally.seconds if tally.seconds > 0 else 0.0
        eta = None if tally.stopped_by else 0.0
        click.echo(progress_line(tally.consumed, self._planned, rate, eta), err=True)


def _run_with_progress(job: ReplayJob, settings: Settings, *, metrics_port: int = 0) -> Tally:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-" if speed is None else f"{speed:,.0f} ev/s", style="cyan")

    console = Console(stderr=True)
    plan = job.plan
    if not console.is_terminal:
        lines = _ProgressLines(plan.messages)
        tally = run_backfill(job, settings, on_progress=lines.update, metrics_port=metrics_port)
        lines.finish(tally)
        return tally
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        tasks = {
            p.partition: progress.add_task(f"partition {p.partition}", total=p.messages)
            for p in plan.partitions
        }
        total = progress.add_task("[bold]all", total=plan.messages)

        def update(parts: dict[int, PartitionProgress]) -> None:
            for partition, state in parts.items():
                if partition in tasks:
                    progress.update(tasks[partition], completed=state.consumed)
            progress.update(total, completed=sum(s.consumed for s in parts.values()))

        return run_backfill(job, settings, on_progress=update, metrics_port=metrics_port)


def _absolute(text: str | None, now_ms: int, what: str) -> None:
    """Refuse a time that depends on when it is read (``now``, ``-2h``, an omitted ``--to``):
    the processes of a cluster must all replay the same range."""
    if text is None:
        raise click.UsageError(f"with -i/-a give {what}: every process must replay the same range")
    later = now_ms + 86_400_000
    if clock.parse_time(text, now_ms=now_ms) != clock.parse_time(text, now_ms=later):
        raise click.UsageError(
            f"{what} {text!r} is relative to now; with -i/-a give an absolute time (ISO-8601 or "
            "epoch ms): every process must replay the same range"
        )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("view_ref", metavar="VIEW[@VERSION]")
@click.option(
    "--from",
    "from_text",
    required=True,
    help="First as_of to rebuild: ISO-8601 (2024-05-01T12:00:00Z), a date, epoch ms, '-2h'.",
)
@click.option(
    "--to",
    "to_text",
    default=None,
    help="Last as_of to rebuild (same forms; default and latest: now - lateness - grace).",
)
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
    help="Local processes forming one cluster (spawned and watched here); Kafka partitions "
    "are spread over them.",
)
@click.option(
    "-i",
    "--process-id",
    type=click.IntRange(0),
    default=None,
    envvar="BYTEWAX_PROCESS_ID",
    help="This process's index in a cluster you start (one per machine or pod); needs "
    "absolute --from and --to.",
)
@click.option(
    "-a",
    "--addresses",
    default=None,
    envvar="BYTEWAX_ADDRESSES",
    help='Every cluster process as "host:port;host:port" (with -i).',
)
@click.option("--dry-run", is_flag=True, help="Print the offset plan per partition and exit.")
@click.option("--topic", default=None, help="Replay this topic instead of the view's source topic.")
@click.option(
    "--grace",
    default=f"{DEFAULT_GRACE_MS // 1000}s",
    show_default=True,
    help="Extra record time read before and after the range (producer delay).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=ReplayJob.batch_size,
    show_default=True,
    help="Kafka records per poll of each partition (freshet run's --batch-size; larger here: "
    "a replay always has a backlog).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Serve /metrics (progress: freshet_replay_*) here; with -p N, process i uses "
    "port+i (0: off).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan / the summary as JSON.")
def backfill(
    view_ref: str,
    from_text: str,
    to_text: str | None,
    workers: int,
    processes: int,
    process_id: int | None,
    addresses: str | None,
    dry_run: bool,
    topic: str | None,
    grace: str,
    batch_size: int,
    metrics_port: int,
    as_json: bool,
) -> None:
    """Rebuild VIEW's rows with as_of in [--from, --to] by replaying its Kafka topic.

    Runs freshet run's flow over the range's records: the rows go to the view version's
    offline log (each row once through the reader, however often the range is backfilled)
    and to Redis, where a newer value always wins. The replay starts early enough to fill the
    longest window. VIEW@N picks a version (default: the newest). Progress (records read of
    the plan, rate, ETA) shows on stderr and as freshet_replay_* metrics. SIGTERM or Ctrl-C
    stops it cleanly: what was replayed is committed, the summary says the range is
    incomplete, and the same command completes it later.
    Settings: FRESHET_KAFKA_BOOTSTRAP, FRESHET_REDIS_URL, FRESHET_OFFLINE_DIR.
    """
    view = resolve_view(view_ref)
    now_ms = clock.now_ms()
    if processes > 1 and process_id is not None:
        raise click.UsageError("use either -p (local processes) or -i/-a (your own cluster)")
    if process_id is not None and not addresses:
        raise click.UsageError("-i needs -a with the addresses of every process")
    cluster = addresses.split(";") if process_id is not None and addresses else None
    if cluster is not None and not dry_run and process_id is not None:
        if process_id >= len(cluster):
            raise click.UsageError(f"-i {process_id} is not below the {len(cluster)} addresses")
        try:
            _absolute(from_text, now_ms, "--from")
            _absolute(to_text, now_ms, "--to")
        except clock.TimeFormatError as exc:
            raise click.BadParameter(str(exc)) from None
        except click.UsageError as exc:
            source = click.get_current_context().get_parameter_source("process_id")
            if source is not click.core.ParameterSource.ENVIRONMENT:
                raise
            raise click.UsageError(
                f"{exc.message} (-i/-a came from BYTEWAX_PROCESS_ID/BYTEWAX_ADDRESSES, as in a "
                "flow pod: unset them to run a backfill on its own)"
            ) from None
    try:
        grace_ms = parse_grace(grace)
        from_ms = clock.parse_time(from_text, now_ms=now_ms, what="--from")
        to_ms = None if to_text is None else clock.parse_time(to_text, now_ms=now_ms, what="--to")
    except (BackfillError, clock.TimeFormatError) as exc:
        raise click.BadParameter(str(exc)) from None
    settings = Settings.from_env()
    # Kafka unreachable: one line naming the address (kafka_clients.KafkaUnreachable, reported
    # by freshet.cli.main) after FRESHET_KAFKA_TIMEOUT, before any worker starts.
    kafka_clients.preflight(settings.kafka_client_config(), timeout_s=settings.kafka_timeout_s)
    try:
        with KafkaOffsets(settings.kafka_client_config()) as lookup:
            plan = plan_backfill(
                view,
                lookup,
                from_ms=from_ms,
                to_ms=to_ms,
                now_ms=now_ms,
                grace_ms=grace_ms,
                topic=topic,
            )
    except BackfillError as exc:
        raise click.UsageError(str(exc)) from None
    except BackfillFailed as exc:
        raise click.ClickException(str(exc)) from None
    if dry_run:
        if as_json:
            click.echo(orjson.dumps(plan.to_json(), option=orjson.OPT_INDENT_2).decode())
        else:
            _print_plan(plan, view)
        return
    if cluster is not None and process_id is not None:
        if plan.to_ms != plan.requested_to_ms:
            raise click.UsageError(
                f"--to {iso_time(plan.requested_to_ms)} is later than now - lateness - grace "
                f"({iso_time(plan.to_ms)}); with -i/-a give a --to every process keeps"
            )
        _run_member(plan, view, settings, workers, process_id, cluster, batch_size,
                    metrics_port, as_json=as_json)  # fmt: skip
        return
    if not as_json:
        _print_plan(plan, view)
    job = ReplayJob(plan=plan, workers=workers, processes=processes, batch_size=batch_size)
    try:
        tally = _run_with_progress(job, settings, metrics_port=metrics_port)
    except BackfillFailed as exc:
        raise click.ClickException(str(exc)) from None
    _report(plan, tally, job.total_workers, as_json=as_json)


def _run_member(
    plan: BackfillPlan,
    view: FeatureView,
    settings: Settings,
    workers: int,
    process_id: int,
    cluster: list[str],
    batch_size: int,
    metrics_port: int,
    *,
    as_json: bool,
) -> None:
    """One process of a cluster started elsewhere; its summary covers this process only."""
    from freshet.stream.metrics import serve_metrics
    from freshet.stream.shutdown import STOP

    STOP.install()
    if metrics_port:
        serve_metrics(metrics_port)
    if process_id == 0 and not as_json:
        _print_plan(plan, view)
    job = ReplayJob(plan=plan, workers=workers, processes=len(cluster), batch_size=batch_size)
    click.echo(
        f"process {process_id} of {len(cluster)}: replaying its share of {plan.messages:,} records",
        err=True,
    )
    # Bytewax prints its cluster's connection attempts to the process's stdout: keep them off
    # the summary's stream (--json must parse).
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        tally = run_member(job, settings, process_id=process_id, addresses=cluster)
    except BackfillFailed as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
    _report(plan, tally, workers, as_json=as_json)


def _report(plan: BackfillPlan, tally: Tally, workers: int, *, as_json: bool) -> None:
    summary = _summary(plan, tally, workers)
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.flush()
        return
    dead = ", ".join(f"{n:,} {reason}" for reason, n in summary["dead_letters"].items())
    click.echo(
        f"replayed {tally.consumed:,} events in {tally.seconds:.1f} s "
        f"({summary['events_per_second_per_worker']:,} events/s per worker); "
        f"wrote {tally.rows_offline:,} rows to the log and {tally.rows_online:,} to Redis "
        f"({tally.records_online_won:,} records updated, newer ones kept)"
        + (f"; not aggregated: {dead}" if dead else "")
    )
    if tally.stopped_by:
        click.echo(
            f"stopped by {tally.stopped_by} before the end of the range: {tally.consumed:,} of "
            f"{plan.messages:,} records replayed. What was replayed is in Redis and the offline "
            "log; run the same command again to complete the range (it replaces this run's "
            "segments)."
        )
