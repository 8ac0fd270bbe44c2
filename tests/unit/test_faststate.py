"""``EntityState.__getstate__``'s walk in C (``flows/engine/_faststate.c``) packs exactly as the
Python walk: the same pickles for engine states of every aggregation, and for the edges of
the big-int rule (ints outside (-2**64, 2**64) become ``(mantissa, shift)``)."""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import ALL_AGGS, _interleave, _run_engine, _with_ends, entity_streams

from freshet.engine import view_engine as engine


def c_pack(d: list[Any]) -> list[Any]:
    if engine._c_pack_d is None:
        pytest.fail("freshet.engine._faststate is not built: `pip install -e .` needs a C compiler")
    return engine._c_pack_d(d, engine._Packed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_engine_states_pickle_the_same_with_the_c_walk(data: st.DataObject) -> None:
    streams = data.draw(entity_streams(ALL_AGGS))
    ops = _with_ends(_interleave(streams, random.Random(0)), streams)
    _, states = _run_engine(ALL_AGGS, ops)
    for state in states.values():
        assert pickle.dumps(c_pack(state.d)) == pickle.dumps(engine._pack_d_py(state.d))


def test_the_big_int_rule_and_nesting_at_their_edges() -> None:
    big = 1 << 64
    d: list[Any] = [
        big - 1, big, -big, -big + 1, 0, -5, True, 3 << 200, -(7 << 300), 1.5, "s", None,
        [[1 << 100, 2.5, "x"], (big, 3), [True, -big]],  # tiles: each packed
        (big << 3, None, 4),  # lifetime partials: a tuple
        [], [1, big], {"m1": 1}, {"m2"},  # not tiles: left as they are
        [[1 << 90]],  # a single tile
    ]  # fmt: skip
    packed = c_pack(d)
    assert pickle.dumps(packed) == pickle.dumps(engine._pack_d_py(d))
    assert packed[0] == big - 1
    assert packed[1] == (1, 64)
    assert type(packed[1]) is engine._Packed
    assert packed[2] == (-1, 64)
    assert packed[7] == (3, 200)
    assert packed[13] == ((1, 67), None, 4)
    assert packed[15] is d[15]  # a list of ints, not of tiles: unchanged
    assert packed[-1] == [[(1, 90)]]
    assert [engine._unpack(x) for x in packed[:10]] == d[:10]
