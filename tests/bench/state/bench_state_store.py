"""Recovery snapshots of engine state, the two designs side by side in one run, in process.

``snapshots`` (the earlier design): each shard's snapshot is its whole ``{entity: (next expiry,
pickled state)}`` dict, which Bytewax pickles at every epoch. ``segments``
(``freshet.stream.state_store``): a shard appends the states that changed to its segment file
and its snapshot is a pointer.

For each design, in a fresh subprocess (so resident memory is its own): 256 engine shards of
``card_txn`` (``--view lifetime`` adds a lifetime count, so drained states cannot be dropped)
take one event for each of ``--held`` entities and a first snapshot; then, per ``--changed``
count, that many entities take one more event and every shard snapshots. Reported per epoch:
the bytes written (Bytewax's pickled snapshots + segment bytes appended) next to ``changed x
mean pickled state size``, and the time (``snapshot()`` + Bytewax's ``pickle.dumps`` of its
result, the flow stops meanwhile). Then: resident memory (RSS, and after the clock moved past
the longest window + lateness and every expiry fired, ``--idle``), and the time to rebuild the
256 shards from the last snapshots (what a restart after SIGKILL loads: ``pickle.loads`` of
each snapshot and, with segments, reading the files up to the pointers).

Usage::

    .venv/bin/python tests/bench/state/bench_state_store.py [--held 1000000]
        [--changed 10000,100000] [--designs snapshots,segments] [--view card_txn|lifetime]
        [--idle]

Bytewax is not involved (its own cost per snapshot key is the same for both designs: one
sqlite row per shard); the end-to-end figures with Kafka are in ``bench_recovery_flow.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from freshet.dsl.definitions import Aggregation, Feature
from freshet.dsl.registry import get_view
from freshet.engine.view_engine import ViewEngine
from freshet.stream.pipeline import FlowOptions, ShardLogic, shard_of

SHARDS = 256
T0 = 1_714_521_600_000


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def view_of(name: str) -> Any:
    view = get_view("card_txn")
    if name == "lifetime":
        view = replace(view, features=(*view.features, Feature("txn_count", Aggregation.COUNT)))
    return view


def build(view: Any, clock: Clock, state_dir: Path | None, resumes: list[Any]) -> list[ShardLogic]:
    options = FlowOptions(
        shards=SHARDS, persist_state=True, state_dir=state_dir, pickle_ahead_ms=None
    )
    engine = ViewEngine(view, clock=clock)
    return [ShardLogic(view, engine, options, r, clock_ms=clock) for r in resumes]


def snapshot_all(shards: list[ShardLogic]) -> tuple[list[bytes], float]:
    """Every shard's snapshot as Bytewax writes it (pickled), and the seconds it took."""
    started = time.perf_counter()
    out = [pickle.dumps(s.snapshot(), protocol=pickle.HIGHEST_PROTOCOL) for s in shards]
    return out, time.perf_counter() - started


def dir_bytes(path: Path | None) -> int:
    if path is None:
        return 0
    return sum(p.stat().st_size for p in path.rglob("*.seg"))


def apply(shards: list[ShardLogic], entities: list[str], t: int, offset: int) -> None:
    by_shard: dict[int, list[tuple[Any, ...]]] = {}
    for i, entity in enumerate(entities):
        event = (entity, t, (12.5 + i % 100, f"m{i % 50}"), 0, offset + i, t)
        by_shard.setdefault(shard_of(entity, SHARDS), []).append(event)
    for shard, events in by_shard.items():
        for start in range(0, len(events), 1000):
            shards[shard].on_batch([events[start : start + 1000]])


def one(design: str, held: int, changed: list[int], view_name: str, idle: bool) -> dict[str, Any]:
    view = view_of(view_name)
    clock = Clock(T0)
    tmp = tempfile.TemporaryDirectory(prefix="bench-state-", dir=os.environ.get("BENCH_TMP"))
    state_dir = Path(tmp.name) if design == "segments" else None
    entities = [f"card_{i:08d}" for i in range(held)]
    # Bytewax builds a shard's logic when its first item arrives: the shard's first batch.
    shards = build(view, clock, state_dir, [None] * SHARDS)
    rss0 = rss_mb()
    started = time.perf_counter()
    apply(shards, entities, T0, 0)
    load_s = time.perf_counter() - started
    snaps, first_s = snapshot_all(shards)
    gc.collect()
    out: dict[str, Any] = {
        "design": design,
        "held": held,
        "load_s": load_s,
        "first_snapshot_s": first_s,
        "first_snapshot_bytes": sum(map(len, snaps)) + dir_bytes(state_dir),
        "rss_mb": rss_mb() - rss0,
        "epochs": [],
    }
    rng = random.Random(1)
    offset = held
    for n, k in enumerate(changed):
        clock.now = T0 + (n + 1) * 10_000
        chosen = rng.sample(entities, k)
        apply(shards, chosen, clock.now, offset)
        offset += k
        sizes = [len(pickle.dumps(s._states[e], protocol=5)) for e in chosen[:2000]
                 for s in [shards[shard_of(e, SHARDS)]] if e in s._states]  # fmt: skip
        before = dir_bytes(state_dir)
        snaps, took = snapshot_all(shards)
        written = sum(map(len, snaps)) + dir_bytes(state_dir) - before
        out["epochs"].append(
            {
                "changed": k,
                "state_bytes_mean": sum(sizes) / len(sizes),
                "bytes": written,
                "seconds": took,
            }
        )
    out["rss_after_epochs_mb"] = rss_mb() - rss0
    if idle:
        # Past the longest window (24 h) + lateness: every expiry fires, the states drain.
        clock.now = T0 + 25 * 3_600_000
        for shard in shards:
            shard.on_notify()
        snaps, _ = snapshot_all(shards)
        del shard
        gc.collect()
        out["rss_idle_mb"] = rss_mb() - rss0
        out["idle_in_memory"] = sum(len(s._states) for s in shards)
    # A restart: the shards rebuilt from their last snapshots (as Bytewax hands them back).
    del shards
    gc.collect()
    started = time.perf_counter()
    resumed = build(view, clock, state_dir, [pickle.loads(s) for s in snaps])
    out["resume_s"] = time.perf_counter() - started
    out["resume_entities"] = sum(len(s._saved) for s in resumed)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000
    tmp.cleanup()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--held", type=int, default=1_000_000)
    parser.add_argument("--changed", default="10000,100000")
    parser.add_argument("--designs", default="snapshots,segments")
    parser.add_argument("--view", default="card_txn", choices=["card_txn", "lifetime"])
    parser.add_argument("--idle", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    changed = [int(c) for c in args.changed.split(",") if c]
    if args.one:
        print(json.dumps(one(args.one, args.held, changed, args.view, args.idle)))
        return
    print(
        f"{args.held:,} entities held in {SHARDS} shards of {args.view}, one event each; "
        f"then epochs changing {', '.join(f'{c:,}' for c in changed)} of them "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    for design in args.designs.split(","):
        argv = [sys.executable, __file__, "--one", design, "--held", str(args.held),
                "--changed", args.changed, "--view", args.view]  # fmt: skip
        if args.idle:
            argv.append("--idle")
        r = json.loads(subprocess.run(argv, check=True, capture_output=True).stdout)
        print(
            f"{design}: load {r['load_s']:.1f} s, first snapshot {r['first_snapshot_s']:.2f} s "
            f"/ {r['first_snapshot_bytes'] / 1e6:,.1f} MB; RSS {r['rss_mb']:,.0f} MB after the "
            f"first snapshot, {r['rss_after_epochs_mb']:,.0f} MB after the epochs"
            + (
                f", {r['rss_idle_mb']:,.0f} MB once idle ({r['idle_in_memory']:,} states still "
                "in memory)"
                if "rss_idle_mb" in r
                else ""
            )
        )
        for e in r["epochs"]:
            ideal = e["changed"] * e["state_bytes_mean"]
            print(
                f"  epoch changing {e['changed']:>7,}: {e['bytes'] / 1e6:>8,.2f} MB written "
                f"({e['bytes'] / ideal:5.2f} x changed x {e['state_bytes_mean']:.0f} B state), "
                f"snapshot {e['seconds'] * 1000:>7,.0f} ms"
            )
        print(
            f"  restart: {r['resume_entities']:,} entities resumable, shards rebuilt in "
            f"{r['resume_s']:.2f} s; peak RSS {r['peak_rss_mb']:,.0f} MB"
        )


if __name__ == "__main__":
    main()
