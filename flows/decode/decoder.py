"""Decoding: a batch of Kafka messages of a view's source -> engine events and dead letters.

Input: a batch of consumed records, either all ``confluent_kafka.Message`` as the consumer
returns them (what the flow's Kafka source emits: fields are *methods*, ``m.value()``), or all
records whose fields are *attributes* (Bytewax's ``KafkaSourceMessage``,
:class:`~freshet.decode.messages.RawMessage`; tests and callers without a consumer). The hot
loop reads consumer messages as they are; attribute-style records go through the adapter of
:mod:`freshet.decode.messages` (slower; not the flow's path).

Output: :class:`Decoded` ``(events, dead)``. An event is the plain tuple
:data:`freshet.sinks.events.Event`

    ``(entity: str, event_time_ms: int, fields: tuple, partition, offset, kafka_timestamp_ms)``

with ``fields`` in the order of ``view.input_fields`` (``kafka_timestamp_ms`` is ``-1`` when
the record has none). A record that cannot be used becomes a
:class:`~freshet.decode.messages.DeadLetter` whose error names the field and the problem.

Accepted values
  * **Entity**: a non-empty string (or an Avro ``int``/``long``, or in JSON an integer,
    turned into its decimal text).
  * **Event time**: integer epoch milliseconds — an Avro ``long`` or ``timestamp-millis``
    (decoded as a plain int: the schema is parsed with time logical types stripped, which
    also skips building ``datetime`` objects); in JSON an integer, or an ISO-8601 string
    with a UTC offset (``2024-05-01T12:00:00.250Z``). It must lie in
    [1973-03-03, 2100-01-01): a smaller number is almost always epoch *seconds*.
  * **Other input fields** in JSON are checked against the view's Avro schema when it has one:
    ``int``/``long`` need an integer, ``float``/``double`` a number (integers become floats),
    ``string`` a string, ``boolean`` a boolean; ``null`` only where the schema allows it; a
    missing field takes its schema default, else ``None`` if nullable, else is an error.
    Avro records are typed by construction; a record must also use exactly its bytes
    (trailing bytes mean it was written with another schema).

Wire formats (Avro): ``schemaless`` (fastavro ``schemaless_writer`` bytes) or ``confluent``
(magic byte 0 + 4-byte big-endian schema id + the schemaless bytes). In the Confluent format
with a ``registry`` (:class:`freshet.decode.schema_registry.SchemaRegistry`,
``FRESHET_SCHEMA_REGISTRY_URL``) each record is read with the schema its id names, resolved against
the view's schema (fastavro schema resolution: fields the view does not read are skipped, missing
ones take the view's defaults); an id the registry does not know, or a schema that does not resolve,
dead-letters the record. Ids whose schema is the view's own use the generated reader. Without a
registry records are read with the view's schema, and when ``schema_ids`` is given a record with
another id is refused.

Hot path: one ``schemaless_reader``/``orjson.loads`` per record, then a few type checks; all
error texts are built on a separate slow path only for bad records.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import orjson
from confluent_kafka import Message
from fastavro import parse_schema, schemaless_reader

from freshet.decode.avro_reader import Reader, compile_reader, fast_plan
from freshet.decode.messages import (
    ConsumerMessage,
    DeadLetter,
    Reason,
    SourceMessage,
    as_consumer_messages,
)
from freshet.decode.schema_registry import SchemaRegistry, SchemaRegistryUnavailable
from freshet.sinks.events import Event
from freshet.sinks.layout import ENTITY_FORBIDDEN_CHARS, MAX_ENTITY_LENGTH, encode_entity

if TYPE_CHECKING:
    from freshet.dsl.definitions import FeatureView

_forbidden_char = ENTITY_FORBIDDEN_CHARS.search

# The per-record loop in C (flows/decode/_fastdecode.c), built by `pip install` where it can be.
try:
    from freshet.decode import _fastdecode
except ImportError:  # pragma: no cover - no C compiler at install time: the Python loop
    _fastdecode = None  # type: ignore[assignment]

__all__ = [
    "EVENT_TIME_MAX_MS",
    "EVENT_TIME_MIN_MS",
    "AvroDecoder",
    "DecodeConfigError",
    "Decoded",
    "Decoder",
    "JsonDecoder",
    "SourceMessage",
    "WireFormat",
    "decoder_for",
    "load_schema",
    "shard_groups",
    "strip_time_logical_types",
]

WireFormat = Literal["schemaless", "confluent"]

EVENT_TIME_MIN_MS = 100_000_000_000  # 1973-03-03T09:46:40Z; below it is most likely seconds
EVENT_TIME_MAX_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_TIME_LOGICAL_TYPES = frozenset(
    {
        "timestamp-millis",
        "timestamp-micros",
        "local-timestamp-millis",
        "local-timestamp-micros",
        "time-millis",
        "time-micros",
        "date",
    }
)
_NO_DEFAULT = object()


class DecodeConfigError(ValueError):
    """A view's source cannot be decoded as configured (bad schema or field names)."""


class Decoded(NamedTuple):
    events: list[Event]
    dead: list[DeadLetter]


class Decoder(Protocol):
    def decode(self, messages: Sequence[SourceMessage] | Sequence[Message]) -> Decoded: ...


# Field kinds a JSON value is checked against (derived from the Avro type).
_Kind = Literal["int", "float", "str", "bool", "any"]
_KIND_OF_AVRO = {
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "string": "str",
    "enum": "str",
    "boolean": "bool",
}


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    kind: _Kind
    nullable: bool
    default: Any  # _NO_DEFAULT when the schema has none
    time_logical_type: str | None
    missing_ok: bool  # a missing field reads as None (nullable in a known schema)


class _Invalid(Exception):
    """A record refused on the slow path; carries the dead-letter reason and text."""

    def __init__(self, reason: Reason, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


def load_schema(path: Path | str) -> dict[str, Any]:
    """Read an ``.avsc`` file, naming the file in the error if it is not a record schema."""
    try:
        schema = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DecodeConfigError(f"cannot read Avro schema {str(path)!r}: {exc}") from exc
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise DecodeConfigError(f"Avro schema {str(path)!r} must be a record schema")
    return schema


def _field_specs(schema: Mapping[str, Any]) -> dict[str, _FieldSpec]:
    specs: dict[str, _FieldSpec] = {}
    for field in schema.get("fields", ()):
        avro_type = field["type"]
        nullable = False
        if isinstance(avro_type, list):
            branches = [t for t in avro_type if t != "null"]
            nullable = len(branches) < len(avro_type)
            avro_type = branches[0] if len(branches) == 1 else "union"
        logical = None
        if isinstance(avro_type, dict):
            logical = avro_type.get("logicalType")
            avro_type = avro_type["type"]
        kind = _KIND_OF_AVRO.get(avro_type, "any") if isinstance(avro_type, str) else "any"
        specs[field["name"]] = _FieldSpec(
            name=field["name"],
            kind=kind,  # type: ignore[arg-type]
            nullable=nullable,
            default=field.get("default", _NO_DEFAULT),
            time_logical_type=logical if logical in _TIME_LOGICAL_TYPES else None,
            missing_ok=nullable,
        )
    return specs


def strip_time_logical_types(node: Any) -> Any:
    """The schema with time logical types removed, so they decode as their plain ints."""
    if isinstance(node, list):
        return [strip_time_logical_types(n) for n in node]
    if isinstance(node, dict):
        if node.get("logicalType") in _TIME_LOGICAL_TYPES:
            return node["type"]
        return {k: strip_time_logical_types(v) for k, v in node.items()}
    return node


def _check_fields(
    specs: Mapping[str, _FieldSpec] | None,
    *,
    entity_field: str,
    time_field: str,
    input_fields: Sequence[str],
) -> None:
    if specs is None:
        return
    known = ", ".join(specs)
    for role, name in [("entity", entity_field), ("event time", time_field)] + [
        ("input", f) for f in input_fields
    ]:
        if name not in specs:
            raise DecodeConfigError(
                f"{role} field {name!r} is not in the Avro schema; its fields: {known}"
            )
    if specs[entity_field].kind not in ("str", "int"):
        raise DecodeConfigError(
            f"entity field {entity_field!r} must be a string or int/long in the schema"
        )
    time_spec = specs[time_field]
    if time_spec.kind != "int" or time_spec.time_logical_type not in (None, "timestamp-millis"):
        raise DecodeConfigError(
            f"event time field {time_field!r} must be a long or timestamp-millis in the schema"
        )


def _fastavro_reader(schema: Any, wanted: Sequence[str], *, reader_schema: Any = None) -> Reader:
    """fastavro's ``schemaless_reader`` in the shape of a generated reader
    (:func:`freshet.decode.avro_reader.compile_reader`): ``wanted`` fields and the end offset.
    ``schema`` is the writer's; with ``reader_schema`` records are resolved against it."""
    get = _getter(wanted)

    def read(value: bytes, start: int) -> tuple[tuple[Any, ...], int]:
        buf = BytesIO(value)
        if start:
            buf.seek(start)
        return get(schemaless_reader(buf, schema, reader_schema)), buf.tell()

    return read


def _canonical(schema: Mapping[str, Any]) -> str:
    """A comparable text of a schema: its JSON without docs, keys sorted."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in sorted(node.items()) if k not in ("doc", "aliases")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(schema), sort_keys=True)


def _getter(fields: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """Extract ``fields`` from a dict as a tuple with one C call."""
    if not fields:
        return lambda _record: ()
    if len(fields) == 1:
        only = fields[0]
        return lambda record: (record[only],)
    return itemgetter(*fields)


def _kafka_ts(message: ConsumerMessage) -> int:
    ts = message.timestamp()
    return ts[1] if ts is not None and ts[0] else -1


def _dead(message: ConsumerMessage, view: str, reason: Reason, error: str) -> DeadLetter:
    return DeadLetter(
        reason=reason,
        error=error,
        view=view,
        key=message.key(),
        value=message.value(),
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        headers=list(headers) if (headers := message.headers()) else None,
    )


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _entity_or_invalid(value: Any, field: str) -> str:
    if value.__class__ is str:
        if len(value) > MAX_ENTITY_LENGTH:
            raise _Invalid(
                "invalid_value",
                f"entity field {field!r} is {len(value)} characters long; "
                f"the maximum is {MAX_ENTITY_LENGTH}",
            )
        if not value:
            raise _Invalid("invalid_value", f"entity field {field!r} is an empty string")
        if _forbidden_char(value):
            raise _Invalid(
                "invalid_value",
                f"entity field {field!r} holds control characters: {value!r}"[:300],
            )
        return str(value)
    if value.__class__ is int:
        return str(value)
    if value is None:
        raise _Invalid("missing_field", f"entity field {field!r} is null")
    raise _Invalid(
        "wrong_type", f"entity field {field!r} must be a non-empty string, got {_describe(value)}"
    )


def _time_or_invalid(value: Any, field: str) -> int:
    if value.__class__ is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _Invalid(
                "invalid_value",
                f"event time field {field!r} is not an ISO-8601 time: {value[:60]!r}",
            ) from None
        if parsed.tzinfo is None:
            raise _Invalid(
                "invalid_value",
                f"event time field {field!r} has no UTC offset: {value[:60]!r} "
                "(add 'Z' or '+00:00', or send epoch milliseconds)",
            )
        value = (parsed - _EPOCH) // _MS
    elif value.__class__ is not int:
        if value is None:
            raise _Invalid("missing_field", f"event time field {field!r} is null")
        raise _Invalid(
            "wrong_type",
            f"event time field {field!r} must be integer epoch milliseconds, "
            f"got {_describe(value)}",
        )
    if not EVENT_TIME_MIN_MS <= value < EVENT_TIME_MAX_MS:
        hint = " (epoch seconds? send milliseconds)" if 0 < value < EVENT_TIME_MIN_MS else ""
        raise _Invalid(
            "invalid_value",
            f"event time field {field!r} = {value} is outside "
            f"[{EVENT_TIME_MIN_MS}, {EVENT_TIME_MAX_MS}) epoch ms{hint}",
        )
    return int(value)


def _shard_groups_py(events: Sequence[Event], shards: int) -> dict[int, list[Event]]:
    groups: dict[int, list[Event]] = {}
    crc32 = zlib.crc32
    for event in events:
        shard = crc32(event[0].encode("utf-8", "surrogateescape")) % shards
        group = groups.get(shard)
        if group is None:
            groups[shard] = [event]
        else:
            group.append(event)
    return groups


# ``shard_groups(events, shards)``: ``{crc32(entity) % shards: [its events, in order]}``, the
# grouping of ``freshet.stream.pipeline.shard_of``; in C where freshet.decode._fastdecode is built
# (tests/unit/test_fastdecode.py checks both agree).
shard_groups: Callable[[Sequence[Event], int], dict[int, list[Event]]] = (
    _fastdecode.shard_groups if _fastdecode is not None else _shard_groups_py
)


class AvroDecoder:
    """Decodes Avro records (schemaless or Confluent wire format) with the view's schema.

    Flat records of primitive fields are read by a reader generated for the schema
    (:mod:`freshet.decode.avro_reader`, ~2x fastavro's ``schemaless_reader``); other schemas, or
    ``generated_reader=False``, use fastavro. Such records are first tried by the C loop of
    ``freshet.decode._fastdecode`` (``c_loop``), which hands every record it does not read
    cleanly to the Python path (with a registry: every record of a schema id not yet resolved
    to the view's own schema).
    """

    def __init__(
        self,
        schema: Mapping[str, Any],
        *,
        view: str,
        entity_field: str,
        time_field: str,
        input_fields: Sequence[str],
        wire_format: WireFormat = "schemaless",
        schema_ids: frozenset[int] | None = None,
        generated_reader: bool = True,
        registry: SchemaRegistry | None = None,
        c_loop: bool = True,
    ) -> None:
        if wire_format not in ("schemaless", "confluent"):
            raise DecodeConfigError(
                f"unknown Avro wire format {wire_format!r}; use 'schemaless' or 'confluent'"
            )
        if registry is not None and wire_format != "confluent":
            raise DecodeConfigError("a schema registry needs the 'confluent' wire format")
        specs = _field_specs(schema)
        _check_fields(
            specs, entity_field=entity_field, time_field=time_field, input_fields=input_fields
        )
        stripped = strip_time_logical_types(dict(schema))
        try:
            self._schema = parse_schema(stripped)
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise DecodeConfigError(f"invalid Avro schema for view {view!r}: {exc}") from exc
        self._view = view
        self._entity_field = entity_field
        self._time_field = time_field
        wanted = (entity_field, time_field, *input_fields)
        compiled = compile_reader(stripped, wanted) if generated_reader else None
        self._read = compiled or _fastavro_reader(self._schema, wanted)
        self._skip = 5 if wire_format == "confluent" else 0
        self._schema_ids = schema_ids
        self._registry = registry
        self._wanted = wanted
        # The C loop reads what the generated reader reads. With a registry it takes the
        # records of ids already resolved to the view's own schema (``_own_ids``); the Python
        # path resolves the others (and adds the view's own ones).
        plan = fast_plan(stripped, wanted) if compiled else None
        self._fast = plan if c_loop and _fastdecode is not None else None
        # With a registry: schema id -> its reader (the view's own reader when the registered
        # schema is the view's), or the reason its records are refused.
        self._readers: dict[int, Reader | str] = {}
        self._own_schema = _canonical(stripped)
        self._own_ids: set[int] = set()

    def decode(self, messages: Sequence[SourceMessage] | Sequence[Message]) -> Decoded:
        """Decode a batch; never raises for bad records (they become dead letters).

        With the C loop (``freshet.decode._fastdecode``), records it reads cleanly become events
        there and every other record goes through :meth:`_decode_one`, in order; without it,
        every record does."""
        dead: list[DeadLetter] = []
        decode_one = self._decode_one
        consumer_messages = as_consumer_messages(messages)
        if self._fast is not None:
            plan, slots = self._fast
            ids = self._schema_ids if self._registry is None else frozenset(self._own_ids)
            events = _fastdecode.decode_avro(
                consumer_messages,
                plan,
                slots,
                self._skip,
                ids,
                lambda m: decode_one(m, dead),
                MAX_ENTITY_LENGTH,
            )
            return Decoded(events, dead)
        events = []
        add = events.append
        for m in consumer_messages:
            event = decode_one(m, dead)
            if event is not None:
                add(event)
        return Decoded(events, dead)

    def _decode_one(self, m: ConsumerMessage, dead: list[DeadLetter]) -> Event | None:
        """One record's event, or None after adding its dead letter to ``dead``."""
        value = m.value()
        read = self._read
        skip = self._skip
        try:
            if skip:
                self._check_header(value)
                if self._registry is not None and value is not None:
                    read = self._reader_of(int.from_bytes(value[1:5], "big"))
            # (entity, event time, *input fields), offset after the record
            values, end = read(value, skip)  # type: ignore[arg-type]  # None is refused
        except SchemaRegistryUnavailable:
            raise  # not the record's fault: stop the flow, a restart resumes
        except _Invalid as exc:
            dead.append(_dead(m, self._view, exc.reason, exc.error))
            return None
        except Exception as exc:  # EOFError, ValueError, IndexError, UnicodeDecodeError, ...
            dead.append(_dead(m, self._view, "undecodable", self._undecodable(value, exc)))
            return None
        entity = values[0]
        event_time = values[1]
        if (
            entity.__class__ is str
            and 0 < len(entity) <= MAX_ENTITY_LENGTH
            and not _forbidden_char(entity)
            and event_time.__class__ is int
            and EVENT_TIME_MIN_MS <= event_time < EVENT_TIME_MAX_MS
            and end == len(value)  # type: ignore[arg-type]
        ):
            ts = m.timestamp()
            return (
                entity,
                event_time,
                values[2:],
                m.partition(),
                m.offset(),
                ts[1] if ts is not None and ts[0] else -1,
            )
        try:
            if end != len(value):  # type: ignore[arg-type]
                raise _Invalid(
                    "undecodable",
                    f"Avro record used {end} of {len(value)} bytes "  # type: ignore[arg-type]
                    "(written with another schema?)",
                )
            return (
                _entity_or_invalid(entity, self._entity_field),
                _time_or_invalid(event_time, self._time_field),
                values[2:],
                m.partition(),
                m.offset(),
                _kafka_ts(m),
            )
        except _Invalid as exc:
            dead.append(_dead(m, self._view, exc.reason, exc.error))
            return None

    def _reader_of(self, schema_id: int) -> Reader:
        """The reader of records written with ``schema_id`` (fetched and resolved once)."""
        reader = self._readers.get(schema_id)
        if reader is None:
            reader = self._readers[schema_id] = self._resolve(schema_id)
        if isinstance(reader, str):
            raise _Invalid("undecodable", reader)
        return reader

    def _resolve(self, schema_id: int) -> Reader | str:
        assert self._registry is not None
        writer = self._registry.schema(schema_id)
        if writer is None:
            return f"schema id {schema_id} is not in the schema registry at {self._registry.url}"
        stripped = strip_time_logical_types(dict(writer))
        if _canonical(stripped) == self._own_schema:
            self._own_ids.add(schema_id)
            return self._read
        try:
            parsed = parse_schema(stripped)
        except Exception as exc:  # fastavro raises several types for bad schemas
            return f"schema id {schema_id} is not a valid Avro schema: {exc}"[:300]
        return _fastavro_reader(parsed, self._wanted, reader_schema=self._schema)

    def _check_header(self, value: bytes | None) -> None:
        if value is None:
            return  # refused as undecodable by the caller
        if len(value) < 5 or value[0] != 0:
            first = f"0x{value[0]:02x}" if value else "nothing"
            raise _Invalid(
                "undecodable",
                f"not Confluent wire format: starts with {first}, expected magic byte 0x00 "
                "and a 4-byte schema id",
            )
        if self._schema_ids is not None:
            schema_id = int.from_bytes(value[1:5], "big")
            if schema_id not in self._schema_ids:
                raise _Invalid(
                    "undecodable",
                    f"schema id {schema_id} is not one of {sorted(self._schema_ids)} "
                    f"known for view {self._view!r}",
                )

    def _undecodable(self, value: bytes | None, exc: Exception) -> str:
        if value is None:
            return "record has no value (tombstone)"
        error = f"{type(exc).__name__}: {exc}"[:200]
        return f"not Avro of view {self._view!r}'s schema ({len(value)} bytes): {error}"


class JsonDecoder:
    """Decodes JSON objects (orjson), checked against the view's Avro schema if it has one."""

    def __init__(
        self,
        *,
        view: str,
        entity_field: str,
        time_field: str,
        input_fields: Sequence[str],
        schema: Mapping[str, Any] | None = None,
    ) -> None:
        specs = _field_specs(schema) if schema is not None else None
        _check_fields(
            specs, entity_field=entity_field, time_field=time_field, input_fields=input_fields
        )
        self._view = view
        self._entity_field = entity_field
        self._time_field = time_field
        self._input_fields = tuple(input_fields)
        self._specs = tuple(
            specs[f]
            if specs is not None
            else _FieldSpec(f, "any", True, _NO_DEFAULT, None, missing_ok=False)
            for f in input_fields
        )
        # Fast-path type per field: the exact class a well-formed value has (None: any).
        fast: dict[_Kind, type | None] = {
            "int": int,
            "float": float,
            "str": str,
            "bool": bool,
            "any": None,
        }
        self._fast_types = tuple(fast[s.kind] for s in self._specs)
        self._all_any = all(t is None for t in self._fast_types)
        # With every field's type known, one C-level compare checks them all.
        self._exact_types = None if None in self._fast_types else self._fast_types
        self._fields = _getter(self._input_fields)

    def decode(self, messages: Sequence[SourceMessage] | Sequence[Message]) -> Decoded:
        """Decode a batch; never raises for bad records (they become dead letters)."""
        events: list[Event] = []
        dead: list[DeadLetter] = []
        add = events.append
        loads = orjson.loads
        entity_field = self._entity_field
        time_field = self._time_field
        fields = self._fields
        fast_types = self._fast_types
        exact_types = self._exact_types
        all_any = self._all_any
        for m in as_consumer_messages(messages):
            try:
                record = loads(m.value())  # type: ignore[arg-type]  # None is refused below
            except Exception as exc:  # orjson.JSONDecodeError, TypeError for None
                dead.append(_dead(m, self._view, "undecodable", self._undecodable(m.value(), exc)))
                continue
            if record.__class__ is dict:
                entity = record.get(entity_field)
                event_time = record.get(time_field)
                if (
                    entity.__class__ is str
                    and 0 < len(entity) <= MAX_ENTITY_LENGTH
                    and not _forbidden_char(entity)
                    and event_time.__class__ is int
                    and EVENT_TIME_MIN_MS <= event_time < EVENT_TIME_MAX_MS
                ):
                    try:
                        values = fields(record)
                    except KeyError:
                        pass  # a missing field: the slow path applies defaults or refuses
                    else:
                        if (
                            tuple(map(type, values)) == exact_types
                            if exact_types is not None
                            else all_any
                            or all(
                                t is None or v.__class__ is t
                                for v, t in zip(values, fast_types, strict=True)
                            )
                        ):
                            ts = m.timestamp()
                            add(
                                (
                                    entity,
                                    event_time,
                                    values,
                                    m.partition(),
                                    m.offset(),
                                    ts[1] if ts is not None and ts[0] else -1,
                                )
                            )
                            continue
            try:
                add(self._slow(m, record))
            except _Invalid as exc:
                dead.append(_dead(m, self._view, exc.reason, exc.error))
        return Decoded(events, dead)

    def _slow(self, m: ConsumerMessage, record: Any) -> Event:
        """Full validation with error texts, or coercion (int -> float, defaults)."""
        if not isinstance(record, dict):
            raise _Invalid(
                "wrong_type", f"JSON value must be an object, got {type(record).__name__}"
            )
        entity = _entity_or_invalid(record.get(self._entity_field), self._entity_field)
        event_time = _time_or_invalid(record.get(self._time_field), self._time_field)
        values = tuple(_coerce(record, spec) for spec in self._specs)
        return (entity, event_time, values, m.partition(), m.offset(), _kafka_ts(m))

    @staticmethod
    def _undecodable(value: bytes | None, exc: Exception) -> str:
        if value is None:
            return "record has no value (tombstone)"
        return f"not JSON ({len(value)} bytes): {exc}"[:200]


def _coerce(record: Mapping[str, Any], spec: _FieldSpec) -> Any:
    name = spec.name
    if name not in record:
        if spec.default is not _NO_DEFAULT:
            return spec.default
        if spec.missing_ok:
            return None
        raise _Invalid("missing_field", f"field {name!r} is missing")
    value = record[name]
    if value is None:
        if spec.nullable:
            return None
        raise _Invalid("missing_field", f"field {name!r} is null but the schema does not allow it")
    kind = spec.kind
    cls = value.__class__
    if kind == "any":
        return value
    if kind == "float":
        if cls is float:
            return value
        if cls is int:
            return float(value)
        raise _Invalid("wrong_type", f"field {name!r} must be a number, got {_describe(value)}")
    if kind == "int":
        if cls is int:
            return value
        raise _Invalid("wrong_type", f"field {name!r} must be an integer, got {_describe(value)}")
    if kind == "str":
        if cls is str:
            return value
        raise _Invalid("wrong_type", f"field {name!r} must be a string, got {_describe(value)}")
    if cls is bool:
        return value
    raise _Invalid("wrong_type", f"field {name!r} must be a boolean, got {_describe(value)}")


class CompositeKeyDecoder:
    """A view keyed by several fields: the inner decoder reads the first key field as the entity
    and the others ahead of the input fields; this one joins them into the stored entity id
    (:func:`freshet.sinks.layout.encode_entity`) and dead-letters records whose key values are
    not usable ids (empty, control characters, too long once joined)."""

    def __init__(self, inner: Decoder, *, view: str, keys: Sequence[str]) -> None:
        self._inner = inner
        self._view = view
        self._keys = tuple(keys)

    def decode(self, messages: Sequence[SourceMessage] | Sequence[Message]) -> Decoded:
        events, dead = self._inner.decode(messages)
        n = len(self._keys) - 1
        out: list[Event] = []
        bad: list[tuple[int, int, str]] = []
        for entity, t, fields, partition, offset, ts in events:
            parts = (entity, *[v if v.__class__ is str else str(v) for v in fields[:n]])
            problem = _key_problem(parts, self._keys)
            if problem is None:
                encoded = encode_entity(parts)
                if len(encoded) <= MAX_ENTITY_LENGTH:
                    out.append((encoded, t, fields[n:], partition, offset, ts))
                    continue
                problem = (
                    f"entity key {self._keys!r} is {len(encoded)} characters long once joined; "
                    f"the maximum is {MAX_ENTITY_LENGTH}"
                )
            bad.append((partition, offset, problem))
        if bad:
            by_position = {(m.partition(), m.offset()): m for m in as_consumer_messages(messages)}
            for partition, offset, problem in bad:
                dead.append(
                    _dead(by_position[partition, offset], self._view, "invalid_value", problem)
                )
        return Decoded(out, dead)


def _key_problem(parts: Sequence[str], keys: Sequence[str]) -> str | None:
    for name, value in zip(keys, parts, strict=True):
        if not value:
            return f"entity key field {name!r} is an empty string"
        if _forbidden_char(value):
            return f"entity key field {name!r} holds control characters: {value!r}"[:300]
    return None


def decoder_for(
    view: FeatureView,
    *,
    wire_format: WireFormat = "schemaless",
    schema_ids: frozenset[int] | None = None,
    registry: SchemaRegistry | None = None,
) -> Decoder:
    """The decoder for ``view``'s source (``wire_format`` and ``registry`` apply to Avro
    sources only; a registry implies the Confluent wire format)."""
    keys = view.entity.keys
    decoder = _decoder_for(
        view, keys, wire_format=wire_format, schema_ids=schema_ids, registry=registry
    )
    if len(keys) == 1:
        return decoder
    return CompositeKeyDecoder(decoder, view=view.name, keys=keys)


def _decoder_for(
    view: FeatureView,
    keys: tuple[str, ...],
    *,
    wire_format: WireFormat,
    schema_ids: frozenset[int] | None,
    registry: SchemaRegistry | None,
) -> AvroDecoder | JsonDecoder:
    source = view.source
    schema = load_schema(source.schema_path) if source.schema_path is not None else None
    common: dict[str, Any] = {
        "view": view.name,
        "entity_field": keys[0],
        "time_field": source.event_time_field,
        "input_fields": (*keys[1:], *view.input_fields),
    }
    if source.encoding == "avro":
        if schema is None:
            raise DecodeConfigError(f"view {view.name!r} reads Avro but names no schema file")
        if registry is not None:
            wire_format = "confluent"
        return AvroDecoder(
            schema, wire_format=wire_format, schema_ids=schema_ids, registry=registry, **common
        )
    if source.encoding == "json":
        return JsonDecoder(schema=schema, **common)
    raise DecodeConfigError(
        f"view {view.name!r} has source encoding {source.encoding!r}; use 'avro' or 'json'"
    )
