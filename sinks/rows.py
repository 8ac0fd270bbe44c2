"""The row: one value change of one entity of one view, as the engine emits it.

Rows cross every boundary of the pipeline (engine -> Redis sink, engine -> Parquet sink), so
they are a typed tuple: cheap to build on the hot path, cheap to pickle into snapshots.
The engine emits one row after each accepted event (``as_of`` = the entity's newest event
time) and one at each expiry boundary of a non-empty tile; rows of one entity with the same
``as_of`` may be coalesced to the last.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Row"]


class Row(NamedTuple):
    """One value change ``(view, entity, as_of, values…, source partition, offset,
    valid_until)``.

    ``values`` follow the order of the view's features. ``partition`` and ``offset`` are those
    of the last event the entity's state had applied when the row was made (``-1`` when
    unknown); ``(as_of, offset)`` orders two rows of the same entity that share an ``as_of``,
    which is how the Redis sink's newer-wins check breaks ties.
    """

    view: str
    entity: str
    as_of: int  # epoch milliseconds
    values: tuple[Any, ...]
    partition: int
    offset: int
    # When the values next change without new events (epoch ms): the entity's next expiry
    # boundary after ``as_of``; -1 when none will (no windowed feature holds an event). The
    # Redis record carries it so a lookup can tell a value the flow should have replaced by now
    # (``stale``) from a current one. Not part of the offline log.
    valid_until: int = -1
