"""``freshet backfill VIEW --from TIME [--to TIME]``: rebuild a view's rows for a time range by
replaying its topic (see :mod:`freshet.backfill.plan` for the plan, the writes and idempotence)."""

from __future__ import annotations

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
)
from freshet.backfill.runner import run_backfill
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


def _run_with_progress(job: ReplayJob, settings: Settings, *, quiet: bool) -> Tally:
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
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
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

        return run_backfill(job, settings, on_progress=update)


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
    help="Worker processes (one Bytewax cluster).",
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
    default=10_000,
    show_default=True,
    help="Kafka records per poll of each partition, as freshet run's.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan / the summary as JSON.")
def backfill(
    view_ref: str,
    from_text: str,
    to_text: str | None,
    workers: int,
    dry_run: bool,
    topic: str | None,
    grace: str,
    batch_size: int,
    as_json: bool,
) -> None:
    """Rebuild VIEW's rows with as_of in [--from, --to] by replaying its Kafka topic.

    Writes the rows to the view version's offline log (each row once through the reader,
    however often the range is backfilled) and to Redis, where a newer value always wins.
    The replay starts early enough to fill the longest window. VIEW@N picks a version
    (default: the newest). SIGTERM or Ctrl-C stops it cleanly: what was replayed is committed,
    the summary says the range is incomplete, and the same command completes it later.
    Settings: FRESHET_KAFKA_BOOTSTRAP, FRESHET_REDIS_URL, FRESHET_OFFLINE_DIR.
    """
    view = resolve_view(view_ref)
    now_ms = clock.now_ms()
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
    if not as_json:
        _print_plan(plan, view)
    job = ReplayJob(plan=plan, workers=workers, batch_size=batch_size)
    try:
        tally = _run_with_progress(job, settings, quiet=as_json)
    except BackfillFailed as exc:
        raise click.ClickException(str(exc)) from None
    summary = _summary(plan, tally, workers)
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
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
