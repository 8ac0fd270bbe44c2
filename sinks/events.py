"""The engine's input: one accepted event of a view's source, as a plain tuple.

    (entity, event_time_ms, fields, partition, offset, kafka_timestamp_ms)

``entity`` is the entity id (text), ``event_time_ms`` integer epoch milliseconds, ``fields``
the view's input fields in the order of ``FeatureView.input_fields``, ``partition`` and
``offset`` the source record's, ``kafka_timestamp_ms`` the record's Kafka timestamp (``-1``
when it has none). The decoder (:mod:`freshet.decode.decoder`) makes them, the flow groups them
by shard, and :meth:`freshet.engine.view_engine.ViewEngine.apply_batch` applies them. A tuple,
not a dataclass: millions are built per second on the hot path.

It lives here, with :class:`~freshet.sinks.rows.Row` (the engine's output), because the decoder
that makes events and the engine that applies them may both import only the definitions and
``freshet.sinks`` (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Event"]

Event = tuple[str, int, tuple[Any, ...], int, int, int]
