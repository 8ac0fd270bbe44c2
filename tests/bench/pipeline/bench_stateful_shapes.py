"""Which Bytewax stateful shape carries freshet's per-entity engine state? Measured, not guessed.

Runs 1,000,000 events over 100,000 keys (uniform) through three shapes with a trivial
per-entity state ``[count, sum, max_t]`` and one pending wall-clock expiry timer per entity
(the engine's normal situation: every non-empty window has a boundary ahead):

  a. ``stateful_batch`` keyed by entity, ``notify_at`` per entity;
  b. ``stateful`` (one ``on_item`` per event) keyed by entity;
  c. ``stateful_batch`` keyed by a shard of the entity (crc32 % N); state = dict of entity
     states; one timer per shard; snapshot re-pickles only dirty entities and reuses the
     cached bytes of clean ones, so its cost follows what changed.

Each shape runs with recovery off and with recovery on (1 s epochs, SQLite snapshots), and
prints events/s plus the recovery DB size. Usage::

    .venv/bin/python tests/bench/pipeline/bench_stateful_shapes.py [--events N] [--keys K]
"""

from __future__ import annotations

import argparse
import pickle
import random
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic, StatefulLogic
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

_FAR = datetime.now(UTC) + timedelta(hours=1)  # timers pending, never firing


class _EntityBatch(StatefulBatchLogic[Any, Any, Any]):
    def __init__(self, state: list[Any] | None) -> None:
        self.s = state if state is not None else [0, 0.0, 0]

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        s = self.s
        out = []
        for t, amount in values:
            s[0] += 1
            s[1] += amount
            s[2] = max(s[2], t)
            out.append((s[2], s[0], s[1]))
        return out, False

    def notify_at(self) -> datetime | None:
        return _FAR

    def snapshot(self) -> Any:
        return tuple(self.s)


class _EntityItem(StatefulLogic[Any, Any, Any]):
    def __init__(self, state: list[Any] | None) -> None:
        self.s = state if state is not None else [0, 0.0, 0]

    def on_item(self, value: Any) -> tuple[Iterable[Any], bool]:
        s = self.s
        t, amount = value
        s[0] += 1
        s[1] += amount
        s[2] = max(s[2], t)
        return ((s[2], s[0], s[1]),), False

    def notify_at(self) -> datetime | None:
        return _FAR

    def snapshot(self) -> Any:
        return tuple(self.s)


class _Shard(StatefulBatchLogic[Any, Any, Any]):
    def __init__(self, resume: dict[str, bytes] | None) -> None:
        self.states: dict[str, list[Any]] = {}
        self.cache: dict[str, bytes] = dict(resume or {})
        for entity, blob in self.cache.items():
            self.states[entity] = pickle.loads(blob)
        self.dirty: set[str] = set()

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        states = self.states
        dirty = self.dirty
        out = []
        for entity, t, amount in values:
            s = states.get(entity)
            if s is None:
                s = states[entity] = [0, 0.0, 0]
            s[0] += 1
            s[1] += amount
            s[2] = max(s[2], t)
            dirty.add(entity)
            out.append((entity, s[2], s[0], s[1]))
        return out, False

    def notify_at(self) -> datetime | None:
        return _FAR

    def snapshot(self) -> Any:
        cache = self.cache
        for entity in self.dirty:
            cache[entity] = pickle.dumps(self.states[entity], protocol=5)
        self.dirty.clear()
        return dict(cache)


def _events(n: int, keys: int, seed: int = 7) -> list[tuple[str, int, float]]:
    rng = random.Random(seed)
    names = [f"card_{i:06d}" for i in range(keys)]
    t0 = 1_700_000_000_000
    return [(names[rng.randrange(keys)], t0 + i, rng.random() * 100) for i in range(n)]


def _flow(shape: str, events: list[Any], shards: int, out: list[Any]) -> Dataflow:
    flow = Dataflow(f"shape_{shape}")
    inp = op.input("inp", flow, TestingSource(events, batch_size=1000))
    if shape == "c":
        keyed = op.key_on("shard", inp, lambda e: str(zlib.crc32(e[0].encode()) % shards))
        rows = op.stateful_batch("engine", keyed, _Shard)
    else:
        keyed = op.map("key", inp, lambda e: (e[0], (e[1], e[2])))
        builder: Callable[[Any], Any] = _EntityBatch if shape == "a" else _EntityItem
        rows = (op.stateful_batch if shape == "a" else op.stateful)("engine", keyed, builder)
    count = op.count_final("rows", op.map("one", rows, lambda _: "n"), lambda k: k)
    op.output("out", count, TestingSink(out))
    return flow


def _run(shape: str, events: list[Any], shards: int, recovery: bool) -> tuple[float, int]:
    out: list[Any] = []
    flow = _flow(shape, events, shards, out)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = None
        if recovery:
            init_db_dir(Path(tmp), 1)
            cfg = RecoveryConfig(tmp)
        start = time.perf_counter()
        run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=cfg)
        elapsed = time.perf_counter() - start
        db_bytes = sum(p.stat().st_size for p in Path(tmp).glob("*"))
    assert out == [("n", len(events))], out
    return len(events) / elapsed, db_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--shapes", default="a,b,c1024,c4096")
    args = parser.parse_args()
    events = _events(args.events, args.keys)
    print(f"{args.events:,} events over {args.keys:,} keys, TestingSource batch 1000, 1 worker")
    for spec in args.shapes.split(","):
        shape, shards = spec[0], int(spec[1:] or 0)
        for recovery in (False, True):
            rates, db = [], 0
            for _ in range(args.repeats):
                rate, db = _run(shape, events, shards, recovery)
                rates.append(rate)
            label = f"{spec:6s} recovery={'on ' if recovery else 'off'}"
            print(
                f"{label}  median {statistics.median(rates):>9,.0f} ev/s  "
                f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})  recovery db {db / 1e6:.1f} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
