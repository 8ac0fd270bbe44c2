"""The deterministic tiled window engine: a view's definition in, one row per value change out.

:class:`~freshet.engine.view_engine.ViewEngine` holds the per-entity state operations
(``apply``/``apply_batch`` per event, ``advance`` at expiry boundaries, ``flush`` at a bounded
replay's end); :mod:`.tiles` the tile layout and generic operations, :mod:`.hotpath` the code
compiled per view for the common cases, :mod:`.aggregations` the aggregators and sketches.
Free of Bytewax, Kafka and Redis: the dataflow (:mod:`freshet.stream`) is a thin shell around it.
"""
