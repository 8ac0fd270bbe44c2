"""One process of a backfill: :func:`run_replay` (:func:`worker_main` when spawned by
:mod:`freshet.backfill.runner`) runs the live flow over the plan's offsets with this IO
(:class:`BackfillIO`, a ``freshet.stream.pipeline.FlowIO``):

* :class:`ReplaySource` — one partition per Kafka partition of the plan, read with ``assign``
  (no consumer group, no commits) from its start offset up to, not including, its end offset;
  then the partition ends, and once all have, the engine flushes (``on_eof``). Each partition
  writes its progress to the run's work directory (``freshet.backfill.plan.read_progress``).
* Online sink — per worker, the newest in-range row of each entity of a batch through
  ``freshet.sinks.redis_store.RedisFeatureWriter`` (newer-wins, retried, never dropped).
* Offline sink — ``freshet.stream.connectors.ParquetSink`` with the range's writer ids
  (``freshet.backfill.plan.writer_prefix``), fed only the rows with ``as_of`` in the range.
* Dead letters — counted, never produced: the live flow already sent them.

Kept apart from :mod:`freshet.backfill.plan` so that planning (``--dry-run``) does not import
Bytewax.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from confluent_kafka import KafkaError, TopicPartition

from freshet.backfill.plan import _CONSUMER_CONFIG, PartitionPlan, ReplayJob, Tally, writer_prefix
from freshet.decode.messages import DeadLetter, RawMessage
from freshet.dsl.definitions import FeatureView
from freshet.ops.processes import die_with_parent
from freshet.sinks.durable import write_durably
from freshet.sinks.parquet_log import WriterState
from freshet.sinks.redis_store import RedisFeatureWriter, connect
from freshet.sinks.rows import Row
from freshet.sinks.settings import Settings
from freshet.stream import kafka_clients
from freshet.stream.connectors import ParquetSink
from freshet.stream.pipeline import Changes
from freshet.stream.shutdown import STOP

__all__ = ["BackfillIO", "ReplaySource", "run_replay", "worker_main"]

_PROGRESS_PERIOD_S = 0.25


class _ReplayPartition(StatefulSourcePartition[RawMessage, int]):
    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        part: PartitionPlan,
        resume: int | None,
        *,
        batch_size: int,
        tally: Tally,
        progress: Path | None,
    ) -> None:
        self._next = part.start if resume is None else resume
        self._end = part.end
        self._start = part.start
        self._batch_size = batch_size
        self._tally = tally
        self._progress = progress
        self._reported_at = 0.0
        self._done = self._next >= self._end
        self._consumer: Any = None
        if not self._done:
            self._consumer = kafka_clients.consumer(config)
            self._consumer.assign([TopicPartition(topic, part.partition, self._next)])
        self._report(force=True)

    def next_batch(self) -> list[RawMessage]:
        if self._done or STOP.requested:  # STOP: a graceful stop ends the replay here
            self._report(force=True)
            raise StopIteration
        batch: list[RawMessage] = []
        end = self._end
        for msg in self._consumer.consume(self._batch_size, 0.001):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    # The end of the partition as it is now: nothing at or past our end exists.
                    self._done = True
                    break
                if kafka_clients.is_transient(error):  # a lost broker: librdkafka reconnects
                    kafka_clients.log_transient(f"reading {msg.topic()}[{msg.partition()}]", error)
                    continue
                raise RuntimeError(f"error consuming {msg.topic()}[{msg.partition()}]: {error}")
            offset = msg.offset()
            if offset >= end:
                self._done = True
                break
            batch.append(RawMessage.from_confluent(msg))
            self._next = offset + 1
            if self._next >= end:
                self._done = True
                break
        if batch:
            self._tally.add(consumed=len(batch))
        self._report(force=self._done)
        return batch

    def _report(self, *, force: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if not force and now - self._reported_at < _PROGRESS_PERIOD_S:
            return
        self._reported_at = now
        tmp = self._progress.with_name(f".{self._progress.name}.tmp")
        tmp.write_text(f"{self._next - self._start} {1 if self._done else 0}")
        tmp.replace(self._progress)

    def snapshot(self) -> int:
        return self._next

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


@dataclass(frozen=True)
class ReplaySource(FixedPartitionedSource[RawMessage, int]):
    """The plan's partitions, each from its start offset to its end offset, then the end."""

    config: dict[str, str]
    topic: str
    parts: tuple[PartitionPlan, ...]
    batch_size: int
    tally: Tally
    workdir: Path | None = None

    def list_parts(self) -> list[str]:
        return [f"{p.partition}-{self.topic}" for p in self.parts]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Any:
        idx = int(for_part.split("-", 1)[0])
        part = next(p for p in self.parts if p.partition == idx)
        progress = None if self.workdir is None else self.workdir / f"progress-{idx}"
        return _ReplayPartition(
            {**self.config, **_CONSUMER_CONFIG},
            self.topic,
            part,
            resume_state,
            batch_size=self.batch_size,
            tally=self.tally,
            progress=progress,
        )


def _in_range(rows: Iterable[Row], lo: int, hi: int) -> list[Row]:
    return [r for r in rows if lo <= r.as_of <= hi]


class _OnlinePartition(StatelessSinkPartition[tuple[str, Changes]]):
    def __init__(self, writer: RedisFeatureWriter, client: Any, lo: int, hi: int, tally: Tally):
        self._writer = writer
        self._client = client
        self._lo = lo
        self._hi = hi
        self._tally = tally

    def write_batch(self, items: list[tuple[str, Changes]]) -> None:
        latest: dict[str, Row] = {}
        n = 0
        lo, hi = self._lo, self._hi
        for _, changes in items:
            for row in changes.rows:
                if lo <= row.as_of <= hi:
                    latest[row.entity] = row  # an entity's rows come in as_of order
                    n += 1
        if latest:
            won = self._writer.write(list(latest.values()))
            self._tally.add(rows_online=n, records_online_won=won)

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class _OnlineSink(DynamicSink[tuple[str, Changes]]):
    url: str
    view: FeatureView
    lo: int
    hi: int
    tally: Tally

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OnlinePartition:
        client = connect(self.url)
        client.ping()  # fail fast; later outages are retried by the writer
        layout = self.view.layout()
        writer = RedisFeatureWriter(client, {layout.name: layout})
        return _OnlinePartition(writer, client, self.lo, self.hi, self.tally)


class _OfflinePartition(StatefulSinkPartition[list[Row], WriterState | None]):
    def __init__(
        self,
        inner: StatefulSinkPartition[list[Row], WriterState | None],
        lo: int,
        hi: int,
        tally: Tally,
    ) -> None:
        self._inner = inner
        self._lo = lo
        self._hi = hi
        self._tally = tally

    def write_batch(self, values: list[list[Row]]) -> None:
        rows = _in_range((r for batch in values for r in batch), self._lo, self._hi)
        if rows:
            self._inner.write_batch([rows])
            self._tally.add(rows_offline=len(rows))

    def snapshot(self) -> WriterState | None:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True)
class _OfflineSink(FixedPartitionedSink[list[Row], WriterState | None]):
    inner: ParquetSink
    lo: int
    hi: int
    tally: Tally

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def part_fn(self, item_key: str) -> int:
        return self.inner.part_fn(item_key)

    def build_part(
        self, step_id: str, for_part: str, resume_state: WriterState | None
    ) -> _OfflinePartition:
        inner = self.inner.build_part(step_id, for_part, resume_state)
        return _OfflinePartition(inner, self.lo, self.hi, self.tally)


class _DeadLetterTally(StatelessSinkPartition[DeadLetter]):
    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def write_batch(self, items: list[DeadLetter]) -> None:
        for letter in items:
            self._tally.dead(letter.reason)


@dataclass(frozen=True)
class _DeadLetterSink(DynamicSink[DeadLetter]):
    tally: Tally

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterTally:
        return _DeadLetterTally(self.tally)


@dataclass(frozen=True, kw_only=True)
class BackfillIO:
    """The ``FlowIO`` of a backfill: the plan's bounded source, in-range sinks."""

    job: ReplayJob
    settings: Settings
    tally: Tally
    workdir: Path | None = None

    def source(self, view: FeatureView) -> ReplaySource:
        plan = self.job.plan
        return ReplaySource(
            self.settings.kafka_client_config(),
            plan.topic,
            tuple(p for p in plan.partitions if p.messages > 0),
            self.job.batch_size,
            self.tally,
            self.workdir,
        )

    def online_sink(self, view: FeatureView) -> _OnlineSink:
        plan = self.job.plan
        return _OnlineSink(self.settings.redis_url, view, plan.from_ms, plan.to_ms, self.tally)

    def offline_sink(self, view: FeatureView) -> _OfflineSink:
        plan = self.job.plan
        inner = ParquetSink(
            self.settings.offline_dir,
            view,
            partitions=self.job.workers,
            max_rows=self.job.segment_rows,
            max_age_s=max(self.job.epoch_seconds, 1.0) * 10,
            prefix=writer_prefix(plan),
        )
        return _OfflineSink(inner, plan.from_ms, plan.to_ms, self.tally)

    def dead_letter_sink(self, view: FeatureView) -> _DeadLetterSink:
        return _DeadLetterSink(self.tally)


def run_replay(
    job: ReplayJob,
    settings: Settings,
    *,
    workdir: Path | None = None,
    process_id: int | None = None,
    addresses: Sequence[str] | None = None,
) -> Tally:
    """Replay ``job`` in this process (one Bytewax worker; a cluster member with
    ``process_id``/``addresses``); returns what it did. Progress goes to ``workdir``."""
    from bytewax.run import cli_main

    from freshet.stream.pipeline import FlowOptions, build_flow

    view = job.view()
    tally = Tally()
    io = BackfillIO(job=job, settings=settings, tally=tally, workdir=workdir)
    options = FlowOptions(
        shards=job.shards,
        persist_state=False,
        late_to_dead_letters=True,  # counted by the backfill's own sink, never produced
        flush_until_ms=job.plan.to_ms,
        clock_offset_ms=0,  # constant offsets cannot change rows; see the module docstring
        schema_registry_url=settings.schema_registry_url,
    )
    flow = build_flow([view], io, options, flow_id=f"freshet-backfill-{view.name}")
    cli_main(  # type: ignore[no-untyped-call]
        flow,
        workers_per_process=1,
        process_id=process_id,
        addresses=list(addresses) if addresses else None,
        epoch_interval=timedelta(seconds=job.epoch_seconds),
        recovery_config=None,
    )
    # From the first record read to every row written: the replay's own time, without the
    # process and Bytewax start-up.
    if tally.first_record_at is not None:
        tally.seconds = time.perf_counter() - tally.first_record_at
    if STOP.requested:
        tally.stopped_by = STOP.reason
    if workdir is not None:
        write_durably(workdir / f"tally-{process_id or 0}.json", json.dumps(tally.to_json()))
    return tally


def worker_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a spawned worker: ``JOB_FILE WORKDIR PROCESS_ID ADDRESSES``."""
    job_file, workdir, process_id, addresses = list(sys.argv[1:] if argv is None else argv)
    die_with_parent()
    STOP.install()  # the parent forwards its signals: stop reading, commit what was read
    job = ReplayJob.from_json(json.loads(Path(job_file).read_text()))
    run_replay(
        job,
        Settings.from_env(),
        workdir=Path(workdir),
        process_id=int(process_id),
        addresses=addresses.split(";"),
    )
