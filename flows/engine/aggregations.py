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

The two sketches, both mergeable, and both functions of the multiset of values added (never of
the order of additions and merges, nor of copies and pickles), so that replays, backfills,
batchings, shardings and resumes reproduce live rows bit for bit:

* :class:`Distinct` keeps the exact set of values up to :data:`EXACT_DISTINCT_LIMIT` values, then
  switches to an Apache DataSketches HLL sketch (``lg_k`` = :data:`HLL_LG_K`): relative standard
  error 1.04 / sqrt(2**12) = 1.6 %, so estimates are within 5 % (3 sigma) of the truth with
  99.7 % confidence; up to the limit the count is exact.
* :class:`Quantiles` (``approx_percentile``) reads the nearest-rank quantile: for ``n`` values
  and ``q`` in [0, 1] the true value is ``x_r``, the ``r``-th smallest, ``r = max(ceil(q*n), 1)``.
  Up to :data:`EXACT_QUANTILE_LIMIT` values it keeps them and returns ``x_r`` exactly; beyond,
  a log-bucket histogram (DDSketch-style, 64 buckets per power of two) returns a value within
  relative error :data:`QUANTILE_RELATIVE_ERROR` = 1/128 (0.78 %) of ``x_r``, that is
  ``|result - x_r| <= |x_r| / 128``, always, not just with high probability (zero, the min,
  ``q = 0``, and the max, ``q = 1``, exactly). NaN values are skipped.

The hot path of :mod:`freshet.engine.view_engine` keeps running totals and monotonic queues rather
than calling these objects per event; it uses them for lifetime features and for sketches.
"""

from __future__ import annotations

import heapq
import itertools
import math
import struct
from array import array
from bisect import bisect_left as _bisect_left
from bisect import bisect_right as _bisect_right
from bisect import insort as _insort
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate as _accumulate
from typing import Any, Generic, TypeVar

import datasketches

from freshet.dsl.definitions import Aggregation

__all__ = [
    "AGGREGATORS",
    "EXACT_DISTINCT_LIMIT",
    "EXACT_QUANTILE_LIMIT",
    "HLL_LG_K",
    "QUANTILE_RELATIVE_ERROR",
    "STAMPED",
    "Aggregator",
    "Counts",
    "Distinct",
    "Moments",
    "Ordered",
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
# Quantiles: exact up to this many values, then buckets 1/64 of a power of two wide, whose
# midpoints are within 1/128 of every value they hold.
EXACT_QUANTILE_LIMIT = 128
QUANTILE_RELATIVE_ERROR = 1 / 128

# Float sums are kept as exact integers, ``value * 2**1074`` (every double is an integer
# multiple of 2**-1074), so a sum does not depend on the order of its additions: replays,
# batchings and expiry timing give bit-identical results, and the result is correctly rounded.
_SCALE = 1 << 1074
_MANTISSA = 9007199254740992.0  # 2**53
_frexp = math.frexp
_pack_double = struct.Struct("d").pack
_unpack_double = struct.Struct("d").unpack_from
_ldexp = math.ldexp
_ceil = math.ceil


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
    """A quantile partial: exact while small, then a log-bucket histogram; mergeable, picklable.

    Holds the multiset of values added (NaN skipped, ``-0.0`` counted as ``0.0``) and reads its
    quantiles by nearest rank: ``quantile(q)`` estimates ``x_r``, the ``r``-th smallest of the
    ``n`` values, ``r = max(ceil(q * n), 1)``.

    * While ``n <= EXACT_QUANTILE_LIMIT``: the sorted values; ``quantile`` returns ``x_r``.
    * Beyond: a DDSketch-style histogram with a log-linear index (as DDSketch's linearly
      interpolated mapping, or an HDR histogram): ``x > 0`` with ``x = m * 2**e``
      (``0.5 <= m < 1``, :func:`math.frexp`) counts in bucket ``64 * e + floor(128 * m)``,
      that is ``[j, j + 1) * 2**(e - 7)`` with ``64 <= j < 128``; negative values count in the
      mirror buckets, zeros in one bucket and infinities in their own. ``quantile`` finds the
      bucket holding ``x_r`` (buckets are disjoint intervals in value order, so the ``r``-th value
      lies in the bucket where the running count reaches ``r``) and returns its midpoint
      ``(2j + 1) * 2**(e - 8)``, clamped to the exact min and max (and the min itself for
      ``r = 1``, the max for ``r = n``). Every value of the bucket is within 1/(2j) <= 1/128 of
      the midpoint relative to itself, so ``|result - x_r| <= |x_r| / 128`` (0.78 %; for
      ``|x_r| >= 2**-1066``, below which the midpoint rounds to a subnormal), and the result is
      exact for zeros, infinities, ``q = 0`` and ``q = 1``.

    The state is a function of the multiset alone, built with integer counts and exact binary
    float operations (``frexp``, a product by 128, ``ldexp``): the same values give the same
    partial and bit-identical quantiles on every IEEE 754 platform, whatever order they were
    added, merged, copied or pickled in (:meth:`quantile_with` reads a merge without making it,
    for the same result). No bucket is ever collapsed: a sketch holds at most 64 buckets per
    power of two its values span (about 1,300 for values from 0.01 to 10,000); it pickles as
    its sorted, delta-coded buckets, an exact partial as its values (native-order doubles).
    """

    __slots__ = ("_counts", "_cum", "_hi", "_keys", "_lo", "_recent", "_values", "_vkeys", "n")

    def __init__(self, values: Iterable[float] = ()) -> None:
        self.n = 0  # values held, NaN excluded
        # Exact mode: the values, sorted, as native doubles in bytes (immutable, so copies share
        # them, and never tracked by the cyclic GC: entity states hold many partials); else None.
        self._values: bytes | None = b""
        self._vkeys: bytes | None = None  # their buckets, memoised (see _value_buckets)
        # Sketch mode only (else None): bucket -> count, the buckets sorted, the running counts
        # over them (None until read after a change), and the buckets of the last values added,
        # sorted, not yet counted (so that a partial read after every addition, as a lifetime
        # feature is, recounts its buckets once per _RECENT_LIMIT values, not once per value).
        self._counts: dict[int, int] | None = None
        self._keys: array[int] | None = None
        self._cum: array[int] | None = None
        self._recent: array[int] | None = None
        self._lo = self._hi = 0.0  # sketch mode: the exact min and max
        for value in values:
            self.add(value)

    @property
    def is_exact(self) -> bool:
        return self._values is not None

    def add(self, value: float) -> None:
        x = value + 0.0  # a float, and 0.0 for -0.0
        if x != x:  # NaN has no rank
            return
        self.n += 1
        values = self._values
        if values is not None:
            i = _bisect_right(memoryview(values).cast("d"), x) * 8
            self._values = values[:i] + _pack_double(x) + values[i:]
            self._vkeys = None
            if self.n > EXACT_QUANTILE_LIMIT:
                self._to_sketch()
            return
        recent = self._recent
        assert recent is not None
        _insort(recent, _bucket(x))
        if x > self._hi:
            self._hi = x
        elif x < self._lo:
            self._lo = x
        if len(recent) > _RECENT_LIMIT:
            self._fold()

    def merge(self, other: Quantiles) -> None:
        """Fold ``other`` into this partial (``other`` is unchanged)."""
        theirs = other._values
        values = self._values
        if theirs is not None:
            if values is not None:
                merged = array("d", values)
                merged.frombytes(theirs)
                self._values = array("d", sorted(merged)).tobytes()  # two sorted runs: linear
                self._vkeys = None
                self.n = len(merged)
                if self.n > EXACT_QUANTILE_LIMIT:
                    self._to_sketch()
                return
            self.n += other.n
            if theirs:
                self._count(other._value_buckets(), *_ends(theirs))
            return
        if values is not None:
            self._to_sketch()
        counts = self._counts
        assert counts is not None
        assert other._counts is not None
        assert other._recent is not None
        self._fold()
        if counts:
            self._lo = min(self._lo, other._lo)
            self._hi = max(self._hi, other._hi)
        else:
            self._lo, self._hi = other._lo, other._hi
        self.n += other.n
        get = counts.get
        for key, count in other._counts.items():
            counts[key] = get(key, 0) + count
        for key in other._recent:
            counts[key] = get(key, 0) + 1
        self._sort_keys()
        self._cum = None

    def quantile(self, q: float) -> float | None:
        """The nearest-rank q-quantile (see the class docstring), or None when empty."""
        n = self.n
        if not n:
            return None
        values = self._values
        if values is not None:
            value: float = _unpack_double(values, (max(_ceil(q * n), 1) - 1) * 8)[0]
            return value
        assert self._recent is not None
        return self._read(q, 0, self._recent.tolist(), self._lo, self._hi)

    def quantile_with(
        self, q: float, more: Quantiles | None, extra: Sequence[float]
    ) -> float | None:
        """``quantile(q)`` of this partial merged with ``more`` and the values ``extra``, without
        changing any of them: the same value as merging copies, only faster when this partial is
        a sketch (its running counts are reused) and ``more`` is exact (a window's complete tiles,
        its newest tile and its pending events)."""
        mine = self._values
        theirs = None if more is None else more._values
        if mine is not None and (more is None or theirs is not None):
            if not extra and (not mine or not theirs):  # one exact partial: read it
                return (more if not mine and more is not None else self).quantile(q)
            values = array("d", mine).tolist()
            if theirs:
                values += array("d", theirs).tolist()
            values += [x + 0.0 for x in extra if x == x]
            if len(values) <= EXACT_QUANTILE_LIMIT:
                if not values:
                    return None
                values.sort()
                return values[max(_ceil(q * len(values)), 1) - 1]
        if mine is not None or (more is not None and theirs is None):
            partial = self.copy()
            if more is not None:
                partial.merge(more)
            for x in extra:
                partial.add(x)
            return partial.quantile(q)
        assert self._recent is not None
        buckets = self._recent.tolist()
        lo, hi = self._lo, self._hi
        count = 0
        if theirs:
            assert more is not None
            buckets += more._value_buckets()
            lo = min(lo, _unpack_double(theirs, 0)[0])
            hi = max(hi, _unpack_double(theirs, len(theirs) - 8)[0])
            count = more.n
        for x in extra:
            x += 0.0
            if x == x:
                buckets.append(_bucket(x))
                count += 1
                if x < lo:
                    lo = x
                if x > hi:
                    hi = x
        buckets.sort()
        return self._read(q, count, buckets, lo, hi)

    def _read(self, q: float, count: int, theirs: list[int], lo: float, hi: float) -> float:
        """The q-quantile of this sketch plus ``count`` more values: ``theirs``, the sorted
        buckets of the values not counted yet (recent ones included); ``lo``, ``hi``: the min
        and max of all."""
        n = self.n + count
        rank = max(_ceil(q * n), 1)
        if rank == 1:  # the min and the max, exactly
            return lo
        if rank == n:
            return hi
        keys = self._keys
        assert keys is not None
        cum = self._cum
        if cum is None:
            assert self._counts is not None
            cum = self._cum = array("q", _accumulate(map(self._counts.__getitem__, keys)))
        if not theirs:
            key = keys[_bisect_left(cum, rank)]
        else:
            # The first added bucket where the merged running count reaches rank (the running
            # count at theirs[p]: the counted values up to its bucket, plus the added ones)...
            p = _bisect_left(
                range(len(theirs)),
                rank,
                key=lambda p: _count_upto(keys, cum, theirs[p]) + _bisect_right(theirs, theirs[p]),
            )
            # ...unless a counted bucket reaches it first (p added values come before it).
            i = _bisect_left(cum, rank - p)
            before = p == len(theirs) or (i < len(keys) and keys[i] < theirs[p])
            key = keys[i] if before else theirs[p]
        return min(max(_midpoint(key), lo), hi)

    def _value_buckets(self) -> list[int]:
        """The buckets of the exact values, in order; memoised (in bytes, which the GC does
        not track) until the values change, so that merging a complete tile into a window's
        sketch, again after each expiry, buckets its values once."""
        buckets = self._vkeys
        if buckets is None:
            assert self._values is not None
            keys = [_bucket(x) for x in memoryview(self._values).cast("d")]
            buckets = self._vkeys = array("q", keys).tobytes()
        return memoryview(buckets).cast("q").tolist()

    def _count(self, buckets: list[int], lo: float, hi: float) -> None:
        """Count values of ``buckets`` (min ``lo``, max ``hi``); ``n`` is the caller's."""
        counts = self._counts
        assert counts is not None
        if counts:
            lo, hi = min(lo, self._lo), max(hi, self._hi)
        get = counts.get
        for key in buckets:
            counts[key] = get(key, 0) + 1
        self._sort_keys()
        self._lo, self._hi = lo, hi
        self._cum = None

    def _sort_keys(self) -> None:
        """Bring ``_keys`` up to date with ``_counts`` (which only ever gains buckets)."""
        counts, keys = self._counts, self._keys
        assert counts is not None
        assert keys is not None
        new = len(counts) - len(keys)
        if not new:
            return
        if new * 32 < len(keys):  # a few new buckets: insert them
            for key in itertools.islice(counts, len(keys), None):
                _insort(keys, key)
        else:
            self._keys = array("q", sorted(counts))

    def _fold(self) -> None:
        """Count the recent values (sketch mode)."""
        recent = self._recent
        if recent:
            self._recent = array("q")
            counts = self._counts
            assert counts is not None
            get = counts.get
            for key in recent:
                counts[key] = get(key, 0) + 1
            self._sort_keys()
            self._cum = None

    def _to_sketch(self) -> None:
        values = self._values
        assert values is not None
        buckets = self._value_buckets()
        lo, hi = _ends(values)
        self._values = self._vkeys = None
        self._counts = {}
        self._keys = array("q")
        self._recent = array("q")
        self._count(buckets, lo, hi)

    def copy(self) -> Quantiles:
        clone = Quantiles.__new__(Quantiles)
        clone.n = self.n
        clone._values = self._values
        clone._vkeys = self._vkeys
        clone._counts = None if self._counts is None else self._counts.copy()
        clone._keys = None if self._keys is None else self._keys[:]
        clone._cum = self._cum  # never mutated, only replaced
        clone._recent = None if self._recent is None else self._recent[:]
        clone._lo = self._lo
        clone._hi = self._hi
        return clone

    def __getstate__(self) -> tuple[bytes] | list[Any]:
        # Exact: (the sorted values as doubles,). Sketch: [min, max, bucket, count, bucket
        # step, count, ...].
        if self._values is not None:
            return (self._values,)
        self._fold()  # one state per multiset
        counts = self._counts
        assert counts is not None
        assert self._keys is not None
        state: list[Any] = [self._lo, self._hi]
        previous = 0
        for key in self._keys:
            state += (key - previous, counts[key])
            previous = key
        return state

    def __setstate__(self, state: tuple[bytes] | list[Any]) -> None:
        self._cum = self._vkeys = None
        if isinstance(state, tuple):
            self._values = state[0]
            self._counts = self._keys = self._recent = None
            self._lo = self._hi = 0.0
            self.n = len(self._values) // 8
            return
        if not isinstance(state, list):
            raise ValueError(
                "this approx_percentile state was written by an older freshet (a DataSketches "
                "KLL sketch, whose results were not reproducible); start the flow with a new "
                "--recovery-dir and rebuild the windows by replaying the topic"
            )
        self._values = None
        self._recent = array("q")
        self._lo, self._hi = state[0], state[1]
        counts = self._counts = {}
        key = 0
        for i in range(2, len(state), 2):
            key += state[i]
            counts[key] = state[i + 1]
        self._keys = array("q", counts)
        self.n = sum(counts.values())

    def __eq__(self, other: object) -> bool:  # the same multiset (exact) or the same buckets
        if not isinstance(other, Quantiles):
            return NotImplemented
        return self.n == other.n and self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kind = "exact" if self._values is not None else "sketch"
        return f"Quantiles({kind}, n={self.n})"


def _shifted(value: int) -> tuple[int, int]:
    """``value`` as ``(mantissa, shift)`` with ``value == mantissa << shift`` (pickles small)."""
    if not value:
        return (0, 0)
    shift = (value & -value).bit_length() - 1
    return (value >> shift, shift)


class Moments:
    """A ``variance``/``stddev`` partial: count, sum and sum of squares, exact.

    Values are integers, or doubles taken exactly as ``x * 2**1074`` (:func:`exact_float`), so
    the sums and the squares' sum are exact integers and the partial is a function of the
    multiset of values alone. The population variance ``(n * Σx² - (Σx)²) / n²`` is then one
    correctly rounded division of two integers: the same double whatever order the values came,
    were merged or were pickled in. ``stddev`` is its correctly rounded square root. An empty
    partial reads ``None``, one value ``0.0``; a variance too large for a double reads ``None``.
    """

    __slots__ = ("float_values", "n", "q", "s")

    def __init__(self, *, float_values: bool) -> None:
        self.float_values = float_values
        self.n = 0
        self.s = 0
        self.q = 0

    def add(self, value: Any) -> None:
        x = exact_float(float(value)) if self.float_values else value
        self.n += 1
        self.s += x
        self.q += x * x

    def merge(self, other: Moments) -> None:
        self.n += other.n
        self.s += other.s
        self.q += other.q

    def copy(self) -> Moments:
        clone = Moments.__new__(Moments)
        clone.float_values = self.float_values
        clone.n, clone.s, clone.q = self.n, self.s, self.q
        return clone

    def combined(self, other: Moments) -> Moments:
        """A new partial of both (neither changes)."""
        clone = Moments.__new__(Moments)
        clone.float_values = self.float_values
        clone.n, clone.s, clone.q = self.n + other.n, self.s + other.s, self.q + other.q
        return clone

    def variance(self) -> float | None:
        n = self.n
        if not n:
            return None
        numerator = n * self.q - self.s * self.s
        denominator = n * n
        if self.float_values:
            denominator <<= 2 * 1074
        try:
            return numerator / denominator
        except OverflowError:
            return None

    def stddev(self) -> float | None:
        variance = self.variance()
        return None if variance is None else math.sqrt(variance)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.float_values, self.n, *_shifted(self.s), *_shifted(self.q))

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.float_values, self.n, sm, ss, qm, qs = state
        self.s = sm << ss
        self.q = qm << qs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Moments):
            return NotImplemented
        return self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Moments(n={self.n}, variance={self.variance()})"


class Ordered:
    """A ``first``/``last``/``last_k`` partial: the ``k`` earliest or latest events.

    Values are added as ``(event time, offset, value)``; the partial keeps the ``k`` greatest
    (``newest``) or smallest such triples, sorted newest (or earliest) first, so the order of
    events is by event time, then offset (then value, which only decides between two events at
    the same time and offset, from different partitions), whatever order they are added or
    merged in. ``values()`` reads the kept values in that order.
    """

    __slots__ = ("items", "k", "newest")

    def __init__(self, k: int, *, newest: bool) -> None:
        self.k = k
        self.newest = newest
        self.items: list[tuple[int, int, Any]] = []

    def add(self, item: tuple[int, int, Any]) -> None:
        items = self.items
        if len(items) < self.k:
            items.append(item)
            items.sort(reverse=self.newest)
        elif item > items[-1] if self.newest else item < items[-1]:
            items[-1] = item
            items.sort(reverse=self.newest)

    def merge(self, other: Ordered) -> None:
        merged = self.items + other.items
        merged.sort(reverse=self.newest)
        del merged[self.k :]
        self.items = merged

    def copy(self) -> Ordered:
        clone = Ordered.__new__(Ordered)
        clone.k, clone.newest, clone.items = self.k, self.newest, self.items[:]
        return clone

    def combined(self, other: Ordered) -> Ordered:
        """A new partial of both (neither changes)."""
        clone = Ordered.__new__(Ordered)
        clone.k, clone.newest = self.k, self.newest
        items = self.items + other.items
        items.sort(reverse=self.newest)
        del items[self.k :]
        clone.items = items
        return clone

    def first_value(self) -> Any:
        return self.items[0][2] if self.items else None

    def values(self) -> list[Any]:
        return [item[2] for item in self.items]

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.k, self.newest, self.items)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.k, self.newest, items = state
        self.items = [tuple(item) for item in items]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ordered):
            return NotImplemented
        return self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Ordered(k={self.k}, newest={self.newest}, items={self.items!r})"


class Counts:
    """A ``top_k`` partial: how many times each value occurred, exactly.

    ``top(k)`` reads the ``k`` most frequent values as ``(value, count)`` pairs, by count
    descending, then value ascending: a function of the multiset of values alone. Exact for any
    number of distinct values; the state holds one entry per distinct value of each tile and the
    read costs O(distinct values in the window) (see README, "Aggregations").
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[Any, int] = {}

    def add(self, value: Any) -> None:
        counts = self.counts
        counts[value] = counts.get(value, 0) + 1

    def merge(self, other: Counts) -> None:
        counts = self.counts
        get = counts.get
        for value, n in other.counts.items():
            counts[value] = get(value, 0) + n

    def copy(self) -> Counts:
        clone = Counts.__new__(Counts)
        clone.counts = self.counts.copy()
        return clone

    def combined(self, other: Counts) -> Counts:
        """A new partial of both (neither changes)."""
        clone = self.copy()
        clone.merge(other)
        return clone

    def top(self, k: int) -> list[tuple[Any, int]]:
        """The ``k`` most frequent ``(value, count)`` pairs (JSON: ``[value, count]``)."""
        return heapq.nsmallest(k, self.counts.items(), key=_by_count_then_value)

    def __getstate__(self) -> dict[Any, int]:
        return self.counts

    def __setstate__(self, state: dict[Any, int]) -> None:
        self.counts = dict(state)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Counts):
            return NotImplemented
        return self.counts == other.counts

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Counts({self.counts!r})"


def _by_count_then_value(item: tuple[Any, int]) -> tuple[int, Any]:
    return (-item[1], item[0])


# Buckets of Quantiles, in value order: negative values, zero, positive values (see the class).
_POSITIVE_INF = 1 << 20  # above every finite positive bucket (64 * 1024 + 127 at most)
_ZERO = -(1 << 21)  # below every positive bucket (-64 * 1073 + 64 at least)
_NEGATIVE = -(1 << 22)  # negative x counts in _NEGATIVE - (the bucket of -x), below _ZERO
_AFTER_ALL = 1 << 30
_RECENT_LIMIT = 64


def _bucket(x: float) -> int:
    """The bucket of ``x`` (not NaN): exact integer and binary float arithmetic only."""
    if x > 0.0:
        m, e = _frexp(x)
        try:
            return (e << 6) + int(m * 128.0)
        except OverflowError:  # inf
            return _POSITIVE_INF
    if x < 0.0:
        return _NEGATIVE - _bucket(-x)
    return _ZERO


def _ends(values: bytes) -> tuple[float, float]:
    """The min and max of sorted doubles (``inf, -inf`` when empty)."""
    if not values:
        return math.inf, -math.inf
    return _unpack_double(values, 0)[0], _unpack_double(values, len(values) - 8)[0]


def _count_upto(keys: array[int], cum: array[int], key: int) -> int:
    """How many counted values lie in buckets ``<= key``."""
    i = _bisect_right(keys, key)
    return cum[i - 1] if i else 0


def _midpoint(key: int) -> float:
    """The middle of bucket ``key``: ``(2j + 1) * 2**(e - 8)``, exact (ldexp only rounds for
    buckets of subnormal values, below 2**-1066)."""
    if key > _ZERO:
        if key == _POSITIVE_INF:
            return math.inf
        return _ldexp(((key & 63) << 1) + 129, (key >> 6) - 9)
    if key == _ZERO:
        return 0.0
    return -_midpoint(_NEGATIVE - key)


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
        return p.quantile_with(self.q, None, [v for _, v in extra])


class _PartialAggregator(Aggregator[Any]):
    """The aggregator of a partial object with ``add``/``merge``/``copy`` (Moments, Ordered,
    Counts); ``read`` turns a partial into the feature value."""

    __slots__ = ("_new", "read")

    def __init__(self, new: Callable[[], Any], read: Callable[[Any], Any]) -> None:
        self._new = new
        self.read = read

    def empty(self) -> Any:
        return self._new()

    def add(self, p: Any, t: int, v: Any) -> Any:
        p.add(v)
        return p

    def merge(self, p: Any, q: Any) -> Any:
        p.merge(q)
        return p

    def result(self, p: Any) -> Any:
        return self.read(p)

    def peek(self, p: Any, extra: Extra) -> Any:
        if not extra:
            return self.read(p)
        clone = p.copy()
        for _, v in extra:
            clone.add(v)
        return self.read(clone)


# Aggregations whose values are added as ``(event time, offset, value)`` (their order matters).
STAMPED = frozenset({Aggregation.FIRST, Aggregation.LAST_K})


def partial_aggregator(
    agg: Aggregation, *, k: int | None = None, float_values: bool = False
) -> _PartialAggregator:
    """The aggregator of variance, stddev, first, last (over a window), last_k and top_k."""
    if agg is Aggregation.VARIANCE:
        return _PartialAggregator(lambda: Moments(float_values=float_values), Moments.variance)
    if agg is Aggregation.STDDEV:
        return _PartialAggregator(lambda: Moments(float_values=float_values), Moments.stddev)
    if agg is Aggregation.FIRST:
        return _PartialAggregator(lambda: Ordered(1, newest=False), Ordered.first_value)
    if agg is Aggregation.LAST:
        return _PartialAggregator(lambda: Ordered(1, newest=True), Ordered.first_value)
    if agg is Aggregation.LAST_K:
        assert k is not None
        return _PartialAggregator(lambda: Ordered(k, newest=True), Ordered.values)
    if agg is Aggregation.TOP_K:
        assert k is not None
        return _PartialAggregator(Counts, lambda p: p.top(k))
    raise ValueError(f"{agg.value} has no partial aggregator")


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
    agg: Aggregation,
    quantile: float | None = None,
    *,
    float_sum: bool = False,
    k: int | None = None,
) -> Aggregator[Any]:
    """The aggregator of ``agg``: ``quantile`` is required for approx_percentile, ``k`` for
    last_k and top_k, and ``float_sum`` makes sum/mean/variance of a double field exact (see
    :func:`exact_float`). Lifetime ``first`` and ``last_k`` take ``(t, offset, value)``
    (:data:`STAMPED`); lifetime ``last`` is the engine's own (three slots)."""
    if agg in (
        Aggregation.VARIANCE,
        Aggregation.STDDEV,
        Aggregation.FIRST,
        Aggregation.LAST_K,
        Aggregation.TOP_K,
    ):
        return partial_aggregator(agg, k=k, float_values=float_sum)
    if agg is Aggregation.APPROX_PERCENTILE:
        if quantile is None:
            raise ValueError("approx_percentile needs a quantile in [0, 1]; got None")
        return _Percentile(quantile)
    if float_sum and agg is Aggregation.SUM:
        return _Sum(float_sum=True)
    if float_sum and agg is Aggregation.MEAN:
        return _Mean(float_sum=True)
    return AGGREGATORS[agg]
