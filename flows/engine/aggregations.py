"""Aggregators: the typed, mergeable partial state behind each aggregation of the DSL.

Each aggregator is a small stateless object with the same five operations on a *partial* (the
state of one tile, or of a lifetime)::

    empty() -> P                  the partial of no events
    add(p, t, v) -> P             fold one event (time ``t`` in ms, field value ``v``); may mutate p
    merge(p, q) -> P              combine two partials (tiles are merged this way); may mutate p
    result(p) -> value            the feature value (``0`` for empty count/sum/distinct, else None)
    peek(p, extra) -> value       result of ``p`` plus ``extra`` (t, v) pairs, leaving ``p`` as is

Results of the window semantics (README, "Defining features"): empty windows give ``0`` for counts,
sums and distinct counts and ``None`` for mean, min, max and percentiles; ``last`` is the value of
the event with the greatest event time (the later arrival on ties).

The two sketches, both from Apache DataSketches and both mergeable:

* :class:`Distinct` keeps the exact set of values up to :data:`EXACT_DISTINCT_LIMIT` values, then
  switches to an HLL sketch (``lg_k`` = :data:`HLL_LG_K`): relative standard error
  1.04 / sqrt(2**12) = 1.6 %, so estimates are within 5 % (3 sigma) of the truth with 99.7 %
  confidence; up to the limit the count is exact. Either way the result depends only on the set
  of values (not on insertion or merge order), so replays reproduce it.
* :class:`Quantiles` is a KLL sketch (``k`` = :data:`KLL_K`): exact while it holds at most ``k``
  items, then within about 1.3 % normalised rank error (99 % confidence). Beyond ``k`` items
  KLL compaction is randomised, so a replay may give a different value within that bound.
  ``quantile(q)`` is the smallest item ``x`` such that at least ``ceil(q * n)`` items are
  ``<= x`` (DataSketches' inclusive rank).

The hot path of :mod:`freshet.engine.view_engine` keeps running totals and monotonic queues rather
than calling these objects per event; it uses them for lifetime features and for sketches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import datasketches

from freshet.dsl.definitions import Aggregation

__all__ = [
    "AGGREGATORS",
    "EXACT_DISTINCT_LIMIT",
    "HLL_LG_K",
    "KLL_K",
    "Aggregator",
    "Distinct",
    "Quantiles",
    "aggregator_for",
    "exact_float",
    "exact_to_float",
]

EXACT_DISTINCT_LIMIT = 256
# DataSketches HLL serial format: preamble byte 5 holds the flags; 16 = OUT_OF_ORDER.
_HLL_FLAGS_BYTE = 5
_HLL_OUT_OF_ORDER = 16
HLL_LG_K = 12
KLL_K = 200

# Float sums are kept as exact integers, ``value * 2**1074`` (every double is an integer
# multiple of 2**-1074), so a sum does not depend on the order of its additions: replays,
# batchings and expiry timing give bit-identical results, and the result is correctly rounded.
_SCALE = 1 << 1074
_MANTISSA = 9007199254740992.0  # 2**53
_frexp = math.frexp


def exact_float(value: float) -> int:
    """``value * 2**1074`` as an exact int."""
    mantissa, exponent = _frexp(value)
    exponent += 1021
    if exponent >= 0:
        return int(mantissa * _MANTISSA) << exponent
    return int(mantissa * _MANTISSA) >> -exponent  # subnormals: the low bits are zero


def exact_to_float(value: int) -> float:
    """The double nearest to ``value / 2**1074`` (inverse of :func:`exact_float`)."""
    return value / _SCALE


def _identity(value: Any) -> Any:
    return value


P = TypeVar("P")
Extra = Sequence[tuple[int, Any]]


class Distinct:
    """A distinct-count partial: an exact set while small, an HLL sketch beyond the limit.

    Mergeable (``merge``), copyable and picklable (the HLL is stored in its compact serial form).
    """

    __slots__ = ("_hll", "_values")

    def __init__(self, values: Iterable[Any] = ()) -> None:
        self._values: set[Any] | None = set(values)
        self._hll: Any = None
        if len(self._values) > EXACT_DISTINCT_LIMIT:
            self._to_hll()

    @property
    def is_exact(self) -> bool:
        return self._values is not None

    def add(self, value: Any) -> None:
        values = self._values
        if values is not None:
            values.add(value)
            if len(values) > EXACT_DISTINCT_LIMIT:
                self._to_hll()
        else:
            self._hll.update(value)

    def merge(self, other: Distinct) -> None:
        """Fold ``other`` into this partial (``other`` is unchanged)."""
        if other._values is not None:
            if self._values is not None:
                self._values |= other._values
                if len(self._values) > EXACT_DISTINCT_LIMIT:
                    self._to_hll()
            else:
                for value in other._values:
                    self._hll.update(value)
            return
        if self._values is not None:
            self._to_hll()
        union = datasketches.hll_union(HLL_LG_K)
        union.update(self._hll)
        union.update(other._hll)
        self._hll = union.get_result(datasketches.tgt_hll_type.HLL_8)

    def estimate(self) -> int:
        """The number of distinct values: exact up to the limit, else the rounded HLL estimate.

        A function of the set of values alone, never of the order they were added or merged
        in: the HLL is read with DataSketches' composite estimator (a function of its registers)
        rather than its order-dependent HIP estimator, by setting the sketch's OUT_OF_ORDER
        flag (bit 4 of preamble byte 5) before reading it.
        """
        if self._values is not None:
            return len(self._values)
        serial = bytearray(self._hll.serialize_compact())
        serial[_HLL_FLAGS_BYTE] |= _HLL_OUT_OF_ORDER
        estimate = datasketches.hll_sketch.deserialize(bytes(serial)).get_estimate()
        return round(float(estimate))

    def copy(self) -> Distinct:
        clone = Distinct.__new__(Distinct)
        clone._values = None if self._values is None else set(self._values)
        clone._hll = (
            None
            if self._hll is None
            else datasketches.hll_sketch.deserialize(self._hll.serialize_updatable())
        )
        return clone

    def _to_hll(self) -> None:
        hll = datasketches.hll_sketch(HLL_LG_K, datasketches.tgt_hll_type.HLL_8)
        for value in self._values or ():
            hll.update(value)
        self._hll = hll
        self._values = None

    def __getstate__(self) -> tuple[Any, ...] | bytes:
        if self._values is not None:
            return tuple(self._values)
        return bytes(self._hll.serialize_compact())

    def __setstate__(self, state: tuple[Any, ...] | bytes) -> None:
        if isinstance(state, bytes):
            self._values = None
            self._hll = datasketches.hll_sketch.deserialize(state)
        else:
            self._values = set(state)
            self._hll = None

    def __eq__(self, other: object) -> bool:  # for tests: same exact set or same sketch bytes
        if not isinstance(other, Distinct):
            return NotImplemented
        if self._values is not None or other._values is not None:
            # Sets: their pickled tuples list the same values in hash-seed-dependent orders.
            return self._values == other._values
        return self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kind = "exact" if self._values is not None else "hll"
        return f"Distinct({kind}, estimate={self.estimate()})"


class Quantiles:
    """A quantile partial: a DataSketches KLL sketch of doubles; mergeable and picklable."""

    __slots__ = ("_kll",)

    def __init__(self) -> None:
        self._kll: Any = datasketches.kll_doubles_sketch(KLL_K)

    @property
    def n(self) -> int:
        return int(self._kll.n)

    def add(self, value: float) -> None:
        self._kll.update(float(value))

    def merge(self, other: Quantiles) -> None:
        self._kll.merge(other._kll)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (inclusive rank), or None when empty."""
        if self._kll.is_empty():
            return None
        return float(self._kll.get_quantile(q, True))

    def copy(self) -> Quantiles:
        clone = Quantiles.__new__(Quantiles)
        clone._kll = datasketches.kll_doubles_sketch.deserialize(self._kll.serialize())
        return clone

    def __getstate__(self) -> bytes:
        return bytes(self._kll.serialize())

    def __setstate__(self, state: bytes) -> None:
        self._kll = datasketches.kll_doubles_sketch.deserialize(state)

    def __eq__(self, other: object) -> bool:  # for tests: the same sketch bytes
        if not isinstance(other, Quantiles):
            return NotImplemented
        return self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Quantiles(n={self.n})"


class Aggregator(Generic[P]):
    """The operations on one aggregation's partials; see the module docstring."""

    __slots__ = ()

    def empty(self) -> P:
        raise NotImplementedError

    def add(self, p: P, t: int, v: Any) -> P:
        raise NotImplementedError

    def merge(self, p: P, q: P) -> P:
        raise NotImplementedError

    def result(self, p: P) -> Any:
        raise NotImplementedError

    def peek(self, p: P, extra: Extra) -> Any:
        for t, v in extra:
            p = self.add(p, t, v)
        return self.result(p)


class _Count(Aggregator[int]):
    __slots__ = ()

    def empty(self) -> int:
        return 0

    def add(self, p: int, t: int, v: Any) -> int:
        return p + 1

    def merge(self, p: int, q: int) -> int:
        return p + q

    def result(self, p: int) -> int:
        return p


class _Sum(Aggregator[int]):
    """Sum of a numeric field, exact: ints as ints, doubles via :func:`exact_float`."""

    __slots__ = ("_from", "_to")

    def __init__(self, *, float_sum: bool) -> None:
        self._to: Callable[[Any], int] = exact_float if float_sum else _identity
        self._from: Callable[[int], Any] = exact_to_float if float_sum else _identity

    def empty(self) -> int:
        return 0

    def add(self, p: int, t: int, v: Any) -> int:
        return p + self._to(v)

    def merge(self, p: int, q: int) -> int:
        return p + q

    def result(self, p: int) -> Any:
        return self._from(p)


class _Mean(Aggregator[tuple[int, int]]):
    """Partial ``(count, exact sum)``; the mean is the (correctly rounded) sum over the count."""

    __slots__ = ("_from", "_to")

    def __init__(self, *, float_sum: bool) -> None:
        self._to: Callable[[Any], int] = exact_float if float_sum else _identity
        self._from: Callable[[int], Any] = exact_to_float if float_sum else _identity

    def empty(self) -> tuple[int, int]:
        return (0, 0)

    def add(self, p: tuple[int, int], t: int, v: Any) -> tuple[int, int]:
        return (p[0] + 1, p[1] + self._to(v))

    def merge(self, p: tuple[int, int], q: tuple[int, int]) -> tuple[int, int]:
        return (p[0] + q[0], p[1] + q[1])

    def result(self, p: tuple[int, int]) -> float | None:
        return self._from(p[1]) / p[0] if p[0] else None


class _Max(Aggregator[Any]):
    __slots__ = ()

    def empty(self) -> Any:
        return None

    def add(self, p: Any, t: int, v: Any) -> Any:
        return v if p is None or v > p else p

    def merge(self, p: Any, q: Any) -> Any:
        return q if p is None or (q is not None and q > p) else p

    def result(self, p: Any) -> Any:
        return p


class _Min(Aggregator[Any]):
    __slots__ = ()

    def empty(self) -> Any:
        return None

    def add(self, p: Any, t: int, v: Any) -> Any:
        return v if p is None or v < p else p

    def merge(self, p: Any, q: Any) -> Any:
        return q if p is None or (q is not None and q < p) else p

    def result(self, p: Any) -> Any:
        return p


class _Last(Aggregator[tuple[int, Any] | None]):
    """Partial ``(t, v)`` of the latest event; added in arrival order, ties go to the later."""

    __slots__ = ()

    def empty(self) -> tuple[int, Any] | None:
        return None

    def add(self, p: tuple[int, Any] | None, t: int, v: Any) -> tuple[int, Any] | None:
        return (t, v) if p is None or t >= p[0] else p

    def merge(self, p: tuple[int, Any] | None, q: tuple[int, Any] | None) -> tuple[int, Any] | None:
        # q is taken to be the later-arriving side on equal times.
        return q if p is None or (q is not None and q[0] >= p[0]) else p

    def result(self, p: tuple[int, Any] | None) -> Any:
        return None if p is None else p[1]


class _DistinctCount(Aggregator[Distinct]):
    __slots__ = ()

    def empty(self) -> Distinct:
        return Distinct()

    def add(self, p: Distinct, t: int, v: Any) -> Distinct:
        p.add(v)
        return p

    def merge(self, p: Distinct, q: Distinct) -> Distinct:
        p.merge(q)
        return p

    def result(self, p: Distinct) -> int:
        return p.estimate()

    def peek(self, p: Distinct, extra: Extra) -> int:
        if not extra:
            return p.estimate()
        if p.is_exact:
            values = p._values
            assert values is not None
            new = {v for _, v in extra if v not in values}
            if len(values) + len(new) <= EXACT_DISTINCT_LIMIT:
                return len(values) + len(new)
        clone = p.copy()
        for _, v in extra:
            clone.add(v)
        return clone.estimate()


class _Percentile(Aggregator[Quantiles]):
    __slots__ = ("q",)

    def __init__(self, q: float) -> None:
        self.q = q

    def empty(self) -> Quantiles:
        return Quantiles()

    def add(self, p: Quantiles, t: int, v: Any) -> Quantiles:
        p.add(v)
        return p

    def merge(self, p: Quantiles, q: Quantiles) -> Quantiles:
        p.merge(q)
        return p

    def result(self, p: Quantiles) -> float | None:
        return p.quantile(self.q)

    def peek(self, p: Quantiles, extra: Extra) -> float | None:
        if not extra:
            return p.quantile(self.q)
        clone = p.copy()
        for _, v in extra:
            clone.add(v)
        return clone.quantile(self.q)


# The aggregators that need no parameter (sum and mean of int fields).
AGGREGATORS: dict[Aggregation, Aggregator[Any]] = {
    Aggregation.COUNT: _Count(),
    Aggregation.SUM: _Sum(float_sum=False),
    Aggregation.MEAN: _Mean(float_sum=False),
    Aggregation.MIN: _Min(),
    Aggregation.MAX: _Max(),
    Aggregation.LAST: _Last(),
    Aggregation.DISTINCT_COUNT: _DistinctCount(),
}


def aggregator_for(
    agg: Aggregation, quantile: float | None = None, *, float_sum: bool = False
) -> Aggregator[Any]:
    """The aggregator of ``agg``: ``quantile`` is required for approx_percentile, and
    ``float_sum`` makes sum/mean of a double field exact (see :func:`exact_float`)."""
    if agg is Aggregation.APPROX_PERCENTILE:
        if quantile is None:
            raise ValueError("approx_percentile needs a quantile in [0, 1]; got None")
        return _Percentile(quantile)
    if float_sum and agg is Aggregation.SUM:
        return _Sum(float_sum=True)
    if float_sum and agg is Aggregation.MEAN:
        return _Mean(float_sum=True)
    return AGGREGATORS[agg]
