"""Consumed Kafka records in their two shapes, and the adapters between them.

* Consumer messages (``confluent_kafka.Message``, what the flow's Kafka source and the backfill
  read): fields are *methods*, ``m.value()``. :class:`ConsumerMessage` types them.
* Records with *attributes*, ``m.value``: Bytewax's ``KafkaSourceMessage`` and
  :class:`RawMessage` (tests, benchmarks, callers without a consumer). :class:`SourceMessage`
  types them.

    records = [RawMessage.from_confluent(m) for m in consumer.consume(100, 1.0)]
    for m in as_consumer_messages(records):   # one loop for both shapes
        m.offset()
    field(records[0], "offset")               # either shape, one field

The flow's hot loops read consumer messages as they are (wrapping each record costs more than
decoding it; ``tests/bench/README.md``), so the adapters are for the other callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

__all__ = [
    "REASONS",
    "ConsumerMessage",
    "DeadLetter",
    "Headers",
    "RawMessage",
    "Reason",
    "SourceMessage",
    "as_consumer_messages",
    "field",
]

Headers = list[tuple[str, str | bytes | None]]


class SourceMessage(Protocol):
    """A consumed Kafka record as Bytewax's ``KafkaSourceMessage`` types it (attributes)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, str | bytes | None]] | None: ...
    @property
    def partition(self) -> int | None: ...
    @property
    def offset(self) -> int | None: ...
    @property
    def timestamp(self) -> tuple[int, int] | None: ...


class ConsumerMessage(Protocol):
    """A consumed record with confluent-kafka's accessors (``confluent_kafka.Message``), as a
    consumer fills it: topic, partition and offset set."""

    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def topic(self) -> str: ...
    def headers(self) -> Sequence[tuple[str, str | bytes | None]] | None: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def timestamp(self) -> tuple[int, int] | None: ...


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A :class:`SourceMessage` without Bytewax (tests, benchmarks, plain consumers)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: tuple[int, int] | None = None
    headers: Headers | None = None

    @classmethod
    def from_confluent(cls, msg: Any) -> RawMessage:
        """Wrap a ``confluent_kafka.Message`` (whose fields are methods)."""
        return cls(
            key=msg.key(),
            value=msg.value(),
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            timestamp=msg.timestamp(),
            headers=msg.headers(),
        )


class _Accessors:
    """A :class:`SourceMessage` (attributes) seen through ``confluent_kafka.Message``'s
    methods, so one loop serves both."""

    __slots__ = ("_m",)

    def __init__(self, message: SourceMessage) -> None:
        self._m = message

    def key(self) -> bytes | None:
        return self._m.key

    def value(self) -> bytes | None:
        return self._m.value

    # Consumers (Bytewax's KafkaSource included) always set topic, partition and offset.
    def topic(self) -> str:
        return cast(str, self._m.topic)

    def headers(self) -> Sequence[tuple[str, str | bytes | None]] | None:
        return self._m.headers

    def partition(self) -> int:
        return cast(int, self._m.partition)

    def offset(self) -> int:
        return cast(int, self._m.offset)

    def timestamp(self) -> tuple[int, int] | None:
        return self._m.timestamp


def as_consumer_messages(messages: Sequence[Any]) -> Sequence[ConsumerMessage]:
    """``messages`` with consumer accessors: as they are when they are consumer messages
    (checked on the first; a batch is of one kind), else each behind an adapter."""
    # Imported here: modules that only need the types (dead letters, doctor) stay light.
    from confluent_kafka import Message

    if not messages or messages[0].__class__ is Message:
        return cast("Sequence[ConsumerMessage]", messages)
    return [_Accessors(m) for m in messages]


def field(message: Any, name: str) -> Any:
    """Field ``name`` of a record of either shape: a consumer message's (a method) or a
    :class:`SourceMessage`'s (an attribute)."""
    value = getattr(message, name)
    return value() if callable(value) else value


# Why a record was refused (the dead letter's freshet.reason header).
Reason = Literal["undecodable", "missing_field", "wrong_type", "invalid_value", "late"]
REASONS: tuple[Reason, ...] = (
    "undecodable",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "late",
)

# Error texts can quote user data; keep headers small.
_MAX_ERROR_CHARS = 1000


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
