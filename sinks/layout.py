"""What a sink needs to know of a view: its name, version, entity and typed feature columns.

Feature views (``flows``) are the source of truth; ``FeatureView.layout()`` derives this. The
sinks depend only on this small record, so the storage layouts never import the DSL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ENTITY_FORBIDDEN_CHARS",
    "ENTITY_JSON_PATTERN",
    "KEY_SEPARATOR",
    "MAX_ENTITY_LENGTH",
    "MAX_KEY_FIELDS",
    "FeatureColumn",
    "ValueType",
    "ViewLayout",
    "decode_entity",
    "encode_entity",
]

# The longest entity id (in characters) freshet stores or serves. Ids are keys of Redis records
# and of log rows: real ones (card, user, device ids) are tens of characters; a longer one is
# a producer bug, dead-lettered by the decoder and refused by the endpoint with a 4xx. Ids must
# also hold no control characters nor bytes that are not UTF-8 (lone surrogates, as
# ``surrogateescape`` decodes them): those are refused the same way.
MAX_ENTITY_LENGTH = 1024
ENTITY_FORBIDDEN_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The same rule as a JSON-schema pattern (OpenAPI), for clients and schema-driven tests.
ENTITY_JSON_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"

# Composite entity keys (DESIGN "Entities"): a view keyed by 2-4 fields stores each entity under
# one string, its key values (each as text: a long field as its decimal digits) joined by
# ``|`` after escaping ``%`` as ``%25`` and ``|`` as ``%7C`` in each value. The encoding is
# injective for a fixed number of fields (a ``|`` in the result always separates two values) and
# reads as the values themselves when they hold neither character: ``c1|m2``. A one-field key is
# stored as its value, unchanged.
KEY_SEPARATOR = "|"
MAX_KEY_FIELDS = 4


def encode_entity(parts: tuple[str, ...] | list[str]) -> str:
    """The stored entity id of key values ``parts`` (one per key field, in key order)."""
    if len(parts) == 1:
        return parts[0]
    return KEY_SEPARATOR.join(p.replace("%", "%25").replace("|", "%7C") for p in parts)


def decode_entity(entity: str, n: int) -> tuple[str, ...]:
    """The ``n`` key values of a stored entity id (:func:`encode_entity`'s inverse).

    Raises ValueError when ``entity`` is not the encoding of ``n`` values."""
    if n == 1:
        return (entity,)
    parts = entity.split(KEY_SEPARATOR)
    if len(parts) != n:
        raise ValueError(f"entity {entity!r} is not a key of {n} fields")
    return tuple(p.replace("%7C", "|").replace("%25", "%") for p in parts)


# The value types a feature can have, named as Arrow names them.
# ``last_k`` features hold lists (``list<float64>``: newest first); ``top_k`` features lists of
# ``[value, count]`` pairs (``top_k<string>``: Parquet stores them as a list of structs
# ``{value, count}``).
ValueType = Literal[
    "int64",
    "float64",
    "string",
    "list<int64>",
    "list<float64>",
    "list<string>",
    "top_k<int64>",
    "top_k<float64>",
    "top_k<string>",
]


@dataclass(frozen=True, slots=True)
class FeatureColumn:
    name: str
    type: ValueType
    # Windowed features change without new events (at expiry boundaries): their values can be
    # stale when the flow falls behind; lifetime features cannot.
    windowed: bool = False


@dataclass(frozen=True, slots=True)
class ViewLayout:
    """A view as stored: ``features`` are in the order of ``Row.values``."""

    name: str
    version: int
    entity: str  # the entity key field's name, e.g. "card_id" ("card_id|merchant": composite)
    features: tuple[FeatureColumn, ...]
    ttl_seconds: int  # 0 = values never expire
    # The key fields, in key order, and their types; () means ``(entity,)``, a string key.
    key_fields: tuple[str, ...] = ()
    key_types: tuple[ValueType, ...] = ()
    # How long after an expiry boundary the flow may write its row (the view's allowed
    # lateness): lookups allow it before calling a windowed value stale.
    lateness_ms: int = 0

    @property
    def keys(self) -> tuple[str, ...]:
        """The key fields, in key order (one for most views)."""
        return self.key_fields or (self.entity,)

    @property
    def is_composite(self) -> bool:
        return len(self.keys) > 1

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)
