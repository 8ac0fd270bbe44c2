"""Crash points for fault-injection tests; inert unless ``FRESHET_FAULT`` is set.

``FRESHET_FAULT=<point>:<n>`` makes the process SIGKILL itself the ``n``-th time (default 1)
it reaches ``crash_point("<point>")``: a crash at an exact moment that a test could not hit by
timing a ``kill`` from outside. ``tests/chaos/test_crash_points.py`` uses them.
``FRESHET_FAULT=<point>:<n>:SIGTERM`` (or ``SIGINT``) sends that signal instead, so a test
can stop a flow gracefully at that moment (``tests/integration/test_graceful_stop.py``). The
points:

==============================  ==============================================================
``parquet.segment_tmp_written``  a segment's temporary file is written and fsynced, not renamed
``parquet.segment_renamed``      a segment is renamed into place, before the writer returns
``redis.batch_written``          a batch's pipeline has run in Redis, before ``write`` returns
``engine.shard_snapshot``        an engine shard's state is pickled for a recovery snapshot
==============================  ==============================================================

The environment is read once, at import; with ``FRESHET_FAULT`` unset (production) a crash
point costs one global lookup. Points are on per-batch paths, never per row.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["FAULT_ENV", "POINTS", "crash_point", "parse_fault"]

FAULT_ENV = "FRESHET_FAULT"
POINTS = frozenset(
    {
        "parquet.segment_tmp_written",
        "parquet.segment_renamed",
        "redis.batch_written",
        "engine.shard_snapshot",
    }
)


def parse_fault(value: str) -> tuple[str, int, signal.Signals] | None:
    """``"<point>[:<n>[:<SIGNAL>]]"`` -> ``(point, n, signal)``; None for an empty value."""
    if not value:
        return None
    point, _, rest = value.partition(":")
    count, _, signame = rest.partition(":")
    if point not in POINTS:
        raise ValueError(f"{FAULT_ENV}={value!r}: unknown point {point!r}; known: {sorted(POINTS)}")
    if count and (not count.isdigit() or int(count) < 1):
        raise ValueError(f"{FAULT_ENV}={value!r}: the count {count!r} must be an integer >= 1")
    if signame not in ("", "SIGKILL", "SIGTERM", "SIGINT"):
        raise ValueError(f"{FAULT_ENV}={value!r}: the signal must be SIGKILL, SIGTERM or SIGINT")
    return point, int(count or 1), signal.Signals[signame or "SIGKILL"]


_ARMED = parse_fault(os.environ.get(FAULT_ENV, ""))
_hits = 0
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """Signal this process (SIGKILL unless ``FRESHET_FAULT`` names another signal) if
    ``FRESHET_FAULT`` names ``name`` and this is its n-th visit."""
    if _ARMED is None or _ARMED[0] != name:
        return
    global _hits
    with _lock:
        _hits += 1
        if _hits == _ARMED[1]:
            os.kill(os.getpid(), _ARMED[2])
