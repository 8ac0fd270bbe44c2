"""The feature-definition DSL: entities, sources, features and feature views.

Everything here is a frozen dataclass validated when it is constructed, so a mistake in a view
fails at import time with a message naming the bad field and the allowed values, never later in a
running dataflow. A :class:`FeatureView` is the unit of deployment, of the Redis key space and of
the offline log; the engine (:mod:`freshet.engine.view_engine`) turns its definition into rows
exactly as the window semantics in README, "Defining features", specify.

A view reads like this (the shipped demo views are in :mod:`freshet.dsl.views`)::

    FeatureView(
        name="card_txn",
        version=1,
        entity=Entity(name="card", key="card_id"),
        source=Source(topic="transactions", encoding="avro", schema="transaction.avsc",
                      event_time_field="ts"),
        features=(
            Feature("txn_count_5m", Aggregation.COUNT, window="5m"),
            Feature("amount_max_24h", Aggregation.MAX, "amount", window="24h"),
            Feature("merchant_last", Aggregation.LAST, "merchant"),  # lifetime
        ),
        allowed_lateness_seconds=5,
        ttl_seconds=7 * 86_400,
    )

Windows and hops (DESIGN "Tiles"): a windowed feature aggregates, as of time ``T``, the events
with event time in ``[floor_h(T - W), T]``, where ``h`` is the hop (tile size) and ``W`` a
multiple of ``h``. Without an explicit ``hop`` the default is the largest of 1 s, 10 s, 1 min,
15 min, 1 h that splits ``W`` into at least 30 tiles (1 s if none does), which gives the
documented defaults: 5 min -> 10 s, 1 h -> 1 min, 1 d (24 h) -> 15 min. ``window=None`` means
lifetime (no tiles, never expires); ``last`` is always lifetime.

Error tree: :class:`DefinitionError` (a ``ValueError``) for every invalid definition.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import re
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, cast

from freshet.dsl.expressions import (
    Expression,
    ExpressionError,
    ExprType,
    NameType,
    compile_expression,
)
from freshet.sinks.layout import (
    KEY_SEPARATOR,
    MAX_KEY_FIELDS,
    FeatureColumn,
    ValueType,
    ViewLayout,
)

__all__ = [
    "DEFAULT_HOP_CANDIDATES_SECONDS",
    "SCHEMAS_DIR",
    "Aggregation",
    "DefinitionError",
    "Entity",
    "Feature",
    "FeatureView",
    "Source",
    "default_hop_seconds",
    "parse_duration",
]

# The shipped Avro schemas of the demo topics (package data of ``freshet.schemas``).
SCHEMAS_DIR = Path(str(importlib.resources.files("freshet.schemas")))

# Candidate default hops, largest first: the default is the first that divides W into >= 30 tiles.
DEFAULT_HOP_CANDIDATES_SECONDS: tuple[int, ...] = (3600, 900, 60, 10, 1)
_MIN_DEFAULT_TILES = 30

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_DURATION_RE = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}

Encoding = Literal["avro", "json"]
_ENCODINGS: tuple[str, ...] = ("avro", "json")


class DefinitionError(ValueError):
    """A feature definition is invalid; the message names the bad field and what is allowed."""


class Aggregation(StrEnum):
    """The aggregations a feature can compute (DESIGN "Feature definitions")."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    DISTINCT_COUNT = "distinct_count"  # exact for small sets, then a DataSketches HLL
    APPROX_PERCENTILE = "approx_percentile"  # deterministic sketch; needs ``quantile``
    VARIANCE = "variance"  # population (divided by n), exact
    STDDEV = "stddev"  # the square root of the population variance
    FIRST = "first"  # the value of the earliest event (by event time, then offset)
    LAST_K = "last_k"  # the k latest values, newest first; needs ``k``
    TOP_K = "top_k"  # the k most frequent values as [value, count]; needs ``k``


_NUMERIC_AGGS = frozenset(
    {
        Aggregation.SUM,
        Aggregation.MEAN,
        Aggregation.MIN,
        Aggregation.MAX,
        Aggregation.APPROX_PERCENTILE,
        Aggregation.VARIANCE,
        Aggregation.STDDEV,
    }
)
# Aggregations that take ``k`` (1..MAX_K).
_K_AGGS = frozenset({Aggregation.LAST_K, Aggregation.TOP_K})
MAX_K = 100


def parse_duration(value: str | int, *, what: str) -> int:
    """Seconds in ``value``: an int of seconds or a string like ``"30s"``, ``"5m"``, ``"1d"``."""
    if isinstance(value, bool):
        raise DefinitionError(
            f"{what}={value!r} is not a duration; use e.g. '5m', '1h', '1d' or seconds"
        )
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION_RE.match(value.strip())):
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise DefinitionError(
            f"{what}={value!r} is not a duration; use an int of seconds or a string like "
            "'30s', '5m', '1h', '1d'"
        )
    if seconds <= 0:
        raise DefinitionError(f"{what}={value!r} must be a positive duration")
    return seconds


def default_hop_seconds(window_seconds: int) -> int:
    """The default hop (tile size) of a window; see the module docstring for the rule."""
    for hop in DEFAULT_HOP_CANDIDATES_SECONDS:
        if window_seconds % hop == 0 and window_seconds // hop >= _MIN_DEFAULT_TILES:
            return hop
    return 1


def _check_name(value: object, *, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise DefinitionError(
            f"{what}={value!r} is not a valid name; use lowercase letters, digits and '_', "
            "starting with a letter (at most 63 characters)"
        )
    return value


@dataclass(frozen=True, slots=True)
class Entity:
    """What a view is keyed by: ``key`` names the event field holding the entity id, or a tuple
    of 1 to 4 fields for a composite key (``key=("card_id", "merchant")``: one entity per card
    and merchant). A composite key is stored as one string, the fields' values joined as
    :func:`freshet.sinks.layout.encode_entity` documents (``c1|m2``)."""

    name: str
    key: str | tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.name, what="Entity.name")
        key = self.key
        if isinstance(key, list):
            key = tuple(key)
        if isinstance(key, tuple) and len(key) == 1:
            key = key[0]
        object.__setattr__(self, "key", key)
        keys = key if isinstance(key, tuple) else (key,)
        if not 1 <= len(keys) <= MAX_KEY_FIELDS:
            raise DefinitionError(
                f"Entity.key={self.key!r}: a key has 1 to {MAX_KEY_FIELDS} fields"
            )
        for field in keys:
            if not isinstance(field, str) or not field:
                raise DefinitionError(
                    f"Entity.key={self.key!r}: {field!r} must be the name of an event field"
                )
        if len(set(keys)) != len(keys):
            raise DefinitionError(f"Entity.key={self.key!r} names a field twice")

    @property
    def keys(self) -> tuple[str, ...]:
        """The key fields, in key order (one for a simple key)."""
        return self.key if isinstance(self.key, tuple) else (self.key,)


# Avro primitive type -> the feature value type it maps to.
_AVRO_TYPES: dict[str, ValueType] = {
    "string": "string",
    "long": "int64",
    "int": "int64",
    "double": "float64",
    "float": "float64",
}


def _avro_boolean_fields(schema_path: Path) -> tuple[str, ...]:
    """The (non-null) boolean fields of a schema: usable in expressions, not as features."""
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    names = []
    for entry in schema.get("fields", []):
        avro_type: Any = entry.get("type")
        if isinstance(avro_type, dict):
            avro_type = avro_type.get("type")
        if avro_type == "boolean":
            names.append(entry["name"])
    return tuple(names)


def _avro_field_types(schema_path: Path) -> dict[str, ValueType]:
    try:
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DefinitionError(
            f"Source.schema: cannot read {str(schema_path)!r}: {exc.strerror}"
        ) from exc
    except json.JSONDecodeError as exc:
        raise DefinitionError(
            f"Source.schema: {str(schema_path)!r} is not valid JSON: {exc}"
        ) from exc
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise DefinitionError(f"Source.schema: {str(schema_path)!r} must be an Avro record schema")
    types: dict[str, ValueType] = {}
    for entry in schema.get("fields", []):
        avro_type: Any = entry.get("type")
        if isinstance(avro_type, dict):
            avro_type = avro_type.get("type")
        # Unions (nullable fields) and complex types are not aggregatable; leave them out so a
        # feature naming one fails with the list of usable fields.
        if isinstance(avro_type, str) and avro_type in _AVRO_TYPES:
            types[entry["name"]] = _AVRO_TYPES[avro_type]
    return types


def _compile(text: str, env: dict[str, NameType], *, what: str) -> Expression:
    try:
        return compile_expression(text, env, what=what)
    except ExpressionError as exc:
        raise DefinitionError(str(exc)) from None


def _defining_frame() -> Any:
    """The frame of the code constructing a definition: the first frame outside this module and
    ``dataclasses`` (``replace`` calls ``__init__`` from there)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in (__name__, "dataclasses"):
        frame = frame.f_back  # type: ignore[assignment]
    return frame


# Every view defined by a module's top-level code, with the module's name: a views module may
# define its views as bare expressions (``FeatureView(...)`` without a name), and the registry
# still finds them (freshet.dsl.registry).
DEFINED: list[tuple[str, FeatureView]] = []


def _defining_dir() -> Path:
    """The directory of the module whose code is constructing a definition."""
    frame = _defining_frame()
    file = frame.f_globals.get("__file__") if frame is not None else None
    if not file:  # REPL, notebook, ``python -c``
        return Path.cwd()
    return Path(file).resolve().parent


def _resolve_schema(schema: str | Path, base_dir: Path) -> Path:
    path = Path(schema).expanduser()
    if path.is_absolute():
        return path
    tried = [base_dir / path, SCHEMAS_DIR / path]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise DefinitionError(
        f"Source.schema={str(schema)!r}: no such file; tried {str(tried[0])!r} (beside the "
        f"module defining the Source) and {str(tried[1])!r} (freshet's shipped schemas); put "
        "the .avsc file beside your views module or give an absolute path"
    )


@dataclass(frozen=True, slots=True)
class Source:
    """A Kafka topic of events: encoding, Avro schema (it also describes JSON events), event time.

    ``schema`` is a path to an ``.avsc`` file. A relative one is looked for beside the module
    that defines the Source (``schema="txn.avsc"`` next to ``my_views.py``; the current
    directory in a REPL or notebook), or in ``base_dir`` when given, then among freshet's
    shipped schemas (``transaction.avsc``). ``schema_path`` is the resolved path. JSON events
    carry the same fields, with the event time in epoch milliseconds.
    """

    topic: str
    encoding: Encoding
    schema: str | Path
    event_time_field: str
    # Where a relative ``schema`` is looked for first. Set once, when the Source is defined, so
    # ``dataclasses.replace(source, topic=…)`` elsewhere (``freshet run --topic``) keeps it.
    base_dir: Path | str | None = dataclasses.field(
        default=None, kw_only=True, repr=False, compare=False
    )
    schema_path: Path = dataclasses.field(init=False)
    field_types: dict[str, ValueType] = dataclasses.field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not re.match(r"^[A-Za-z0-9._-]{1,249}$", self.topic):
            raise DefinitionError(
                f"Source.topic={self.topic!r} is not a valid Kafka topic name "
                "(letters, digits, '.', '_', '-')"
            )
        if self.encoding not in _ENCODINGS:
            raise DefinitionError(
                f"Source.encoding={self.encoding!r} is not supported; "
                f"allowed: {', '.join(_ENCODINGS)}"
            )
        base_dir = _defining_dir() if self.base_dir is None else Path(self.base_dir)
        object.__setattr__(self, "base_dir", base_dir)
        path = _resolve_schema(self.schema, base_dir)
        object.__setattr__(self, "schema_path", path)
        types = _avro_field_types(path)
        object.__setattr__(self, "field_types", types)
        if types.get(self.event_time_field) != "int64":
            raise DefinitionError(
                f"Source.event_time_field={self.event_time_field!r} must be a long "
                f"(timestamp-millis) field of {path.name}; its long fields: "
                f"{', '.join(n for n, t in types.items() if t == 'int64') or 'none'}"
            )


@dataclass(frozen=True, slots=True)
class Feature:
    """One aggregate of one event field (or computed column) over a window (or lifetime).

    ``window`` and ``hop`` take ``"5m"``-style strings or seconds; ``window=None`` is lifetime.
    ``field`` is required except for ``count``. ``quantile`` (0..1) is required for, and only
    allowed with, ``approx_percentile``; ``k`` (1..100) for, and only with, ``last_k`` and
    ``top_k``. ``where`` is an expression (:mod:`freshet.dsl.expressions`) over the view's
    fields and columns: only events for which it is true count (null counts as false).
    See the module docstring for the default hop.
    """

    name: str
    agg: Aggregation
    field: str | None = None
    window: str | int | None = None
    hop: str | int | None = None
    quantile: float | None = None
    where: str | None = None
    k: int | None = None
    window_seconds: int | None = dataclasses.field(init=False)
    hop_seconds: int | None = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        _check_name(self.name, what="Feature.name")
        try:
            agg = Aggregation(self.agg)
        except ValueError:
            allowed = ", ".join(a.value for a in Aggregation)
            raise DefinitionError(
                f"feature {self.name!r}: agg={self.agg!r} is not an aggregation; allowed: {allowed}"
            ) from None
        object.__setattr__(self, "agg", agg)
        if agg is Aggregation.COUNT:
            if self.field is not None:
                raise DefinitionError(
                    f"feature {self.name!r}: count takes no field (it counts events); got "
                    f"field={self.field!r}"
                )
        elif not isinstance(self.field, str) or not self.field:
            raise DefinitionError(
                f"feature {self.name!r}: {agg.value} needs a field; got {self.field!r}"
            )
        if agg is Aggregation.APPROX_PERCENTILE:
            if not isinstance(self.quantile, int | float) or not 0.0 <= self.quantile <= 1.0:
                raise DefinitionError(
                    f"feature {self.name!r}: approx_percentile needs quantile in [0, 1]; "
                    f"got {self.quantile!r}"
                )
        elif self.quantile is not None:
            raise DefinitionError(
                f"feature {self.name!r}: quantile={self.quantile!r} is only allowed with "
                "approx_percentile"
            )
        if agg in _K_AGGS:
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
                raise DefinitionError(
                    f"feature {self.name!r}: {agg.value} needs k, an int from 1 to {MAX_K}; "
                    f"got k={self.k!r}"
                )
        elif self.k is not None:
            raise DefinitionError(
                f"feature {self.name!r}: k={self.k!r} is only allowed with last_k and top_k"
            )
        if self.where is not None and (not isinstance(self.where, str) or not self.where.strip()):
            raise DefinitionError(
                f"feature {self.name!r}: where={self.where!r} must be an expression string"
            )
        if self.window is None:
            if self.hop is not None:
                raise DefinitionError(
                    f"feature {self.name!r}: hop={self.hop!r} needs a window; lifetime features "
                    "have no tiles"
                )
            object.__setattr__(self, "window_seconds", None)
            object.__setattr__(self, "hop_seconds", None)
        else:
            window = parse_duration(self.window, what=f"feature {self.name!r}: window")
            if self.hop is None:
                hop = default_hop_seconds(window)
            else:
                hop = parse_duration(self.hop, what=f"feature {self.name!r}: hop")
            if window % hop:
                divisors = [d for d in DEFAULT_HOP_CANDIDATES_SECONDS if window % d == 0]
                raise DefinitionError(
                    f"feature {self.name!r}: window {window}s is not a multiple of "
                    f"hop={self.hop!r} ({hop}s); use a hop that divides the window, e.g. "
                    f"{', '.join(f'{d}s' for d in divisors)}"
                )
            object.__setattr__(self, "window_seconds", window)
            object.__setattr__(self, "hop_seconds", hop)

    def value_type(self, field_type: ValueType | None) -> ValueType:
        """The type of this feature's values, given its input field's type."""
        if self.agg in (Aggregation.COUNT, Aggregation.DISTINCT_COUNT):
            return "int64"
        if self.agg in (
            Aggregation.MEAN,
            Aggregation.APPROX_PERCENTILE,
            Aggregation.VARIANCE,
            Aggregation.STDDEV,
        ):
            return "float64"
        assert field_type is not None  # checked by FeatureView
        if self.agg is Aggregation.LAST_K:
            return f"list<{field_type}>"  # type: ignore[return-value]
        if self.agg is Aggregation.TOP_K:
            return f"top_k<{field_type}>"  # type: ignore[return-value]
        return field_type


@dataclass(frozen=True, slots=True)
class FeatureView:
    """A named, versioned set of features of one entity, computed from one source.

    ``allowed_lateness_seconds`` is ``L`` of DESIGN "Clock and lateness"; ``ttl_seconds`` is how
    long Redis keeps an entity's values after their last change (0 = forever);
    ``dead_letter_topic`` receives undecodable and late events (None: ``<source topic>.dlq``,
    see :func:`freshet.stream.deadletter.dead_letter_topic`). ``columns`` maps names to
    expressions (:mod:`freshet.dsl.expressions`) computed per event, in order (a column may use
    the fields and the columns before it); features read them like fields. It is kept as a
    tuple of ``(name, expression)`` pairs.

    Derived when defined: ``input_fields``, the source fields the decoder reads (besides the
    key and the event time), and ``engine_fields``, what the engine sees per event: the input
    fields, then the columns, then one hidden boolean column per distinct filter (a feature's
    ``where``, and ``field is not None`` for a nullable input: aggregations skip nulls).
    """

    name: str
    version: int
    entity: Entity
    source: Source
    features: tuple[Feature, ...]
    allowed_lateness_seconds: int = 0
    ttl_seconds: int = 0
    dead_letter_topic: str | None = None
    columns: Any = ()
    input_fields: tuple[str, ...] = dataclasses.field(init=False)
    engine_fields: tuple[str, ...] = dataclasses.field(init=False)
    # name -> (type, nullable) of every engine field ("bool" for filters and bool columns).
    engine_types: dict[str, NameType] = dataclasses.field(
        init=False, repr=False, compare=False, hash=False
    )
    # (engine field name, compiled expression) of the columns and filters, in evaluation order.
    expressions: tuple[tuple[str, Expression], ...] = dataclasses.field(
        init=False, repr=False, compare=False, hash=False
    )
    # Per feature, in order: the engine field of its filter, or None when it has none.
    feature_filters: tuple[str | None, ...] = dataclasses.field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        _check_name(self.name, what="FeatureView.name")
        where = f"view {self.name!r}"
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise DefinitionError(f"{where}: version={self.version!r} must be an int >= 1")
        if not isinstance(self.entity, Entity):
            raise DefinitionError(f"{where}: entity={self.entity!r} must be an Entity")
        if not isinstance(self.source, Source):
            raise DefinitionError(f"{where}: source={self.source!r} must be a Source")
        object.__setattr__(self, "features", tuple(self.features))
        if not self.features or not all(isinstance(f, Feature) for f in self.features):
            raise DefinitionError(f"{where}: features must be a non-empty sequence of Feature")
        for what in ("allowed_lateness_seconds", "ttl_seconds"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DefinitionError(f"{where}: {what}={value!r} must be an int of seconds >= 0")
        if self.dead_letter_topic is not None and (
            not isinstance(self.dead_letter_topic, str)
            or not re.match(r"^[A-Za-z0-9._-]{1,249}$", self.dead_letter_topic)
        ):
            raise DefinitionError(
                f"{where}: dead_letter_topic={self.dead_letter_topic!r} is not a valid topic name"
            )

        types = self.source.field_types
        schema_name = self.source.schema_path.name
        for key in self.entity.keys:
            if types.get(key) not in ("string", "int64"):
                raise DefinitionError(
                    f"{where}: entity key {key!r} must be a string or long field of "
                    f"{schema_name}; fields: {', '.join(types)}"
                )

        # Names usable in expressions: the schema's fields (booleans too), then the columns.
        env: dict[str, NameType] = {n: NameType(cast(ExprType, t)) for n, t in types.items()}
        env.update({n: NameType("bool") for n in _avro_boolean_fields(self.source.schema_path)})
        raw_names = set(env)
        columns = self.columns
        if isinstance(columns, dict):
            columns = tuple(columns.items())
        try:
            columns = tuple((name, text) for name, text in columns)
        except (TypeError, ValueError):
            raise DefinitionError(
                f"{where}: columns={self.columns!r} must be a dict of name -> expression"
            ) from None
        object.__setattr__(self, "columns", columns)
        expressions: list[tuple[str, Expression]] = []
        for name, text in columns:
            _check_name(name, what=f"{where}: column name")
            if name in env:
                raise DefinitionError(
                    f"{where}: column {name!r} is already a field of {schema_name} or an "
                    "earlier column; pick another name"
                )
            if not isinstance(text, str):
                raise DefinitionError(
                    f"{where}: column {name!r} must be an expression string; got {text!r}"
                )
            compiled = _compile(text, env, what=f"{where}: column {name!r}")
            env[name] = NameType(compiled.type, compiled.nullable)
            expressions.append((name, compiled))

        seen: set[str] = set()
        filters: dict[str, str] = {}  # filter text -> hidden engine field
        feature_filters: list[str | None] = []
        for feature in self.features:
            if feature.name in seen:
                raise DefinitionError(f"{where}: feature name {feature.name!r} is used twice")
            seen.add(feature.name)
            parts = []
            if feature.where is not None:
                cond = _compile(
                    feature.where, env, what=f"{where}: feature {feature.name!r}: where"
                )
                if cond.type != "bool":
                    raise DefinitionError(
                        f"{where}: feature {feature.name!r}: where={feature.where!r} is "
                        f"{cond.type}, not a condition; compare it, e.g. {feature.where} > 0"
                    )
                parts.append(f"({feature.where})")
            if feature.field is not None:
                field_type = env.get(feature.field)
                if field_type is None:
                    raise DefinitionError(
                        f"{where}: feature {feature.name!r} reads field {feature.field!r}, which "
                        f"{schema_name} lacks{' and no column defines' if columns else ''}; "
                        "usable fields: "
                        f"{', '.join(n for n in env if env[n].type != 'bool')}"
                    )
                if field_type.type == "bool":
                    raise DefinitionError(
                        f"{where}: feature {feature.name!r}: {feature.field!r} is a boolean; "
                        f"count it with where={feature.field!r}, or aggregate a number such as "
                        f"a column '1 if {feature.field} else 0'"
                    )
                if feature.agg in _NUMERIC_AGGS and field_type.type == "string":
                    numeric = [n for n, t in env.items() if t.type in ("int64", "float64")]
                    raise DefinitionError(
                        f"{where}: feature {feature.name!r}: {feature.agg.value} needs a numeric "
                        f"field, {feature.field!r} is a string; numeric fields: "
                        f"{', '.join(numeric)}"
                    )
                if field_type.nullable:
                    parts.append(f"{feature.field} is not None")
            if not parts:
                feature_filters.append(None)
                continue
            text = " and ".join(parts)
            if text not in filters:
                hidden = f"__filter{len(filters)}"
                compiled = _compile(text, env, what=f"{where}: feature {feature.name!r}")
                filters[text] = hidden
                expressions.append((hidden, compiled))
            feature_filters.append(filters[text])

        # The raw fields read: by features directly and by expressions, in first-use order.
        inputs: list[str] = []
        used = [f.field for f in self.features if f.field is not None]
        for _, compiled in expressions:
            used += compiled.names
        for name in used:
            if name in raw_names and name not in inputs:
                inputs.append(name)
        engine_fields = (*inputs, *(name for name, _ in expressions))
        engine_types = {name: env[name] for name in inputs}
        for name, compiled in expressions:
            engine_types[name] = NameType(compiled.type, compiled.nullable)
        object.__setattr__(self, "input_fields", tuple(inputs))
        object.__setattr__(self, "engine_fields", engine_fields)
        object.__setattr__(self, "engine_types", engine_types)
        object.__setattr__(self, "expressions", tuple(expressions))
        object.__setattr__(self, "feature_filters", tuple(feature_filters))
        frame = _defining_frame()
        if frame is not None and frame.f_code.co_name == "<module>":  # a module's own statement
            DEFINED.append((frame.f_globals.get("__name__", ""), self))
        windows = [f.window_seconds for f in self.features if f.window_seconds is not None]
        if windows and self.allowed_lateness_seconds > min(windows):
            raise DefinitionError(
                f"{where}: allowed_lateness_seconds={self.allowed_lateness_seconds} exceeds the "
                f"shortest window ({min(windows)} s); lateness must fit in every window"
            )

    def field_type(self, name: str) -> ValueType:
        """The value type of an input field or column (what features over it hold)."""
        return self.engine_types[name].type  # type: ignore[return-value]

    def layout(self) -> ViewLayout:
        """What the sinks need to know of this view (:class:`freshet.sinks.layout.ViewLayout`)."""
        columns = tuple(
            FeatureColumn(
                f.name,
                f.value_type(None if f.field is None else self.field_type(f.field)),
                windowed=f.window_seconds is not None,
            )
            for f in self.features
        )
        keys = self.entity.keys
        types = self.source.field_types
        return ViewLayout(
            name=self.name,
            version=self.version,
            entity=KEY_SEPARATOR.join(keys),
            features=columns,
            ttl_seconds=self.ttl_seconds,
            key_fields=keys,
            key_types=tuple(types[k] for k in keys),
            lateness_ms=self.allowed_lateness_seconds * 1000,
        )

    def to_json(self) -> dict[str, Any]:
        """The view as a JSON-able dict (``freshet views --json``, ``GET /v1/views``)."""
        layout = self.layout()
        try:
            schema = str(self.source.schema_path.relative_to(SCHEMAS_DIR.parent))
        except ValueError:
            schema = str(self.source.schema_path)
        return {
            "name": self.name,
            "version": self.version,
            "entity": KEY_SEPARATOR.join(self.entity.keys),
            "entity_name": self.entity.name,
            "key": list(self.entity.keys),
            "source": {
                "topic": self.source.topic,
                "encoding": self.source.encoding,
                "schema": schema,
                "event_time_field": self.source.event_time_field,
            },
            "allowed_lateness_seconds": self.allowed_lateness_seconds,
            "ttl_seconds": self.ttl_seconds,
            "dead_letter_topic": self.dead_letter_topic,
            "columns": dict(self.columns),
            "features": [
                {
                    "name": f.name,
                    "aggregation": f.agg.value,
                    "field": f.field,
                    "window_seconds": f.window_seconds,
                    "hop_seconds": f.hop_seconds,
                    "quantile": f.quantile,
                    "k": f.k,
                    "where": f.where,
                    "type": column.type,
                }
                for f, column in zip(self.features, layout.features, strict=True)
            ],
        }
