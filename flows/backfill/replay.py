"""One process of a backfill: the live flow, bounded.

:func:`run_replay` runs ``freshet run``'s dataflow (:func:`freshet.stream.pipeline.build_flow`)
with ``freshet run``'s IO (:class:`freshet.stream.connectors.KafkaIO`) and three options that
make it a replay of the plan (:func:`replay_io`, :func:`replay_options`):

* the source reads each partition from the first record stamped at or after the plan's
  ``replay_from`` and ends before the first one at or after ``replay_until`` (``start``/``end``;
  no consumer group, no commits, no recovery store: the live flow's offsets are never touched);
* the engine lets only rows with ``as_of`` in ``[from, to]`` out (``rows_between``) and, at the
  end of the input, flushes every expiry boundary up to ``to`` (``flush_until_ms``);
* the sinks are the live ones: Redis newer-wins through the threaded writer, Parquet segments
  named ``bf<from>-<to>-p<i>`` (``parquet_prefix``); ``live`` off: dead letters only counted
  (the live flow sent them) and no freshness observed (the rows are old by design).

A :class:`_Progress` thread turns the source's ``freshet_replay_records_*`` gauges into the
rate and ETA gauges, the work directory's progress files (read by the parent of ``-p N``) and,
for a cluster member started on its own (``-i/-a``), a progress line on stderr.
What the process did (:class:`freshet.backfill.plan.Tally`) is read from its metrics at the end.

Kept apart from :mod:`freshet.backfill.plan` so that planning (``--dry-run``) does not import
Bytewax.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from prometheus_client import REGISTRY, Gauge

from freshet.backfill.plan import ReplayJob, Tally, progress_line, writer_prefix
from freshet.ops.processes import die_with_parent
from freshet.sinks.durable import write_durably
from freshet.sinks.settings import Settings
from freshet.stream import metrics
from freshet.stream.connectors import KafkaIO
from freshet.stream.pipeline import FlowOptions
from freshet.stream.runtime import freeze_gc_survivors
from freshet.stream.shutdown import STOP

__all__ = ["replay_io", "replay_options", "run_replay", "worker_main"]

log = logging.getLogger("freshet.backfill")

_POLL_S = 0.01  # until the first record: the replay's time starts there
_PROGRESS_PERIOD_S = 0.5
_RATE_WINDOW_S = 10.0


def replay_io(job: ReplayJob, settings: Settings) -> KafkaIO:
    """``freshet run``'s IO, reading the plan's records and writing the range's segments."""
    plan = job.plan
    return KafkaIO(
        settings=settings,
        start=plan.replay_from_ms,
        end=plan.replay_until_ms,
        tail=False,
        kafka_batch_size=job.batch_size,
        parquet_partitions=job.total_workers,
        redis_partitions=job.total_workers,
        parquet_max_rows=job.segment_rows,
        # Segments roll by rows; a bulk job has no reason to cut them by age.
        parquet_max_age_s=max(job.epoch_seconds, 1.0) * 10,
        parquet_commit_at_snapshot=False,
        parquet_prefix=writer_prefix(plan),
        live=False,  # dead letters counted, never produced; no freshness
    )


def replay_options(job: ReplayJob, settings: Settings) -> FlowOptions:
    """``freshet run``'s options for the plan's range."""
    plan = job.plan
    return FlowOptions(
        shards=job.shards,
        persist_state=False,
        late_to_dead_letters=True,  # counted by the sink, never produced (replay_io)
        flush_until_ms=plan.to_ms,
        rows_between=(plan.from_ms, plan.to_ms),
        # The engine only uses clock differences: a constant offset cannot change rows (see
        # freshet.backfill.plan, "Clock").
        clock_offset_ms=0,
        schema_registry_url=settings.schema_registry_url,
    )


def _samples(metric: str, **labels: str) -> float:
    """The sum of this process's samples of ``metric`` whose labels include ``labels``."""
    return sum(
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == metric and labels.items() <= s.labels.items()
    )


def _partitions(gauge: Gauge, topic: str) -> dict[int, float]:
    return {
        int(s.labels["partition"]): s.value
        for family in gauge.collect()
        for s in family.samples
        if s.labels.get("topic") == topic
    }


class _Progress:
    """Watches this process's bounded partitions (``freshet_replay_records_*``).

    ``first_record_at`` is when the first record was read (``time.perf_counter``); every
    ``_PROGRESS_PERIOD_S`` the rate and ETA gauges are set, ``progress-<partition>`` files are
    written to ``workdir`` and, with ``echo``, a progress line goes to stderr every
    ``echo_every_s``.
    """

    def __init__(
        self, topic: str, *, workdir: Path | None, echo: Callable[[str], None] | None,
        echo_every_s: float = 5.0,
    ) -> None:  # fmt: skip
        self._topic = topic
        self._workdir = workdir
        self._echo = echo
        self._echo_every_s = echo_every_s
        self._echoed_at = 0.0
        self._history: deque[tuple[float, float]] = deque()
        self.first_record_at: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freshet-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self.first_record_at is None and not self._done.wait(_POLL_S):
            if any(_partitions(metrics.REPLAY_DONE, self._topic).values()):
                self.first_record_at = time.perf_counter()
        while not self._done.wait(_PROGRESS_PERIOD_S):
            self.report()

    def report(self, *, final: bool = False) -> None:
        planned = _partitions(metrics.REPLAY_PLANNED, self._topic)
        done = _partitions(metrics.REPLAY_DONE, self._topic)
        now = time.monotonic()
        total, of = sum(done.values()), sum(planned.values())
        history = self._history
        history.append((now, total))
        while len(history) > 2 and now - history[0][0] > _RATE_WINDOW_S:
            history.popleft()
        elapsed = now - history[0][0]
        rate = (total - history[0][1]) / elapsed if elapsed > 0 else 0.0
        eta = (of - total) / rate if rate > 0 else None
        if final:  # the whole run's rate; nothing left
            began = self.first_record_at
            spent = time.perf_counter() - began if began is not None else 0.0
            rate, eta = (total / spent if spent > 0 else 0.0), 0.0
        metrics.REPLAY_RATE.set(rate)
        metrics.REPLAY_ETA_SECONDS.set(-1.0 if eta is None else eta)
        if self._workdir is not None:
            for partition, n in planned.items():
                read = done.get(partition, 0)
                path = self._workdir / f"progress-{partition}"
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(f"{int(read)} {int(n)} {1 if read >= n else 0}")
                tmp.replace(path)
        if self._echo is not None and (final or now - self._echoed_at >= self._echo_every_s):
            self._echoed_at = now
            self._echo(progress_line(int(total), int(of), rate, eta))

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self.report(final=True)


def run_replay(
    job: ReplayJob,
    settings: Settings,
    *,
    workdir: Path | None = None,
    process_id: int | None = None,
    addresses: Sequence[str] | None = None,
    echo_progress: bool = False,
) -> Tally:
    """Replay ``job`` in this process (``job.workers`` Bytewax workers; a cluster member with
    ``process_id``/``addresses``); returns what it did. Progress goes to ``workdir`` and, with
    ``echo_progress``, to stderr."""
    from bytewax.run import cli_main

    from freshet.stream.pipeline import build_flow

    view = job.view()
    freeze_gc_survivors()  # as freshet run: the engine's long-lived state, traversed once
    flow = build_flow(
        [view],
        replay_io(job, settings),
        replay_options(job, settings),
        flow_id=f"freshet-backfill-{view.name}",
    )
    echo = (lambda line: print(line, file=sys.stderr, flush=True)) if echo_progress else None
    progress = _Progress(job.plan.topic, workdir=workdir, echo=echo)
    try:
        cli_main(  # type: ignore[no-untyped-call]
            flow,
            workers_per_process=job.workers,
            process_id=process_id,
            addresses=list(addresses) if addresses else None,
            epoch_interval=timedelta(seconds=job.epoch_seconds),
            recovery_config=None,
        )
    finally:
        progress.stop()
    tally = _tally(view.name)
    # From the first record read to every row written (cli_main returns once the sinks
    # closed): the replay's own time, without the process and Bytewax start-up.
    if progress.first_record_at is not None:
        tally.seconds = time.perf_counter() - progress.first_record_at
    if STOP.requested:
        tally.stopped_by = STOP.reason
    if workdir is not None:
        write_durably(workdir / f"tally-{process_id or 0}.json", json.dumps(tally.to_json()))
    return tally


def _tally(view: str) -> Tally:
    """What this process did, from its metrics (``freshet.stream.metrics``)."""
    rows = int(_samples("freshet_rows_emitted_total", view=view))
    tally = Tally(
        consumed=int(_samples("freshet_events_in_total", view=view)),
        rows_offline=rows,  # every emitted row goes to both sinks
        rows_online=rows,
        records_online_won=int(_samples("freshet_redis_records_updated_total", view=view)),
    )
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == "freshet_dead_letters_total" and s.labels.get("view") == view:
                tally.dead(s.labels["reason"], int(s.value))
    return tally


def worker_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a process spawned by ``freshet backfill -p``:
    ``JOB_FILE WORKDIR PROCESS_ID ADDRESSES [METRICS_PORT]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    job_file, workdir, process_id, addresses = args[:4]
    die_with_parent()
    STOP.install()  # the parent forwards its signals: stop reading, commit what was read
    logging.basicConfig(level=logging.WARNING)
    port = int(args[4]) if len(args) > 4 else 0
    if port:
        metrics.serve_metrics(port)
    job = ReplayJob.from_json(json.loads(Path(job_file).read_text()))
    run_replay(
        job,
        Settings.from_env(),
        workdir=Path(workdir),
        process_id=int(process_id),
        addresses=addresses.split(";"),
    )
