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
    "MAX_ENTITY_LENGTH",
    "FeatureColumn",
    "ValueType",
    "ViewLayout",
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

# The value types a feature can have, named as Arrow names them.
ValueType = Literal["int64", "float64", "string"]


@dataclass(frozen=True, slots=True)
class FeatureColumn:
    name: str
    type: ValueType


@dataclass(frozen=True, slots=True)
class ViewLayout:
    """A view as stored: ``features`` are in the order of ``Row.values``."""

    name: str
    version: int
    entity: str  # the entity key field's name, e.g. "card_id"
    features: tuple[FeatureColumn, ...]
    ttl_seconds: int  # 0 = values never expire

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)
