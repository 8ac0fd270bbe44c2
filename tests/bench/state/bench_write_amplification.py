"""State bytes written per epoch under skewed live traffic, by how soon states are pickled.

With ``--recovery-dir`` a shard pickles an entity's state ``pickle_ahead_ms`` after the entity
was last touched and writes it to its segment file soon after (``FLUSH_AHEAD_BYTES``), so the
snapshot that ends the epoch has little left to do (the flow stops reading until it returns).
An entity touched again after being written is written again in the same epoch: this measures
that write amplification against the issue's bound (bytes per epoch within 2x of changed
entities x state size), for several ``pickle_ahead_ms``, in process, on a simulated clock.

Traffic: ``--rate`` events/s in 100 ms steps for ``--epochs`` epochs of 10 s over ``--cards``
cards with Zipf-like weights (1 / rank ** ``--skew``), 16 shards of the demo view ``card_txn``.

Usage::

    .venv/bin/python tests/bench/state/bench_write_amplification.py [--ahead 200,2000]
        [--cards 100000] [--rate 5000] [--epochs 4] [--skew 0.6]
"""

from __future__ import annotations

import argparse
import pickle
import random
import subprocess
import sys
import tempfile
from pathlib import Path

SHARDS = 16
T0 = 1_714_521_600_000


def one(ahead: int, args: argparse.Namespace) -> None:
    from freshet.dsl.registry import get_view
    from freshet.engine.view_engine import ViewEngine
    from freshet.stream import metrics
    from freshet.stream.pipeline import FlowOptions, ShardLogic, shard_of

    view = get_view("card_txn")
    now = [T0]

    def clock() -> int:
        return now[0]

    rng = random.Random(1)
    cards = [f"card-{i:07d}" for i in range(args.cards)]
    weights = [1 / (i + 1) ** args.skew for i in range(args.cards)]
    per_step = int(args.rate / 10)
    with tempfile.TemporaryDirectory() as state_dir:
        options = FlowOptions(
            shards=SHARDS, persist_state=True, state_dir=Path(state_dir), pickle_ahead_ms=ahead
        )
        engine = ViewEngine(view, clock=clock)
        shards = [ShardLogic(view, engine, options, None, clock_ms=clock) for _ in range(SHARDS)]
        offset = 0
        changed_per_epoch = []
        for _ in range(args.epochs):
            changed: set[str] = set()
            for _ in range(100):  # 100 ms steps
                now[0] += 100
                by_shard: dict[int, list[tuple[object, ...]]] = {}
                for i in rng.choices(range(args.cards), weights, k=per_step):
                    card = cards[i]
                    changed.add(card)
                    offset += 1
                    event = (card, now[0] - 50, (rng.random() * 100, "m1"), 0, offset, now[0])
                    by_shard.setdefault(shard_of(card, SHARDS), []).append(event)
                for shard, events in by_shard.items():
                    shards[shard].on_batch([events])
                for logic in shards:
                    due = logic.notify_at()
                    if due is not None and due.timestamp() * 1000 <= now[0]:
                        logic.on_notify()
            for logic in shards:
                logic.snapshot()
            changed_per_epoch.append(len(changed))
        states = [s for logic in shards for s in logic._states.values()]
        size = sum(len(pickle.dumps(s, protocol=5)) for s in states) / max(len(states), 1)
    written = metrics.STATE_BYTES_WRITTEN.labels(view=view.name)._value.get()
    pickled = metrics.STATE_ENTITIES_PICKLED.labels(view=view.name)._value.get()
    changed_total = sum(changed_per_epoch)
    print(
        f"  pickle ahead {ahead:>5} ms: {pickled / args.epochs:,.0f} states written per epoch "
        f"for {changed_total / args.epochs:,.0f} entities changed; "
        f"{written / args.epochs / 1e6:,.1f} MB per epoch = "
        f"{written / (changed_total * size):.2f} x changed x {size:.0f} B"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ahead", default="200,2000")
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=5_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--skew", type=float, default=0.6)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        one(args.one, args)
        return
    print(
        f"{args.rate:,.0f} events/s over {args.cards:,} cards (weights 1/rank^{args.skew}), "
        f"{args.epochs} epochs of 10 s, {SHARDS} shards:"
    )
    for ahead in args.ahead.split(","):
        # A process per setting: the metrics counters start at zero.
        argv = [sys.executable, __file__, "--one", ahead, "--cards", str(args.cards)]
        argv += ["--rate", str(args.rate), "--epochs", str(args.epochs), "--skew", str(args.skew)]
        subprocess.run(argv, check=True)


if __name__ == "__main__":
    main()
