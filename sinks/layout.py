"""What a sink needs to know of a view: its name, version, entity and typed feature columns.

Feature views (``flows``) are the source of truth; ``FeatureView.layout()`` derives this. The
sinks depend only on this small record, so the storage layouts never import the DSL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["MAX_ENTITY_LENGTH", "FeatureColumn", "ValueType", "ViewLayout"]

# The longest entity id (in characters) freshet stores or serves. Ids are keys of Redis records
# and of log rows: real ones (card, user, device ids) are tens of characters; a longer one is
# a producer bug, dead-lettered by the decoder and refused by the endpoint with a 4xx.
MAX_ENTITY_LENGTH = 1024

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
