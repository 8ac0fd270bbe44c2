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
``freshet.value.encoding: decoded-json`` says so.

The producer is a plain confluent-kafka ``Producer`` (Bytewax's ``KafkaSink`` can crash with
``BufferError`` under load): when librdkafka's queue is full it polls until there is room,
for at most ``max_block_s``; a record that cannot be delivered raises :class:`DeadLetterError`
on the next call instead of being dropped. Counting is the caller's: pass ``on_delivered``
(called with view and reason once per delivered record) to feed a metrics counter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from flows.definitions import FeatureView

__all__ = [
    "REASONS",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterProducer",
    "Headers",
    "Reason",
    "dead_letter_topic",
    "late_letter",
]

Reason = Literal["undecodable", "missing_field", "wrong_type", "invalid_value", "late"]
REASONS: tuple[Reason, ...] = (
    "undecodable",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "late",
)

Headers = list[tuple[str, str | bytes | None]]

# Error texts can quote user data; keep headers small.
_MAX_ERROR_CHARS = 1000


class DeadLetterError(RuntimeError):
    """A dead letter could not be handed to Kafka; nothing was silently dropped."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused record: the original bytes plus where it came from and why it was refused."""

    reason: Reason
    error: str
    view: str
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    headers: Headers | None = None

    def kafka_headers(self) -> Headers:
        """The record's own headers followed by freshet's (see the module docstring)."""
        own = list(self.headers) if self.headers else []
        own += [
            ("freshet.error", self.error[:_MAX_ERROR_CHARS].encode()),
            ("freshet.reason", self.reason.encode()),
            ("freshet.view", self.view.encode()),
            ("freshet.source.topic", self.topic.encode()),
            ("freshet.source.partition", str(self.partition).encode()),
            ("freshet.source.offset", str(self.offset).encode()),
        ]
        return own


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

    ``event`` is a ``flows.decode`` event ``(entity, event_time_ms, fields, partition, offset,
    kafka_timestamp_ms)``. Without the raw ``value``, the event is re-encoded as JSON (entity,
    event time and input fields) and marked with ``freshet.value.encoding: decoded-json``.
    ``topic`` is the topic the event was read from, if not the view's own source topic.
    """
    entity, event_time_ms, fields, partition, offset, _ = event
    headers: Headers | None = None
    if value is None:
        record = {view.entity.key: entity, view.source.event_time_field: event_time_ms}
        record.update(zip(view.input_fields, fields, strict=True))
        value = orjson.dumps(record)
        headers = [("freshet.value.encoding", b"decoded-json")]
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
        from confluent_kafka import KafkaException, Producer

        producer = Producer(self._config)
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
