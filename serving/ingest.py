"""``POST /v1/ingest/{view}``: events in, produced to the view's topic, optionally read back.

Request and answers::

    POST /v1/ingest/card_txn   {"events": [{"card_id": "c1", "amount": 12.5, ...}, ...],
                                "wait_ms": 2000}
    200  {"view", "produced": N, "served": true,  "pending": [], "pending_count": 0, "waited_ms"}
    202  {"view", "produced": N, "served": false, "pending": [{"entity", "event_time", "as_of"}],
          "pending_count", "waited_ms"}   (no wait_ms, or the wait ran out; pending: first 100)
    422  the first invalid events, by index: ``events[3]: field 'amount' must be a number, got
         str '12,5' (wrong_type)``; nothing is produced for a refused batch
    403  the API key has no write scope on the view (``FRESHET_API_KEYS``: ``VIEW=w``)
    503  Kafka did not acknowledge the events in time (some may have been produced: retrying
         may duplicate events)

Validation is the flow's own: every event goes through the decoder the flow uses for JSON
(:class:`freshet.decode.decoder.JsonDecoder`, checked against the view's Avro schema: types,
nulls, defaults, entity and event-time rules), with every schema field read, so an event
accepted here is one the flow accepts; fields the schema does not have are refused too. All
events are checked before any is produced.

Encoding: the view's source encoding. Avro views get schemaless Avro (fastavro
``schemaless_writer`` with the view's schema; the wire format the flow reads without a schema
registry), JSON views the event as sent. Each record is keyed by its entity id (a composite
key's encoded id), so an entity's events stay in one partition, in request order. The producer
is made by :func:`freshet.stream.kafka_clients.producer` with ``enable.idempotence=true``
(no duplicates from librdkafka's own retries); a thread polls it for delivery reports.

Read-after-write: with ``wait_ms``, once Kafka acknowledged every event the endpoint reads
each entity's record (through the same reader, and cache, as lookups) until its ``as_of`` is
at or after the latest event time sent for it, polling every 2 ms, backing off to 20 ms; 200
when all are, else 202 with what is still pending when ``wait_ms`` (counted from the request's
arrival) runs out.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from fastavro import parse_schema, schemaless_writer

from freshet.decode.decoder import JsonDecoder, load_schema
from freshet.decode.messages import RawMessage
from freshet.serving.errors import HttpError, json_object
from freshet.sinks.layout import encode_entity

if TYPE_CHECKING:
    from freshet.dsl.definitions import FeatureView

__all__ = ["MAX_EVENTS", "MAX_WAIT_MS", "Ingestor", "ViewCodec"]

MAX_EVENTS = 10_000
MAX_WAIT_MS = 60_000
_SHOWN_PROBLEMS = 10
_SHOWN_PENDING = 100
_POLL_FIRST_S = 0.002
_POLL_MAX_S = 0.02


@dataclass(frozen=True, slots=True)
class Prepared:
    """One validated event, ready to produce."""

    entity: str
    event_time_ms: int
    key: bytes
    value: bytes


class ViewCodec:
    """Validates a view's events by the flow's rules and encodes them in its topic's format."""

    def __init__(self, view: FeatureView, *, topic: str | None = None) -> None:
        source = view.source
        self.view = view.name
        self.topic = topic or source.topic
        self._encoding = source.encoding
        schema = load_schema(source.schema_path) if source.schema_path is not None else None
        self._keys: tuple[str, ...] = tuple(view.layout().keys)
        time_field = source.event_time_field
        if schema is not None:
            self._fields: tuple[str, ...] | None = tuple(f["name"] for f in schema["fields"])
            read = [f for f in self._fields if f != time_field]
        else:
            self._fields = None
            read = [f for f in dict.fromkeys((*self._keys, *view.input_fields)) if f != time_field]
        self._read = tuple(read)
        self._time_field = time_field
        # Every field the schema has is read (an Avro record needs them all), with the flow's
        # JSON rules; the event time is checked by the decoder's own event-time rule.
        self._decoder = JsonDecoder(
            view=view.name,
            entity_field=self._keys[0],
            time_field=time_field,
            input_fields=read,
            schema=schema,
        )
        self._key_at = tuple(self._read.index(k) for k in self._keys)
        if self._encoding == "avro":
            if schema is None:
                raise ValueError(f"view {view.name!r} reads Avro but names no schema file")
            self._avro = parse_schema(schema)

    def prepare(self, events: Sequence[Any]) -> list[Prepared]:
        """The events, validated and encoded; ``HttpError(422)`` naming the bad ones."""
        problems: list[tuple[int, str]] = []
        messages = []
        for index, event in enumerate(events):
            if not isinstance(event, dict):
                problems.append((index, f"is {type(event).__name__}, not a JSON object"))
                continue
            if self._fields is not None:
                unknown = [name for name in event if name not in self._fields]
                if unknown:
                    problems.append(
                        (
                            index,
                            f"field {unknown[0]!r} is not in the schema of view {self.view!r} "
                            f"(unknown_field); its fields: {', '.join(self._fields)}",
                        )
                    )
                    continue
            value = orjson.dumps(event)
            messages.append(
                RawMessage(key=None, value=value, topic=self.topic, partition=0, offset=index)
            )
        decoded = self._decoder.decode(messages)
        problems.extend((d.offset, f"{d.error} ({d.reason})") for d in decoded.dead)
        prepared: list[Prepared] = []
        for event in decoded.events:
            _, event_time, values, _, index, _ = event
            parts = [values[i] for i in self._key_at]
            bad = next((k for k, v in zip(self._keys, parts) if not _key_value(v)), None)  # noqa: B905
            if bad is not None:
                problems.append((index, f"key field {bad!r} is empty or null (invalid_value)"))
                continue
            entity = encode_entity([str(v) for v in parts])
            prepared.append(
                Prepared(
                    entity,
                    event_time,
                    entity.encode(),
                    self._encode(events[index], values, event_time),
                )
            )
        if problems:
            problems.sort()
            shown = "; ".join(f"events[{i}]: {text}" for i, text in problems[:_SHOWN_PROBLEMS])
            more = len(problems) - _SHOWN_PROBLEMS
            raise HttpError(
                422,
                "invalid_events",
                f"{len(problems)} invalid event(s) of {len(events)}, nothing was produced: "
                f"{shown}{f'; and {more} more' if more > 0 else ''}",
            )
        return prepared

    def _encode(self, event: Mapping[str, Any], values: Sequence[Any], event_time: int) -> bytes:
        if self._encoding != "avro":
            return orjson.dumps(event)
        record = dict(zip(self._read, values))  # noqa: B905 (the decoder read them all)
        record[self._time_field] = event_time
        buf = io.BytesIO()
        schemaless_writer(buf, self._avro, record)
        return buf.getvalue()


def _key_value(value: Any) -> bool:
    return (value.__class__ is str and value != "") or value.__class__ is int


class _Producer:
    """One idempotent Kafka producer for the endpoint's process, polled by a thread of its own;
    ``send`` resolves when Kafka acknowledged (or refused) every record."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._producer: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _started(self) -> Any:
        with self._lock:
            if self._producer is None:
                self._producer = self._make()
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._poll, name="freshet-ingest-producer", daemon=True
                )
                self._thread.start()
            return self._producer

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, topic: str, records: Sequence[Prepared], timeout_s: float) -> None:
        producer = self._started()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        left = [len(records)]
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:  # on the polling thread
            if err is not None:
                errors.append(str(err))
            left[0] -= 1
            if left[0] == 0:
                loop.call_soon_threadsafe(_settle, done)

        deadline = time.monotonic() + timeout_s
        for record in records:
            while True:
                try:
                    producer.produce(topic, record.value, record.key, on_delivery=delivered)
                    break
                except BufferError:  # librdkafka's queue is full: let deliveries drain it
                    if time.monotonic() > deadline:
                        raise HttpError(
                            503, "unavailable", "Kafka does not take events; retry later"
                        ) from None
                    await asyncio.sleep(0.005)
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await done
        except TimeoutError:
            raise HttpError(
                503,
                "unavailable",
                f"Kafka did not acknowledge {left[0]} of {len(records)} event(s) within "
                f"{timeout_s:g} s; some may have been produced (a retry may duplicate them)",
            ) from None
        if errors:
            raise HttpError(
                503,
                "unavailable",
                f"Kafka refused {len(errors)} of {len(records)} event(s): {errors[0]}; "
                "the others were produced (a retry may duplicate them)",
            )

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout_s)
        if producer is not None:
            producer.flush(timeout_s)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class Ingestor:
    """What ``POST /v1/ingest/{view}`` does, given the views and a producer factory.

    ``make_producer`` builds the Kafka producer on first use (``create_app`` passes
    :func:`freshet.stream.kafka_clients.producer` with ``enable.idempotence=true``); tests may
    pass another. ``timeout_s`` bounds the wait for Kafka's acknowledgements; ``topics``
    overrides views' source topics (as ``freshet run --topic`` does).
    """

    def __init__(
        self,
        views: Mapping[str, FeatureView],
        *,
        make_producer: Callable[[], Any],
        timeout_s: float = 10.0,
        topics: Mapping[str, str] | None = None,
    ) -> None:
        self._codecs: dict[str, ViewCodec] = {}
        self._topics = dict(topics or {})
        self._views = dict(views)
        self._producer = _Producer(make_producer)
        self._timeout_s = timeout_s

    def knows(self, view: str) -> bool:
        return view in self._views

    def codec(self, view: str) -> ViewCodec:
        codec = self._codecs.get(view)
        if codec is None:
            codec = ViewCodec(self._views[view], topic=self._topics.get(view))
            self._codecs[view] = codec
        return codec

    async def ingest(
        self, view: str, body: bytes, reader: Any, *, started: float
    ) -> tuple[int, dict[str, Any]]:
        """``(status, answer)`` for a request body; ``reader`` reads the served records."""
        events, wait_ms = _request(body)
        codec = self.codec(view)
        prepared = codec.prepare(events)
        await self._producer.send(codec.topic, prepared, self._timeout_s)
        wanted: dict[str, int] = {}
        for record in prepared:
            if record.event_time_ms > wanted.get(record.entity, 0):
                wanted[record.entity] = record.event_time_ms
        pending: dict[str, int | None] = dict.fromkeys(wanted)
        if wait_ms:
            deadline = started + wait_ms / 1000
            pending = await _wait_served(reader, view, wanted, deadline)
        waited_ms = round((time.perf_counter() - started) * 1000)
        answer = {
            "view": view,
            "produced": len(prepared),
            "served": not pending,
            "pending_count": len(pending),
            "pending": [
                {"entity": e, "event_time": wanted[e], "as_of": as_of}
                for e, as_of in list(pending.items())[:_SHOWN_PENDING]
            ],
            "waited_ms": waited_ms,
        }
        return (200 if wait_ms and not pending else 202), answer

    def close(self) -> None:
        self._producer.close()


def _request(body: bytes) -> tuple[list[Any], int]:
    request = json_object(body, ("events", "wait_ms"))
    events = request.get("events")
    if not isinstance(events, list) or not events:
        raise HttpError(422, "invalid_request", '"events" must be a non-empty list of objects')
    if len(events) > MAX_EVENTS:
        raise HttpError(
            413, "too_large", f"{len(events)} events in one request; the maximum is {MAX_EVENTS}"
        )
    wait_ms = request.get("wait_ms", 0)
    if wait_ms.__class__ is not int or not 0 <= wait_ms <= MAX_WAIT_MS:
        raise HttpError(
            422,
            "invalid_request",
            f'"wait_ms" must be an integer from 0 to {MAX_WAIT_MS}, got {wait_ms!r}'[:200],
        )
    return events, wait_ms


async def _wait_served(
    reader: Any, view: str, wanted: Mapping[str, int], deadline: float
) -> dict[str, int | None]:
    """Read the entities' records until each one's as_of reaches its wanted event time, or the
    deadline (``time.perf_counter``) passes; the entities still short, with their as_of."""
    pending: dict[str, int | None] = dict.fromkeys(wanted)
    feature = reader.layout(view).feature_names[:1] or None
    delay = _POLL_FIRST_S
    while True:
        entities = list(pending)
        lookups = await reader.get_many(view, entities, feature)
        for entity, lookup in zip(entities, lookups, strict=True):
            as_of = lookup["as_of"]
            if as_of is not None and as_of >= wanted[entity]:
                del pending[entity]
            else:
                pending[entity] = as_of
        left = deadline - time.perf_counter()
        if not pending or left <= 0:
            return pending
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 1.5, _POLL_MAX_S)
