"""``freshet run --recovery-dir`` end to end, ``--state-store snapshots`` (the earlier design)
next to ``segments``, in one run, on the same topics, with recovery off as the limit.

1. **Freshness at a steady rate** (``--rate`` events/s for ``--seconds`` s over ``--cards``
   cards): p50/p99 of ``freshet_freshness_seconds``, as ``bench_pipeline.py`` measures it.
2. **Throughput** of ``--stop-at-end`` over a ``--events`` live-shaped topic (as
   ``bench_pipeline.py``'s ``live`` shape), per design.
3. **Recovery after SIGKILL** (``--recovery-entities``, uniform cards, 0 to skip): the flow
   reads the topic, takes a snapshot once caught up, is SIGKILLed; the restart's time from
   spawn to its first record read (a probe record produced at spawn) is the time it takes to
   load the state; also the bytes in the recovery dir and the entities the snapshot holds.

Usage::

    .venv/bin/python tests/bench/state/bench_recovery_flow.py [--rate 5000] [--seconds 20]
        [--cards 100000] [--events 1000000] [--recovery-entities 1000000]
        [--designs off,snapshots,segments] [--skip-freshness] [--skip-throughput]

Needs the dev stack's Kafka; starts its own redis-server.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))

from bench_pipeline import (
    _FRESHET,
    BOOTSTRAP,
    VIEW,
    flow_env,
    free_port,
    freshness,
    private_redis,
    run_flow_to_end,
    scrape,
    topics,
)

from freshet.ops.generator import GeneratorConfig, produce


def design_args(design: str, recovery: Path) -> list[str]:
    if design == "off":
        return ["-w", "1"]
    return ["-w", "1", "--recovery-dir", str(recovery / design), "--state-store", design]


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def freshness_all(args: argparse.Namespace) -> None:
    for design in args.designs:
        with tempfile.TemporaryDirectory(prefix="bench-rec-") as recovery:
            print(f"[{design}]", end=" ")
            args.workers = design_args(design, Path(recovery))
            freshness(args)


def throughput_all(args: argparse.Namespace) -> None:
    with topics(3, 1) as (topic, dlq), private_redis() as redis_url:
        span_ms = int(args.events / 50_000 * 1000)
        counts = produce(
            BOOTSTRAP, topic, view=VIEW, count=args.events, rate=50_000, pace=False,
            config=GeneratorConfig(cards=args.cards, seed=7),
            start_ms=time.time_ns() // 1_000_000 - span_ms,
        )  # fmt: skip
        print(f"throughput, live stream: {counts.total:,} records, {args.cards:,} cards")
        for design in args.designs:
            rates = []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory(prefix="bench-rec-") as recovery:
                    workers = design_args(design, Path(recovery))
                    rates.append(run_flow_to_end(topic, dlq, counts.total, redis_url, workers))
            print(f"  {design:>9}: " + ", ".join(f"{r:,.0f}" for r in rates) + " ev/s")


def read_at_least(port: int, records: int) -> bool:
    return scrape(port).get(f'freshet_events_in_total{{view="{VIEW.name}"}}', 0) >= records


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def recovery_all(args: argparse.Namespace) -> None:
    n = args.recovery_entities
    with topics(3, 1) as (topic, dlq), private_redis() as redis_url:
        counts = produce(
            BOOTSTRAP, topic, view=VIEW, count=n, rate=50_000, pace=False,
            config=GeneratorConfig(cards=n, card_skew=0.0, seed=9, late_fraction=0,
                                   bad_fraction=0),
            start_ms=time.time_ns() // 1_000_000 - n // 50,
        )  # fmt: skip
        print(f"recovery after SIGKILL: {counts.total:,} records over up to {n:,} cards")
        for design in args.designs:
            if design == "off":
                continue
            with (
                tempfile.TemporaryDirectory(prefix="bench-rec-") as recovery,
                tempfile.TemporaryDirectory(prefix="bench-off-") as offline,
            ):
                env = flow_env(redis_url, Path(offline))
                argv = [*_FRESHET, "run", VIEW.name, "--topic", topic, "--dead-letter-topic",
                        dlq, "--snapshot-interval", "5",
                        *design_args(design, Path(recovery))]  # fmt: skip
                port = free_port()
                proc = subprocess.Popen(
                    [*argv, "--metrics-port", str(port)], env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    _wait(partial(read_at_least, port, counts.total), 900, "catch-up")
                    caught = time.monotonic()
                    time.sleep(11)  # two snapshots after the last record
                    snaps = scrape(port).get(
                        f'freshet_state_snapshot_seconds_count{{view="{VIEW.name}"}}', 0
                    )
                finally:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                size = dir_mb(Path(recovery))
                port = free_port()
                started = time.monotonic()
                proc = subprocess.Popen(
                    [*argv, "--metrics-port", str(port)], env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                produce(BOOTSTRAP, topic, view=VIEW, count=1, rate=1, pace=False,
                        config=GeneratorConfig(cards=1, seed=10, late_fraction=0,
                                               bad_fraction=0))  # fmt: skip
                try:
                    _wait(partial(read_at_least, port, 1), 900, "the probe record")
                    took = time.monotonic() - started
                finally:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                print(
                    f"  {design:>9}: recovery dir {size:,.0f} MB after catching up "
                    f"({snaps:,.0f} shard snapshots, {time.monotonic() - caught:.0f} s); "
                    f"restart to first record read: {took:.1f} s"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=5_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--recovery-entities", type=int, default=1_000_000)
    parser.add_argument("--designs", default="off,snapshots,segments")
    parser.add_argument("--skip-freshness", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    args.designs = args.designs.split(",")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if not args.skip_freshness:
        freshness_all(args)
    if not args.skip_throughput:
        throughput_all(args)
    if args.recovery_entities:
        recovery_all(args)


if __name__ == "__main__":
    main()
