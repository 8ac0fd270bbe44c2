"""Bytewax sources and sinks of the streaming flow, and :class:`KafkaIO` that hands them out.

* :class:`StartingKafkaSource` — Bytewax's ``KafkaSource`` whose *first* start position is
  ``earliest``, ``latest`` or a time (``offsets_for_times``), resolved per partition to an
  absolute offset so a recovery snapshot taken before any record arrived still means "here";
  a resumed partition always continues from its snapshot. With ``end`` (epoch ms) it is a
  bounded replay: each partition stops before its first record stamped at or after ``end``
  (``freshet backfill``), and reports its progress (``freshet_replay_records_*``). Its
  partitions emit the consumer's
  ``confluent_kafka.Message`` objects as they are (Bytewax's own partition copies each into a
  frozen ``KafkaSourceMessage``, which costs more than decoding it; ``tests/bench/README.md``).
* :class:`RedisSink` — a ``FixedPartitionedSink`` (one partition per worker in ``freshet
  run``): each partition hands its rows to a writer thread doing pipelined newer-wins writes
  (``freshet.sinks.redis_store.RedisFeatureWriter``, which retries with backoff and never drops
  rows) of each entity's newest row, then records write latency and freshness (Kafka timestamp ->
  write done). Its ``snapshot`` waits for the queue, so an epoch is committed only once its
  rows are in Redis.
* :class:`ParquetSink` — a ``FixedPartitionedSink``: each partition is a
  ``freshet.sinks.parquet_log.ParquetLogWriter`` whose writer id is the partition name and whose
  resume state is the writer's ``WriterState``; the writer commits its buffer at every snapshot,
  so after a crash + resume no row is lost and none is on disk twice. Commits run on the
  writer's thread, so a commit of tens of thousands of rows does not hold the flow (and its
  Redis writes) for a quarter of a second; only a snapshot with recovery waits for them.
* :class:`DeadLetterSink` — per worker, ``freshet.stream.deadletter.DeadLetterProducer``; flushes
each
  batch before returning, so a dead letter is on the broker before the epoch that produced it
  can be snapshotted (at-least-once, never lost). Late letters, which the engine built from
  decoded events, first get their source records' bytes back (``SourceRecords``).

Connections are made in ``build``/``build_part`` (on the worker) and fail fast.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE, KafkaSource
from bytewax.inputs import StatefulSourcePartition
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from confluent_kafka import (
    OFFSET_BEGINNING,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from freshet.decode.messages import DeadLetter
from freshet.dsl.definitions import FeatureView
from freshet.sinks.durable import write_durably
from freshet.sinks.parquet_log import ParquetLogWriter, WriterState
from freshet.sinks.redis_store import RedisFeatureWriter, connect
from freshet.sinks.rows import Row
from freshet.sinks.settings import Settings
from freshet.stream import kafka_clients, metrics
from freshet.stream.deadletter import (
    RECENT,
    DeadLetterProducer,
    SourceRecords,
    dead_letter_topic,
)
from freshet.stream.pipeline import Changes, StartAt
from freshet.stream.shutdown import STOP

__all__ = [
    "DeadLetterSink",
    "KafkaIO",
    "ParquetSink",
    "RedisSink",
    "SourceError",
    "StartingKafkaSource",
]

log = logging.getLogger(__name__)

_ENTITY_OF = itemgetter(1)  # Row.entity

_METADATA_TIMEOUT_S = 15.0


class SourceError(RuntimeError):
    """The start position of a topic could not be resolved (broker down, unknown topic)."""


class StartingKafkaSource(KafkaSource):
    """``KafkaSource`` with a first-start position of ``earliest``, ``latest`` or epoch ms."""

    def __init__(
        self,
        config: Mapping[str, str],
        topics: list[str],
        *,
        start: StartAt = "earliest",
        tail: bool = True,
        batch_size: int = 10_000,
        positions_dir: Path | None = None,
        end: int | None = None,
    ) -> None:
        config = dict(config)
        brokers = config.pop("bootstrap.servers").split(",")
        super().__init__(
            brokers,
            topics,
            tail=tail,
            starting_offset=OFFSET_BEGINNING,
            add_config=config,
            batch_size=batch_size,
            raise_on_errors=True,
        )
        self._client_config = {"bootstrap.servers": ",".join(brokers), **config}
        self._start = start
        self._positions = positions_dir
        self._end = end

    def list_parts(self) -> list[str]:
        """``<partition>-<topic>`` of every topic. Bytewax's own listing waits for the broker
        without a bound; this one raises :class:`SourceError` after ``_METADATA_TIMEOUT_S``."""
        client = kafka_clients.admin(self._client_config)
        parts = []
        for topic in self._topics:
            # One topic at a time, as Bytewax does: a broker that auto-creates topics creates it.
            try:
                metadata = kafka_clients.preflight(
                    self._client_config, timeout_s=_METADATA_TIMEOUT_S, client=client, topic=topic
                )
            except kafka_clients.KafkaUnreachable as exc:
                raise SourceError(str(exc)) from exc
            found = metadata.topics[topic]
            if found.error is not None:
                raise SourceError(
                    f"cannot list the partitions of topic {topic!r}: {found.error.str()}; "
                    "check the view's source topic (`freshet doctor` checks it)"
                )
            parts += [f"{idx}-{topic}" for idx in sorted(found.partitions)]
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Any:
        if resume_state is None and self._start != "earliest":
            resume_state = self._recorded_first_offset(for_part)
        idx, topic = for_part.split("-", 1)
        if topic not in self._topics:
            raise SourceError(f"cannot resume partition {for_part!r}: not a topic of this flow")
        config = {
            # No consumer group: offsets live in Bytewax's recovery snapshots.
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail),
            # An offset no longer on the broker (retention deleted it, or a broker came back
            # with a shorter log) restarts at the oldest record there is: librdkafka's default,
            # the newest, would skip everything in between without a word.
            "auto.offset.reset": "earliest",
            "statistics.interval.ms": 1000,
            **self._add_config,
        }
        return _KafkaPartition(
            step_id,
            config,
            topic,
            int(idx),
            OFFSET_BEGINNING if resume_state is None else resume_state,
            batch_size=self._batch_size,
            end=None if self._end is None else self._offset_at(for_part, self._end),
        )

    def _recorded_first_offset(self, for_part: str) -> int:
        """The first start's offset of ``for_part``. With ``positions_dir`` (the recovery dir's
        ``freshet-start/``) it is resolved once and recorded, durably, before any record is
        read: a crash before the first snapshot then resumes from that offset, where ``latest``
        or a time would resolve anew and skip what arrived in between."""
        if self._positions is None:
            return self._first_offset(for_part)
        path = self._positions / for_part
        try:
            return int(path.read_text())
        except FileNotFoundError:
            pass
        offset = self._first_offset(for_part)
        write_durably(path, str(offset))
        log.info("recorded the start offset of %s: %d (--from %s)", for_part, offset, self._start)
        return offset

    def _first_offset(self, for_part: str) -> int:
        return self._offset_at(for_part, self._start)

    def _offset_at(self, for_part: str, at: StartAt) -> int:
        """The offset of ``for_part``'s first record stamped at or after ``at`` (epoch ms; the
        end of the partition when there is none yet), or its end for ``latest``."""
        idx, topic = for_part.split("-", 1)
        tp = TopicPartition(topic, int(idx))
        consumer = kafka_clients.consumer(
            {
                **self._client_config,
                "group.id": "freshet-offset-lookup",
                "enable.auto.commit": "false",
            }
        )
        try:
            _, high = consumer.get_watermark_offsets(tp, timeout=_METADATA_TIMEOUT_S)
            if at == "latest":
                return int(high)
            tp.offset = int(at)
            (found,) = consumer.offsets_for_times([tp], timeout=_METADATA_TIMEOUT_S)
            # -1: no record at or after the time yet -> start at the end.
            return int(found.offset) if found.offset >= 0 else int(high)
        except KafkaException as exc:
            raise SourceError(
                f"cannot resolve the offset of {topic}[{idx}] at {at!r}: {exc}"
            ) from exc
        finally:
            consumer.close()


class _KafkaPartition(StatefulSourcePartition[Message, int]):
    """One Kafka partition read with ``assign`` from ``offset``; emits consumer messages.

    The same contract as Bytewax's Kafka partition (snapshot = the next offset to read; with
    ``enable.partition.eof`` the partition ends at the end of the topic; a consumer error
    stops the flow), without a per-record copy. With ``end`` it also ends before that offset,
    and counts its progress towards it in ``freshet_replay_records_done``.
    """

    def __init__(
        self, step_id: str, config: dict[str, Any], topic: str, idx: int, offset: int, *,
        batch_size: int, end: int | None = None,
    ) -> None:  # fmt: skip
        self._offset = offset
        self._topic = topic
        self._idx = idx
        self._batch_size = batch_size
        self._end = end
        self._eof = end is not None and offset >= end
        self._lag = BYTEWAX_CONSUMER_LAG_GAUGE.labels(step_id=step_id, topic=topic, partition=idx)
        self._done: Any = None
        if end is not None:
            self._start = offset
            metrics.REPLAY_PLANNED.labels(topic=topic, partition=idx).set(max(0, end - offset))
            self._done = metrics.REPLAY_DONE.labels(topic=topic, partition=idx)
            self._done.set(0)
        consumer = kafka_clients.consumer({**config, "stats_cb": self._stats})
        consumer.assign([TopicPartition(topic, idx, offset)])
        self._consumer = consumer

    def _stats(self, json_stats: str) -> None:
        """librdkafka's statistics (once a second): consumer lag, re-exported by
        ``freshet.stream.metrics`` as ``freshet_consumer_lag``."""
        if self._offset > 0:
            stats = json.loads(json_stats)["topics"][self._topic]["partitions"][str(self._idx)]
            self._lag.set(stats["ls_offset"] - self._offset)

    def next_batch(self) -> list[Message]:
        if self._eof or STOP.requested:  # STOP: a graceful stop ends the input here
            raise StopIteration
        batch = self._consumer.consume(self._batch_size, 0.001)
        if not batch:
            return batch
        if any(m.error() is not None for m in batch):
            batch = self._without_errors(batch)
        if self._end is not None and batch:
            batch = self._before_end(batch, self._end)
        if batch:
            self._offset = cast(int, batch[-1].offset()) + 1  # set on consumed records
            RECENT.remember(self._topic, self._idx, batch)  # late letters' original bytes
        if self._done is not None:
            self._done.set(self._offset - self._start)
        return batch

    def _before_end(self, batch: list[Message], end: int) -> list[Message]:
        """The records of ``batch`` before offset ``end``; at ``end`` the partition ends."""
        if cast(int, batch[-1].offset()) + 1 < end:
            return batch
        self._eof = True
        # Offsets ascend within a partition.
        return batch[: bisect.bisect_left(batch, end, key=lambda m: cast(int, m.offset()))]

    def _without_errors(self, batch: list[Message]) -> list[Message]:
        """The records before the end of the partition, without transient errors (a lost
        broker, a moving leader: logged once per period, librdkafka reconnects and the next
        polls read on); any other error stops the flow."""
        records: list[Message] = []
        for message in batch:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                # Ends at the next call, so the records before it are emitted first.
                self._eof = True
                return records
            elif kafka_clients.is_transient(error):
                kafka_clients.log_transient(f"reading {self._topic}[{self._idx}]", error)
            else:
                raise RuntimeError(f"error consuming from Kafka topic {self._topic!r}: {error}")
        return records

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class _RedisPartition(StatefulSinkPartition[Changes, None]):
    """Writes rows to Redis on its own thread; a snapshot waits for every write handed to it.

    ``write_batch`` only queues the rows, so the flow decodes and computes the next poll while
    Redis runs the newer-wins script for this one (1M events over 100,000 cards: the server
    spent ~4 s of CPU in the script, which a blocking write made the flow's thread wait for;
    packing and sending, which still hold the GIL, took ~3 s more). The thread takes
    everything queued at once and writes each entity's newest row only: rows of an entity
    arrive in order (``as_of`` never decreases), so under a backlog more of them coalesce.

    Nothing is lost: Bytewax commits an epoch only after every partition's ``snapshot`` of it
    returned, and ``snapshot`` returns once the queue is written (the writer retries a
    restarting Redis with backoff, holding the queue). A crash before that replays the epoch
    from the previous snapshot; newer-wins makes the re-sent rows harmless. At most
    ``max_queued`` rows wait; beyond, ``write_batch`` waits for the thread (backpressure).
    An error the writer does not retry is raised by the next ``write_batch``, ``snapshot`` or
    ``close``, stopping the flow.
    """

    def __init__(
        self,
        view: str,
        writer: RedisFeatureWriter,
        client: Any,
        *,
        max_queued: int = 200_000,
        freshness: bool = True,
    ) -> None:
        self._view = view
        self._freshness = freshness
        self._writer = writer
        self._client = client
        self._max_queued = max_queued
        self._updated = metrics.REDIS_RECORDS_UPDATED.labels(view=view)
        self._cond = threading.Condition()
        self._queue: list[Changes] = []
        self._queued_rows = 0
        self._busy = False
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"redis-{view}", daemon=True)
        self._thread.start()

    def write_batch(self, values: list[Changes]) -> None:
        rows = sum(len(changes.rows) for changes in values)
        if not rows:
            return
        with self._cond:
            self._raise_error()
            while self._queued_rows >= self._max_queued and self._error is None:
                self._cond.wait()
            self._raise_error()
            self._queue.extend(values)
            self._queued_rows += rows
            self._cond.notify_all()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._closing:
                    cond.wait()
                if not self._queue:
                    return  # closing, nothing left
                batch, self._queue, self._queued_rows = self._queue, [], 0
                self._busy = True
                cond.notify_all()  # room for write_batch
            try:
                self._write(batch)
            except BaseException as exc:  # handed to the flow's thread
                with cond:
                    self._error = exc
                    self._busy = False
                    cond.notify_all()
                return
            with cond:
                self._busy = False
                cond.notify_all()

    def _write(self, batch: list[Changes]) -> None:
        rows = list(chain.from_iterable(changes.rows for changes in batch))
        # Each entity's last row (its newest): later rows replace earlier ones in the dict.
        latest = dict(zip(map(_ENTITY_OF, rows), rows, strict=True))
        started = time.perf_counter()
        self._updated.inc(self._writer.write(list(latest.values())))
        done = time.perf_counter()
        metrics.REDIS_WRITE_SECONDS.observe(self._view, done - started)
        if not self._freshness:
            return
        now_ms = time.time_ns() / 1e6
        metrics.FRESHNESS_SECONDS.observe_ages(
            self._view, now_ms, list(chain.from_iterable(changes.kafka_ts for changes in batch))
        )

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(
                f"writing view {self._view!r} to Redis failed: {self._error}"
            ) from self._error

    def _drain(self) -> None:
        with self._cond:
            while (self._queue or self._busy) and self._error is None:
                self._cond.wait()
            self._raise_error()

    def snapshot(self) -> None:
        self._drain()
        return None

    def close(self) -> None:
        try:
            self._drain()
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join(timeout=5)
            self._client.close()


@dataclass(frozen=True)
class RedisSink(FixedPartitionedSink[Changes, None]):
    """Writes one view's rows to Redis from ``partitions`` writers (see ``_RedisPartition``).

    A partitioned sink because its ``snapshot`` is the barrier that makes the threaded writes
    durable per epoch. ``freshet run`` makes one partition per worker, so the writes spread
    over the workers (Bytewax places the partitions and routes each engine shard's rows to
    one of them).
    """

    url: str
    view: FeatureView
    partitions: int = 1
    # Off in a replay: its rows' Kafka timestamps are hours old, not a freshness.
    freshness: bool = True

    def list_parts(self) -> list[str]:
        width = len(str(self.partitions - 1))
        return [f"r{i:0{width}d}" for i in range(self.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _RedisPartition:
        client = connect(self.url)
        client.ping()  # fail fast on a wrong URL; later outages are retried by the writer
        layout = self.view.layout()
        retries = metrics.REDIS_WRITE_RETRIES.labels(view=self.view.name)
        writer = RedisFeatureWriter(
            client, {layout.name: layout}, on_retry=lambda _exc: retries.inc()
        )
        return _RedisPartition(self.view.name, writer, client, freshness=self.freshness)


class _ParquetPartition(StatefulSinkPartition[list[Row], WriterState | None]):
    def __init__(self, view: str, writer: ParquetLogWriter, *, commit_at_snapshot: bool) -> None:
        self._view = view
        self._writer = writer
        self._commit_at_snapshot = commit_at_snapshot
        self._failed = False

    def write_batch(self, values: list[list[Row]]) -> None:
        rows = list(chain.from_iterable(values))
        started = time.perf_counter()
        try:
            self._writer.write(rows)
        except OSError as exc:
            self._failing(exc)
            raise
        metrics.PARQUET_WRITE_SECONDS.observe(self._view, time.perf_counter() - started)

    def snapshot(self) -> WriterState | None:
        if not self._commit_at_snapshot:
            # No recovery: this state is never resumed from, so the snapshot starts a commit of
            # the buffer (rows reach disk about once per epoch) without waiting for it.
            try:
                self._writer.roll()
            except OSError as exc:
                self._failing(exc)
                raise
            return None
        started = time.perf_counter()
        before = self._writer.buffered
        try:
            state = self._writer.snapshot()
        except OSError as exc:
            self._failing(exc)
            raise
        if before:
            metrics.PARQUET_WRITE_SECONDS.observe(self._view, time.perf_counter() - started)
        return state

    def close(self) -> None:
        if self._failed:
            # Bytewax closes the partition while it unwinds from the error raised above; a
            # second error here would abort the process before that one is printed.
            return
        try:
            self._writer.close()
        except OSError as exc:
            self._failing(exc)
            raise

    def _failing(self, exc: OSError) -> None:
        self._failed = True
        log.error(
            "cannot write the offline log of view %r: %s. The flow stops with %d rows not "
            "committed: fix the directory and restart (with --recovery-dir the flow replays "
            "them from its last snapshot)",
            self._view,
            exc,
            self._writer.buffered,
        )


def _counter(segments: Any) -> Callable[[list[Path]], None]:
    """Counts committed segments (called on the writer's thread; counters are thread-safe)."""
    return lambda paths: segments.inc(len(paths))


@dataclass(frozen=True)
class ParquetSink(FixedPartitionedSink[list[Row], WriterState | None]):
    """One view's offline log, in ``partitions`` writers named ``<prefix>p<i>``.

    ``commit_at_snapshot``: commit the buffer at every Bytewax snapshot, wait for it and return
    the writer's resume state (needed with recovery: exactly once on disk); off, a snapshot
    starts a commit of the buffer without waiting and the state is None.
    """

    root: Path
    view: FeatureView
    partitions: int = 1
    max_rows: int = 100_000
    max_age_s: float = 60.0
    prefix: str = ""
    commit_at_snapshot: bool = True
    # The segment being filled is written one row group at a time while rows arrive, so a
    # snapshot (which the flow waits for) only writes the last second's rows and the footer.
    row_group_rows: int | None = 16_384
    row_group_age_s: float = 1.0

    def list_parts(self) -> list[str]:
        width = len(str(self.partitions - 1))
        return [f"{self.prefix}p{i:0{width}d}" for i in range(self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: WriterState | None
    ) -> _ParquetPartition:
        writer = ParquetLogWriter(
            self.root,
            self.view.layout(),
            max_rows=self.max_rows,
            max_age_s=self.max_age_s,
            writer_id=for_part,
            resume_state=resume_state,
            background=True,
            on_commit=_counter(metrics.SEGMENTS_WRITTEN.labels(view=self.view.name)),
            row_group_rows=self.row_group_rows,
            row_group_age_s=self.row_group_age_s,
        )
        return _ParquetPartition(self.view.name, writer, commit_at_snapshot=self.commit_at_snapshot)


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, topic: str, producer: DeadLetterProducer, sources: SourceRecords) -> None:
        self._topic = topic
        self._producer = producer
        self._sources = sources

    def write_batch(self, items: list[DeadLetter]) -> None:
        # Late letters were re-encoded from decoded events: give them their original bytes.
        self._producer.send(self._topic, self._sources.restore(items))
        self._producer.flush()

    def close(self) -> None:
        try:
            self._producer.close()
        finally:
            self._sources.close()


class _CountingPartition(StatelessSinkPartition[DeadLetter]):
    """A view without a dead-letter topic: bad records are only counted."""

    def write_batch(self, items: list[DeadLetter]) -> None:
        for letter in items:
            _count_dead_letter(letter.view, letter.reason)


def _count_dead_letter(view: str, reason: str) -> None:
    metrics.DEAD_LETTERS.labels(view=view, reason=reason).inc()


@dataclass(frozen=True)
class DeadLetterSink(DynamicSink[DeadLetter]):
    """Sends one view's dead letters to ``topic`` (counting each delivered one); with no
    topic, only counts them."""

    config: Mapping[str, str]
    topic: str | None

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[DeadLetter]:
        if self.topic is None:
            return _CountingPartition()
        producer = DeadLetterProducer(self.config, on_delivered=_count_dead_letter).build()
        return _DeadLetterPartition(self.topic, producer, SourceRecords(self.config))


@dataclass(frozen=True, kw_only=True)
class KafkaIO:
    """The production :class:`freshet.stream.pipeline.FlowIO`: Kafka in, Redis + Parquet + DLQ out.

    Reads ``view.source.topic``, sends dead letters to ``dead_letter_topic(view)``.
    ``tail=False`` stops at the end of every partition (tests, benchmarks, catch-up jobs).
    A bounded replay (``freshet backfill``) reads from ``start`` (a time) to ``end`` and names
    its Parquet writers ``<parquet_prefix>p<i>``; with ``live`` off it only counts dead letters
    (the live flow sent them) and observes no freshness (its rows are old by design).
    """

    settings: Settings
    start: StartAt = "earliest"
    tail: bool = True
    # Records per poll of a partition (at most). Measured, 10,000 over 1,000: +22 % events/s
    # when catching up (tests/bench/pipeline; each of 256 engine shards then gets ~40 events
    # per activation instead of ~4); a poll at a steady rate takes what is there.
    kafka_batch_size: int = 10_000
    parquet_partitions: int = 1
    # Redis writers (each with its thread and connection); ``freshet run`` uses one per worker.
    redis_partitions: int = 1
    parquet_max_rows: int = 100_000
    parquet_max_age_s: float = 60.0
    # With recovery: segments commit at every snapshot (exactly once on disk).
    parquet_commit_at_snapshot: bool = True
    # With recovery: where first-start offsets are recorded (see StartingKafkaSource).
    start_positions_dir: Path | None = None
    # A bounded replay: each partition ends before its first record stamped at or after this.
    end: int | None = None
    parquet_prefix: str = ""
    live: bool = True

    def source(self, view: FeatureView) -> StartingKafkaSource:
        return StartingKafkaSource(
            self.settings.kafka_client_config(),
            [view.source.topic],
            start=self.start,
            tail=self.tail,
            batch_size=self.kafka_batch_size,
            positions_dir=self.start_positions_dir,
            end=self.end,
        )

    def online_sink(self, view: FeatureView) -> RedisSink:
        return RedisSink(
            self.settings.redis_url, view, partitions=self.redis_partitions, freshness=self.live
        )

    def offline_sink(self, view: FeatureView) -> ParquetSink:
        return ParquetSink(
            self.settings.offline_dir,
            view,
            partitions=self.parquet_partitions,
            max_rows=self.parquet_max_rows,
            max_age_s=self.parquet_max_age_s,
            prefix=self.parquet_prefix,
            commit_at_snapshot=self.parquet_commit_at_snapshot,
        )

    def dead_letter_sink(self, view: FeatureView) -> DeadLetterSink:
        topic = dead_letter_topic(view) if self.live else None
        return DeadLetterSink(self.settings.kafka_client_config(), topic)
