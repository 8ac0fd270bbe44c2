"""Dead letters: records the pipeline could not use, kept on a Kafka topic instead of dropped.

A :class:`DeadLetter` carries the original key and value bytes of a Kafka record with why it
was refused. :class:`DeadLetterProducer` sends them to the view's dead-letter topic
(:func:`dead_letter_topic`: ``FeatureView.dead_letter_topic``, else ``<source topic>.dlq``) with
these headers, after the record's own headers:

==========================  ===========================================================
``freshet.error``           the error text, e.g. ``field 'amount' must be a number, got str``
``freshet.reason``          one of :data:`REASONS` (a low-cardinality metrics label)
``freshet.view``            the view that refused the record
``freshet.source.topic``    where the record came from …
``freshet.source.partition``… its partition (decimal text) …
``freshet.source.offset``   … and offset (decimal text)
==========================  ===========================================================

Late events are dead letters too (reason ``late``); :func:`late_letter` builds one from a
decoded event. The engine sees decoded events only, so unless the caller still has the raw
bytes, the value is the decoded event re-encoded as JSON and the header
``freshet.value.encoding: decoded-json`` says so. The flow's dead-letter sink then gives such
letters their source records back (:class:`SourceRecords`): from :data:`RECENT`, the records
of each partition's last few polls, which the Kafka source remembers (a reference per poll), or
else read back from the source topic by partition and offset. The letter gets the record's
original key, bytes and headers like any other, and keeps the JSON and its marker only if the
record cannot be found in time (deleted by retention, broker unreachable).

The producer is a plain confluent-kafka ``Producer`` (Bytewax's ``KafkaSink`` can crash with
``BufferError`` under load): when librdkafka's queue is full it polls until there is room,
for at most ``max_block_s``; a record that cannot be delivered raises :class:`DeadLetterError`
on the next call instead of being dropped. Counting is the caller's: pass ``on_delivered``
(called with view and reason once per delivered record) to feed a metrics counter.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from freshet.decode.messages import DeadLetter, Headers, field
from freshet.sinks.layout import decode_entity

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from freshet.dsl.definitions import FeatureView

__all__ = [
    "RECENT",
    "DeadLetterError",
    "DeadLetterProducer",
    "RecentRecords",
    "SourceRecords",
    "dead_letter_topic",
    "late_letter",
]

_DECODED_JSON: Headers = [("freshet.value.encoding", b"decoded-json")]

log = logging.getLogger(__name__)


class DeadLetterError(RuntimeError):
    """A dead letter could not be handed to Kafka; nothing was silently dropped."""


def dead_letter_topic(view: FeatureView) -> str:
    """The view's dead-letter topic: its own setting, else ``<source topic>.dlq``."""
    return view.dead_letter_topic or f"{view.source.topic}.dlq"


def late_letter(
    view: FeatureView,
    event: tuple[str, int, tuple[Any, ...], int, int, int],
    *,
    watermark_ms: int,
    topic: str | None = None,
    key: bytes | None = None,
    value: bytes | None = None,
) -> DeadLetter:
    """A dead letter for a decoded event the engine refused as late.

    ``event`` is a ``freshet.decode.decoder`` event ``(entity, event_time_ms, fields, partition,
    offset, kafka_timestamp_ms)``. Without the raw ``value``, the event is re-encoded as JSON
    (entity, event time and input fields) and marked with ``freshet.value.encoding: decoded-json``.
    ``topic`` is the topic the event was read from, if not the view's own source topic.
    """
    entity, event_time_ms, fields, partition, offset, _ = event
    headers: Headers | None = None
    if value is None:
        keys = view.entity.keys
        record: dict[str, Any] = dict(zip(keys, decode_entity(entity, len(keys)), strict=True))
        record[view.source.event_time_field] = event_time_ms
        record.update(zip(view.input_fields, fields, strict=True))
        value = orjson.dumps(record)
        headers = list(_DECODED_JSON)
    if key is None:
        key = entity.encode()
    return DeadLetter(
        reason="late",
        error=(
            f"late: event time {event_time_ms} < watermark {watermark_ms} "
            f"(by {watermark_ms - event_time_ms} ms) for entity {entity!r}"
        ),
        view=view.name,
        key=key,
        value=value,
        topic=topic if topic is not None else view.source.topic,
        partition=partition,
        offset=offset,
        headers=headers,
    )


_Record = tuple[bytes | None, bytes | None, Headers | None]  # key, value, headers


class RecentRecords:
    """The source records of each partition's last ``polls`` polls in this process.

    ``remember(topic, partition, records)`` costs one reference per poll (the Kafka source
    calls it with each poll of a partition, records in offset order); ``get`` finds a record by
    its offset in a poll (by position, else by bisection where the offsets have gaps), which
    only late letters do. A process's workers share it (appends and copies of a deque are
    atomic under the GIL).
    """

    def __init__(self, polls: int = 2) -> None:
        self._polls = polls
        self._by_partition: dict[tuple[str, int], deque[tuple[int, int, Sequence[Any]]]] = {}

    def remember(self, topic: str, partition: int, records: Sequence[Any]) -> None:
        if not records:
            return
        polls = self._by_partition.get((topic, partition))
        if polls is None:
            polls = self._by_partition.setdefault((topic, partition), deque(maxlen=self._polls))
        polls.append((field(records[0], "offset"), field(records[-1], "offset"), records))

    def get(self, topic: str, partition: int, offset: int) -> _Record | None:
        for first, last, records in tuple(self._by_partition.get((topic, partition), ())):
            if not first <= offset <= last:
                continue
            i = offset - first
            if i >= len(records) or field(records[i], "offset") != offset:
                i = bisect.bisect_left(records, offset, key=lambda m: field(m, "offset"))
            if i < len(records) and field(records[i], "offset") == offset:
                m = records[i]
                return field(m, "key"), field(m, "value"), field(m, "headers")
        return None


# The process's recent source records, remembered by ``freshet.stream.connectors``' Kafka source.
RECENT = RecentRecords()


class SourceRecords:
    """Finds source records by ``(topic, partition, offset)``, so late letters carry the
    original key, bytes and headers (see the module docstring).

    :meth:`restore` looks in ``recent`` first (a worker's late letters usually come from its
    own latest polls). The rest it reads back from Kafka, each partition once per call, from
    the lowest offset it needs to the highest (offsets ``max_span`` or more apart are read
    separately), keeping only the records asked for; that costs a fetch round trip per
    partition, so it is the fallback (a flow of several processes, where a shard's events were
    decoded by another). A record gone, or ``timeout_s`` spent: those letters keep their JSON
    (and a warning is logged); none is dropped or delayed beyond the timeout.
    """

    def __init__(
        self,
        config: Mapping[str, str],
        *,
        recent: RecentRecords = RECENT,
        timeout_s: float = 10.0,
        max_span: int = 200_000,
    ) -> None:
        self._recent = recent
        self._config = {
            **config,
            "group.id": "freshet-dead-letter-originals",  # assign only: never joins it
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            # An offset no longer (or not yet) in the log is an error here, not a jump.
            "auto.offset.reset": "error",
        }
        self._timeout_s = timeout_s
        self._max_span = max_span
        self._consumer: Any = None

    def restore(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """``letters`` with each re-encoded late letter given its source record's key, value
        and headers; every other letter as it is."""
        wanted: dict[tuple[str, int], set[int]] = {}
        for letter in letters:
            if letter.headers == _DECODED_JSON:
                wanted.setdefault((letter.topic, letter.partition), set()).add(letter.offset)
        if not wanted:
            return list(letters)
        found: dict[tuple[str, int, int], _Record] = {}
        for (topic, partition), offsets in list(wanted.items()):
            for offset in list(offsets):
                record = self._recent.get(topic, partition, offset)
                if record is not None:
                    found[(topic, partition, offset)] = record
                    offsets.discard(offset)
            if not offsets:
                del wanted[(topic, partition)]
        if wanted:
            found.update(self._read(wanted))
        out = []
        for letter in letters:
            record = found.get((letter.topic, letter.partition, letter.offset))
            if record is not None and letter.headers == _DECODED_JSON:
                key, value, headers = record
                letter = replace(letter, key=key, value=value, headers=headers)
            out.append(letter)
        missing = sum(1 for letter in out if letter.headers == _DECODED_JSON)
        if missing:
            log.warning(
                "%d late dead letters keep their decoded JSON: their source records could not "
                "be read back (retention, a span over %d records, or %g s spent)",
                missing,
                self._max_span,
                self._timeout_s,
            )
        return out

    def _read(self, wanted: dict[tuple[str, int], set[int]]) -> dict[tuple[str, int, int], _Record]:
        from freshet.stream import kafka_clients

        if self._consumer is None:
            self._consumer = kafka_clients.consumer(self._config)
        consumer = self._consumer
        found: dict[tuple[str, int, int], _Record] = {}
        deadline = time.monotonic() + self._timeout_s
        for (topic, partition), offsets in wanted.items():
            for run in _runs(sorted(offsets), self._max_span):
                self._read_run(consumer, topic, partition, run, deadline, found)
        consumer.unassign()
        return found

    def _read_run(
        self,
        consumer: Any,
        topic: str,
        partition: int,
        offsets: list[int],
        deadline: float,
        found: dict[tuple[str, int, int], _Record],
    ) -> None:
        """Reads ``topic[partition]`` from ``offsets[0]`` to ``offsets[-1]`` into ``found``."""
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        low, high = offsets[0], offsets[-1]
        remaining = set(offsets)
        try:
            consumer.assign([TopicPartition(topic, partition, low)])
            while remaining and time.monotonic() < deadline:
                for message in consumer.consume(min(high - low + 1, 10_000), 0.2):
                    error = message.error()
                    if error is not None:  # the end of the partition, or an offset gone
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("reading back %s[%d]: %s", topic, partition, error)
                        return
                    offset = message.offset()
                    if offset in remaining:
                        remaining.discard(offset)
                        found[(topic, partition, offset)] = (
                            message.key(), message.value(), message.headers()
                        )  # fmt: skip
                    if offset >= high:
                        return
        except KafkaException as exc:
            log.warning("reading back %s[%d]: %s", topic, partition, exc)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def _runs(offsets: list[int], max_span: int) -> list[list[int]]:
    """Sorted ``offsets`` cut where two neighbours are ``max_span`` or more apart."""
    runs = [[offsets[0]]]
    for offset in offsets[1:]:
        if offset - runs[-1][-1] >= max_span:
            runs.append([offset])
        else:
            runs[-1].append(offset)
    return runs


class DeadLetterProducer:
    """Sends dead letters to Kafka, waiting (bounded) instead of dropping when the queue is full.

    ``config`` is librdkafka configuration (at least ``bootstrap.servers``; e.g.
    ``Settings.kafka_client_config()``). Call :meth:`build` before :meth:`send`; it checks the
    broker answers. :meth:`close` flushes.
    """

    def __init__(
        self,
        config: Mapping[str, str],
        *,
        on_delivered: Callable[[str, str], None] | None = None,
        max_block_s: float = 60.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._config = {
            # Retries must not reorder or duplicate dead letters.
            "enable.idempotence": "true",
            "linger.ms": "20",
            **config,
        }
        self._on_delivered = on_delivered
        self._max_block_s = max_block_s
        self._connect_timeout_s = connect_timeout_s
        self._producer: Producer | None = None
        self._failures: list[str] = []

    def build(self) -> DeadLetterProducer:
        """Create the producer and fail fast if the broker does not answer."""
        from confluent_kafka import KafkaException

        from freshet.stream import kafka_clients

        producer = kafka_clients.producer(self._config)
        try:
            producer.list_topics(timeout=self._connect_timeout_s)
        except KafkaException as exc:
            servers = self._config.get("bootstrap.servers")
            raise DeadLetterError(
                f"dead-letter producer cannot reach Kafka at {servers!r}: {exc}"
            ) from exc
        self._producer = producer
        return self

    def send(self, topic: str, letters: Iterable[DeadLetter]) -> int:
        """Queue ``letters`` for ``topic``; returns how many were queued.

        Blocks while librdkafka's queue is full (at most ``max_block_s`` per record).
        Raises :class:`DeadLetterError` if an earlier record failed delivery.
        """
        from confluent_kafka import KafkaException

        producer = self._require()
        self._raise_failures()
        sent = 0
        for letter in letters:
            callback = partial(self._delivered, letter.view, letter.reason)
            deadline = time.monotonic() + self._max_block_s
            while True:
                try:
                    producer.produce(
                        topic,
                        value=letter.value,
                        key=letter.key,
                        headers=letter.kafka_headers(),
                        on_delivery=callback,
                    )
                    break
                except BufferError:
                    if time.monotonic() >= deadline:
                        raise DeadLetterError(
                            f"dead-letter queue for {topic!r} stayed full for "
                            f"{self._max_block_s:g} s; is Kafka reachable?"
                        ) from None
                    producer.poll(0.05)
                except KafkaException as exc:  # e.g. larger than message.max.bytes
                    raise DeadLetterError(
                        f"Kafka refused the dead letter of {letter.topic}[{letter.partition}]@"
                        f"{letter.offset} for {topic!r}: {exc}"
                    ) from exc
            sent += 1
        producer.poll(0)
        return sent

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued dead letter is delivered; raise if any is not."""
        remaining = self._require().flush(timeout_s)
        self._raise_failures()
        if remaining:
            raise DeadLetterError(
                f"{remaining} dead letters still undelivered after {timeout_s:g} s"
            )

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush and release the producer."""
        if self._producer is not None:
            try:
                self.flush(timeout_s)
            finally:
                self._producer = None

    def pending(self) -> int:
        """Dead letters queued but not yet acknowledged by the broker."""
        return len(self._require())

    def _require(self) -> Producer:
        if self._producer is None:
            raise DeadLetterError("DeadLetterProducer used before build() or after close()")
        return self._producer

    def _raise_failures(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeadLetterError(
                f"{len(failures)} dead letters failed delivery; first: {failures[0]}"
            )

    def _delivered(self, view: str, reason: str, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")
        elif self._on_delivered is not None:
            self._on_delivered(view, reason)
