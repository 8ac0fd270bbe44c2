"""Synthetic card transactions for the demo view: realistic enough to be interesting, exact to test.

A :class:`TransactionStream` yields :class:`Generated` records for a view reading
``schemas/transaction.avsc`` (``card_id``, ``amount``, ``merchant``, ``ts``), encoded as that
view's source is (schemaless Avro or JSON) and keyed by card id:

* **Cards** ``card_000000`` … with Zipf popularity (card ``k`` has weight ``1/(k+1)**s``, so
  ``card_000000`` is the busiest: :meth:`TransactionStream.hot_cards`); **merchants**
  ``merchant_000`` … Zipf as well; **amounts** lognormal (median ``amount_median``), in cents.
* **Event times** follow a schedule of ``rate`` events per second from ``start_ms``, each
  ``0..disorder_ms`` behind it (small disorder, always within the view's allowed lateness, so
  such events are on time).
* A ``late_fraction`` of events are **late**: for a card already sent, older than that card's
  newest event minus the allowed lateness (what the engine refuses, DESIGN "Clock and
  lateness").
* A ``bad_fraction`` are **malformed**, in turns: bytes that are not the encoding at all, a
  record missing a field, a field of the wrong type. Each is checked against the view's own
  decoder, so every ``bad`` record really is a dead letter.

Everything comes from ``random.Random(seed)`` and the schedule, not the wall clock: the same
seed, count, rate and ``start_ms`` give the same bytes. :func:`produce` sends a stream to Kafka,
pacing it to ``rate`` in wall time (bounded in count and time) and returns the counts.
"""

from __future__ import annotations

import io
import itertools
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import orjson
from fastavro import parse_schema, schemaless_writer

from freshet.decode.decoder import decoder_for, load_schema
from freshet.decode.messages import RawMessage
from freshet.sinks.clock import now_ms

if TYPE_CHECKING:
    from freshet.dsl.definitions import FeatureView

__all__ = [
    "MAX_COUNT",
    "MAX_RATE",
    "Generated",
    "GeneratorConfig",
    "GeneratorError",
    "Kind",
    "ProduceCounts",
    "TransactionStream",
    "produce",
]

Kind = Literal["good", "late", "bad"]
MAX_RATE = 1_000_000.0  # events/s; the pacing loop's bound
MAX_COUNT = 100_000_000
_AMOUNT_FIELD = "amount"
_MERCHANT_FIELD = "merchant"
_BAD_SHAPES = ("bad_bytes", "missing_field", "wrong_type")


class GeneratorError(ValueError):
    """A generator setting that cannot work; the message names it."""


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """What the synthetic stream looks like (all validated at construction)."""

    cards: int = 10_000
    merchants: int = 200
    card_skew: float = 0.8  # Zipf exponent of card popularity (10,000 cards: top card 3.7 %)
    merchant_skew: float = 0.8
    amount_median: float = 30.0
    amount_sigma: float = 1.0  # of the underlying normal
    disorder_ms: int = 2_000  # on-time events lag their schedule by up to this much
    late_fraction: float = 0.01
    bad_fraction: float = 0.005
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("cards", "merchants"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GeneratorError(f"{name}={value!r} must be an int >= 1")
        for name in ("late_fraction", "bad_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise GeneratorError(f"{name}={value!r} must be between 0 and 1")
        if self.late_fraction + self.bad_fraction > 1.0:
            raise GeneratorError(
                f"late_fraction + bad_fraction = {self.late_fraction + self.bad_fraction:g} "
                "must be <= 1"
            )
        if self.disorder_ms < 0:
            raise GeneratorError(f"disorder_ms={self.disorder_ms!r} must be >= 0")
        if self.amount_median <= 0 or self.amount_sigma < 0:
            raise GeneratorError(
                f"amount_median={self.amount_median!r} must be > 0 and "
                f"amount_sigma={self.amount_sigma!r} >= 0"
            )
        if self.card_skew < 0 or self.merchant_skew < 0:
            raise GeneratorError(
                f"card_skew={self.card_skew!r} and merchant_skew={self.merchant_skew!r} "
                "must be >= 0"
            )


class Generated(NamedTuple):
    """One record to produce. Malformed records have ``event_time_ms`` -1 and a ``shape``."""

    kind: Kind
    key: bytes
    value: bytes
    event_time_ms: int
    shape: str = ""  # bad_bytes | missing_field | wrong_type | truncated


@dataclass(frozen=True)
class ProduceCounts:
    """What :func:`produce` sent (and Kafka acknowledged)."""

    good: int = 0
    late: int = 0
    bad: int = 0
    seconds: float = 0.0
    by_shape: Mapping[str, int] = field(default_factory=dict)  # malformed records by shape

    @property
    def total(self) -> int:
        return self.good + self.late + self.bad


def _zipf_cum_weights(n: int, skew: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (k + 1) ** skew for k in range(n)))


class TransactionStream:
    """The deterministic record stream for ``view`` (see the module docstring)."""

    def __init__(self, view: FeatureView, config: GeneratorConfig | None = None) -> None:
        config = config or GeneratorConfig()
        lateness_ms = view.allowed_lateness_seconds * 1000
        if config.disorder_ms >= max(lateness_ms, 1):
            raise GeneratorError(
                f"disorder_ms={config.disorder_ms} must be below view {view.name!r}'s allowed "
                f"lateness ({lateness_ms} ms), or on-time events would be late"
            )
        source = view.source
        if source.schema_path is None:
            raise GeneratorError(f"view {view.name!r} has no schema to generate records from")
        schema = load_schema(source.schema_path)
        fields = {f["name"] for f in schema["fields"]}
        self._entity = view.entity.keys[0]
        self._time = source.event_time_field
        needed = list(
            dict.fromkeys([*view.entity.keys, self._time, _AMOUNT_FIELD, _MERCHANT_FIELD])
        )
        if set(needed) != fields:
            raise GeneratorError(
                f"the generator writes {', '.join(needed)}; view {view.name!r}'s schema "
                f"{source.schema_path.name} has {', '.join(sorted(fields))}"
            )
        self._encoding = source.encoding
        self._schema = parse_schema(schema)
        # The same schema with `amount` a string and without the event time: the malformed
        # Avro shapes.
        self._wrong_schema = parse_schema(
            {
                **schema,
                "name": "WrongType",
                "fields": [
                    {**f, "type": "string"} if f["name"] == _AMOUNT_FIELD else f
                    for f in schema["fields"]
                ],
            }
        )
        self._missing_schema = parse_schema(
            {
                **schema,
                "name": "MissingField",
                "fields": [f for f in schema["fields"] if f["name"] != self._time],
            }
        )
        self._decoder = decoder_for(view)
        self._lateness_ms = lateness_ms
        self._config = config
        self._card_weights = _zipf_cum_weights(config.cards, config.card_skew)
        self._merchant_weights = _zipf_cum_weights(config.merchants, config.merchant_skew)
        self._topic = source.topic

    @staticmethod
    def card_id(k: int) -> str:
        return f"card_{k:06d}"

    @staticmethod
    def merchant_id(k: int) -> str:
        return f"merchant_{k:03d}"

    def hot_cards(self, n: int) -> list[str]:
        """The ``n`` busiest cards (most events), busiest first."""
        return [self.card_id(k) for k in range(min(n, self._config.cards))]

    def records(self, count: int, *, start_ms: int, rate: float) -> Iterator[Generated]:
        """``count`` records scheduled at ``rate`` events/s from ``start_ms``."""
        if not 1 <= count <= MAX_COUNT:
            raise GeneratorError(f"count={count!r} must be between 1 and {MAX_COUNT:,}")
        if not 0 < rate <= MAX_RATE:
            raise GeneratorError(f"rate={rate!r} must be > 0 and <= {MAX_RATE:,.0f} events/s")
        cfg = self._config
        rng = random.Random(cfg.seed)
        newest: dict[int, int] = {}  # card -> newest event time sent
        seen: list[int] = []
        late_cut = cfg.late_fraction
        bad_cut = cfg.late_fraction + cfg.bad_fraction
        step_ms = 1000.0 / rate
        chunk = 1024
        for base in range(0, count, chunk):
            n = min(chunk, count - base)
            cards = rng.choices(range(cfg.cards), cum_weights=self._card_weights, k=n)
            merchants = rng.choices(range(cfg.merchants), cum_weights=self._merchant_weights, k=n)
            for i in range(n):
                card = cards[i]
                due = start_ms + int((base + i) * step_ms)
                roll = rng.random()
                if roll < late_cut and seen:
                    card = seen[rng.randrange(len(seen))]
                    t = newest[card] - self._lateness_ms - rng.randint(1, 60_000)
                    yield self._record("late", card, merchants[i], t, rng)
                elif late_cut <= roll < bad_cut:
                    yield self._malformed(card, merchants[i], due, rng)
                else:
                    t = due - rng.randint(0, cfg.disorder_ms)
                    if card not in newest:
                        seen.append(card)
                        newest[card] = t
                    elif t > newest[card]:
                        newest[card] = t
                    yield self._record("good", card, merchants[i], t, rng)

    def _fields(self, card: int, merchant: int, t: int, rng: random.Random) -> dict[str, Any]:
        cfg = self._config
        amount = round(cfg.amount_median * rng.lognormvariate(0.0, cfg.amount_sigma), 2)
        return {
            self._entity: self.card_id(card),
            _AMOUNT_FIELD: amount,
            _MERCHANT_FIELD: self.merchant_id(merchant),
            self._time: t,
        }

    def _record(
        self, kind: Kind, card: int, merchant: int, t: int, rng: random.Random
    ) -> Generated:
        record = self._fields(card, merchant, t, rng)
        return Generated(kind, record[self._entity].encode(), self._encode(record), t)

    def _encode(self, record: Mapping[str, Any], schema: Any = None) -> bytes:
        if self._encoding == "json":
            return orjson.dumps(record)
        buf = io.BytesIO()
        schemaless_writer(buf, schema if schema is not None else self._schema, record)
        return buf.getvalue()

    def _malformed(self, card: int, merchant: int, due: int, rng: random.Random) -> Generated:
        shape = _BAD_SHAPES[rng.randrange(len(_BAD_SHAPES))]
        intact = self._fields(card, merchant, due, rng)
        record = dict(intact)
        key = record[self._entity].encode()
        if shape == "missing_field":
            del record[self._time]
            value = self._encode(record, self._missing_schema)
        elif shape == "wrong_type":
            record[_AMOUNT_FIELD] = f"{record[_AMOUNT_FIELD]:.2f}"
            value = self._encode(record, self._wrong_schema)
        else:
            value = b"\xff\x00" + rng.randbytes(rng.randint(0, 40))
        if self._decodes(value):
            # Rare for Avro (bytes that happen to parse); a record cut short never does.
            shape = "truncated"
            value = self._encode(intact)[:-1]
        return Generated("bad", key, value, -1, shape)

    def _decodes(self, value: bytes) -> bool:
        probe = RawMessage(key=None, value=value, topic=self._topic, partition=0, offset=0)
        return bool(self._decoder.decode([probe]).events)


def produce(
    bootstrap: str,
    topic: str,
    *,
    view: FeatureView,
    count: int,
    rate: float = 1_000.0,
    pace: bool = True,
    config: GeneratorConfig | None = None,
    start_ms: int | None = None,
    max_seconds: float | None = None,
    kafka_config: Mapping[str, str] | None = None,
    on_progress: Callable[[ProduceCounts], None] | None = None,
) -> ProduceCounts:
    """Produce ``count`` generated records for ``view`` to ``topic``; returns acknowledged counts.

    Event times follow ``rate`` events/s from ``start_ms`` (default: now); with ``pace`` the
    records are also sent at that rate in wall time, without it as fast as Kafka takes them.
    Stops early after ``max_seconds`` (default: twice the scheduled duration plus 60 s).
    Raises ``RuntimeError`` if Kafka does not acknowledge every record sent.
    """
    from freshet.stream import kafka_clients

    stream = TransactionStream(view, config)
    records = stream.records(count, start_ms=start_ms or now_ms(), rate=rate)
    if max_seconds is None:
        max_seconds = 2 * count / rate + 60.0
    producer = kafka_clients.producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": "20",
            "batch.num.messages": "10000",
            "compression.type": "lz4",
            "enable.idempotence": "true",
            **(kafka_config or {}),
        }
    )
    acked = {"good": 0, "late": 0, "bad": 0}
    failures: list[str] = []

    def delivered(kind: str) -> Callable[[Any, Any], None]:
        def callback(err: Any, _msg: Any) -> None:
            if err is None:
                acked[kind] += 1
            else:
                failures.append(str(err))

        return callback

    callbacks = {kind: delivered(kind) for kind in acked}
    by_shape: dict[str, int] = {}
    started = time.monotonic()
    deadline = started + max_seconds
    sent = 0
    for i, rec in enumerate(records):
        if pace and i % 256 == 0:
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        if time.monotonic() > deadline:
            break
        if rec.shape:
            by_shape[rec.shape] = by_shape.get(rec.shape, 0) + 1
        while True:
            try:
                producer.produce(topic, rec.value, rec.key, on_delivery=callbacks[rec.kind])
                sent += 1
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kafka at {bootstrap} stopped taking records") from None
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
            if on_progress is not None:
                on_progress(_counts(acked, time.monotonic() - started))
    if pace:
        # Pacing sleeps once per 256 records: hold the last block to the rate too, so that
        # ``count`` records take ``count / rate`` seconds.
        ahead = min(started + sent / rate, deadline) - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    remaining = producer.flush(max(5.0, deadline - time.monotonic()))
    if failures or remaining:
        raise RuntimeError(
            f"{len(failures) + remaining} records not acknowledged by Kafka at {bootstrap}"
            + (f"; first error: {failures[0]}" if failures else "")
        )
    return _counts(acked, time.monotonic() - started, by_shape)


def _counts(
    acked: Mapping[str, int], seconds: float, by_shape: Mapping[str, int] | None = None
) -> ProduceCounts:
    return ProduceCounts(
        good=acked["good"],
        late=acked["late"],
        bad=acked["bad"],
        seconds=seconds,
        by_shape=dict(by_shape or {}),
    )
