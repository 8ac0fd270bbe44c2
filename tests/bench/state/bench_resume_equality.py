"""``freshet run --recovery-dir`` SIGKILLed mid-stream and restarted ends where an
uninterrupted run ends, at ``--entities`` (default 1,000,000) records over as many cards
(drawn uniformly, so about 63 % of them occur: ``--entities 1600000`` gives 1.01 million
distinct entities).

What and why. ``bench_recovery_flow.py`` times a restart; this shows that the restart is also
*right* at full size, where the unit and integration tests only go to a few thousand entities:

1. ``--entities`` records over that many cards (uniform, no late or malformed records, event
   times over the last ``entities / 50,000`` s) go to a fresh 3-partition topic.
2. **Run A**: ``freshet run card_txn -w 1 --recovery-dir R --state-store segments
   --snapshot-interval 5`` into a private Redis and offline dir, SIGKILLed (whole process
   group) once it has read ``--kill-at`` of the records and snapshotted every engine shard at
   least once (``freshet_state_snapshot_seconds_count >= shards``); restarted with the same
   command plus ``--stop-at-end`` (``--kill-at 0.55,0.8``: killed again, the second restart
   killed once it has read the difference), the last restart runs to the end of the topic.
3. **Run B**, the reference: the same topic, ``--stop-at-end``, no recovery, into a second
   private Redis and offline dir.
4. Both are checked against the engine's brute-force reference (``ViewEngine`` over the
   records as Kafka stored them, per entity in offset order: ``pipeline_harness.Reference``),
   and against each other:

   * Redis: every key of the view (``SCAN``) is a reference entity, and each entity's record
     (read with ``MGET`` of 10,000 keys) is the reference's row at its ``(as_of, offset)``
     and reflects all of the entity's events (``pipeline_harness.check_redis``). A and B hold
     the same record, or differ only because one of them has already written a later expiry
     row, which wall-clock timers emit once the flow has run long enough (5 min for the 5m
     window): both records are then reference rows.
   * Offline log (``read_log(dedupe=False)``): each entity's rows are its event rows, each
     exactly once (nothing lost, nothing duplicated; an expiry row identical to an event row,
     which the engine may emit by design, may show twice), plus a prefix of its expiry rows;
     nothing else. A and B are then equal up to the length of those prefixes.

Printed: records, entities, records read at each kill, recovery dir size at each kill,
restart to first record read, time of the resumed run and of the reference run, and the
comparison's counts. Exits 1 on any mismatch.

Usage::

    .venv/bin/python tests/bench/state/bench_resume_equality.py [--entities 1000000]
        [--kill-at 0.55[,0.8]] [--snapshot-interval 5] [--batch-size 10000] [--seed 11]
        [--timeout 900]

A quick try: ``--entities 50000 --batch-size 200 --snapshot-interval 1`` (at the defaults
50,000 records are read before the first snapshot, so no kill falls mid-stream).

Needs the dev stack's Kafka (``freshet dev up``); starts its own redis-servers. Memory: a few
GB at 1,000,000 entities (the reference and both offline logs as Python rows).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))

import pyarrow as pa
from bench_pipeline import (
    _FRESHET,
    BOOTSTRAP,
    VIEW,
    flow_env,
    free_port,
    private_redis,
    scrape,
    topics,
)
from bench_recovery_flow import dir_mb
from pipeline_harness import Reference, read_topic

from freshet.ops.generator import GeneratorConfig, produce
from freshet.sinks.parquet_log import read_log
from freshet.sinks.redis_store import connect, decode_record, record_key, scan_entities

LAYOUT = VIEW.layout()
_SHARDS = 256  # freshet run's default --shards
_MGET_CHUNK = 10_000

# One row of an entity as compared here: (as_of, partition, offset, values).
RowKey = tuple[int, int, int, tuple[Any, ...]]


def metric(port: int, name: str) -> float:
    return scrape(port).get(f'{name}{{view="{VIEW.name}"}}', 0.0)


class Flow:
    """``freshet run …`` as a child process in its own process group; output to ``log``."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.started = time.monotonic()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--metrics-port", str(self.port)], env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def read(self) -> float:
        return metric(self.port, "freshet_events_in_total")

    def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``predicate`` (bounded); seconds since spawn when it held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"freshet run exited ({self.proc.returncode}) waiting for {what}:\n"
                    + self.tail()
                )
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}:\n{self.tail()}")

    def finish(self, timeout: float) -> float:
        """Wait for exit 0 (bounded); seconds since spawn."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"freshet run did not finish in {timeout:g} s") from None
        if code != 0:
            raise RuntimeError(f"freshet run exited {code}:\n{self.tail()}")
        return time.monotonic() - self.started

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, no clean-up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class RunA:
    kills: list[tuple[float, float, float]] = field(default_factory=list)  # read, snaps, MB
    # spawn -> first record read, s (None: it had nothing left to read)
    restarts: list[float | None] = field(default_factory=list)
    first_run_s: float = 0.0
    resumed_s: float = 0.0
    resumed_read: float = 0.0


def first_record(flow: Flow, timeout: float) -> float | None:
    """Seconds from spawn to the first record read; None if it exits having read none."""
    took = flow.until(lambda: flow.read() >= 1 or flow.proc.poll() is not None, timeout,
                      "the first record")  # fmt: skip
    return None if flow.proc.poll() is not None and flow.read() < 1 else took


def run_a(args: argparse.Namespace, topic: str, dlq: str, redis_url: str, tmp: Path) -> RunA:
    recovery = tmp / "recovery"
    argv = [*_FRESHET, "run", VIEW.name, "--topic", topic, "--dead-letter-topic", dlq,
            "-w", "1", "--recovery-dir", str(recovery), "--state-store", "segments",
            "--snapshot-interval", str(args.snapshot_interval),
            "--batch-size", str(args.batch_size)]  # fmt: skip
    env = flow_env(redis_url, tmp / "offline-a")
    out = RunA()
    done = 0.0
    for i, fraction in enumerate(args.kill_at):
        flow = Flow(argv + (["--stop-at-end"] if i else []), env, tmp / "flow-a.log")
        threshold = (fraction - done) * args.total
        done = fraction
        try:
            if i:
                out.restarts.append(first_record(flow, args.timeout))

            def due(f: Flow = flow, need: float = threshold) -> bool:
                metrics = scrape(f.port)
                label = f'{{view="{VIEW.name}"}}'
                return (
                    metrics.get(f"freshet_events_in_total{label}", 0) >= need
                    and metrics.get(f"freshet_state_snapshot_seconds_count{label}", 0) >= _SHARDS
                )

            took = flow.until(due, args.timeout, f"{threshold:,.0f} records read and a snapshot")
            metrics = scrape(flow.port)
        finally:
            flow.kill()
        if i == 0:
            out.first_run_s = took
        label = f'{{view="{VIEW.name}"}}'
        out.kills.append(
            (
                metrics.get(f"freshet_events_in_total{label}", 0),
                metrics.get(f"freshet_state_snapshot_seconds_count{label}", 0),
                dir_mb(recovery),
            )
        )
    flow = Flow([*argv, "--stop-at-end"], env, tmp / "flow-a.log")
    try:
        out.restarts.append(first_record(flow, args.timeout))
        # Its last /metrics before it exits: the records it read (it snapshots and closes
        # its sinks after reading the last one, so the last scrape sees them all).
        last = [0.0]

        def exited() -> bool:
            last.append(flow.read())
            return flow.proc.poll() is not None

        flow.until(exited, args.timeout, "the resumed run to end")
        out.resumed_s = flow.finish(30)
        out.resumed_read = max(last)
    finally:
        flow.kill()
    return out


def run_b(args: argparse.Namespace, topic: str, dlq: str, redis_url: str, tmp: Path) -> float:
    argv = [*_FRESHET, "run", VIEW.name, "--topic", topic, "--dead-letter-topic", dlq,
            "-w", "1", "--batch-size", str(args.batch_size), "--stop-at-end"]  # fmt: skip
    flow = Flow(argv, flow_env(redis_url, tmp / "offline-b"), tmp / "flow-b.log")
    try:
        return flow.finish(args.timeout)
    finally:
        flow.kill()


# -- comparison ---------------------------------------------------------------------------------


def log_rows(root: Path) -> dict[str, Counter[RowKey]]:
    """The view's offline log, ``dedupe=False``: entity -> multiset of its rows."""
    table = read_log(root, VIEW.name, dedupe=False)
    entities = table["entity"].to_pylist()
    as_of = table["as_of"].cast(pa.int64()).to_pylist()  # exact epoch ms
    partition = table["partition"].to_pylist()
    offset = table["offset"].to_pylist()
    values = zip(*(table[n].to_pylist() for n in LAYOUT.feature_names), strict=True)
    del table
    out: dict[str, Counter[RowKey]] = defaultdict(Counter)
    for entity, t, p, o, v in zip(entities, as_of, partition, offset, values, strict=True):
        out[entity][(t, p, o, v)] += 1
    return dict(out)


@dataclass
class LogCheck:
    rows: int = 0
    lost: int = 0
    duplicated: int = 0
    twice_by_design: int = 0
    invented: int = 0
    expiry_rows: int = 0
    bad_entities: int = 0


def check_log(ref: Reference, got: dict[str, Counter[RowKey]]) -> LogCheck:
    """Each entity's rows: its event rows once each, then a prefix of its expiry rows."""
    out = LogCheck(rows=sum(c.total() for c in got.values()))
    for entity in got.keys() - ref.applied.keys():
        out.invented += got[entity].total()
        out.bad_entities += 1
    for entity, applied_rows in ref.applied.items():
        applied = {(r.as_of, r.partition, r.offset, r.values) for r in applied_rows}
        flushed = [(r.as_of, r.partition, r.offset, r.values) for r in ref.flushed[entity]]
        expiries = [r for r in flushed if r not in applied]
        by_design = applied.intersection(flushed)
        mine = got.get(entity, Counter())
        lost = len(applied - mine.keys())
        extra = mine.keys() - applied
        invented = len(extra - set(expiries[: len(extra)]))
        keys = Counter[tuple[int, int, int]]()
        for (t, p, o, _), count in mine.items():
            keys[t, p, o] += count
        copies = sum(count - 1 for count in keys.values())
        designed = sum(min(mine[r], 2) - 1 for r in by_design if r in mine)
        out.lost += lost
        out.invented += invented
        out.twice_by_design += designed
        out.duplicated += copies - designed
        out.expiry_rows += len(extra) - invented
        out.bad_entities += bool(lost or invented or copies - designed)
    return out


Record = tuple[int, int, tuple[Any, ...]]  # as_of, offset, values


def redis_records(url: str, entities: list[str]) -> tuple[dict[str, Record], set[str]]:
    """Each entity's stored record (MGET in chunks), and every entity with a key (SCAN)."""
    client = connect(url)
    keyed = set(scan_entities(client, LAYOUT, count=_MGET_CHUNK))
    out: dict[str, Record] = {}
    for start in range(0, len(entities), _MGET_CHUNK):
        chunk = entities[start : start + _MGET_CHUNK]
        for entity, raw in zip(chunk, client.mget([record_key(LAYOUT, e) for e in chunk]),
                               strict=True):  # fmt: skip
            if raw is not None:
                as_of, offset, values = decode_record(raw)
                out[entity] = (as_of, offset, tuple(values))
    client.close()
    return out, keyed


def redis_valid(ref: Reference, entity: str, record: Record | None) -> bool:
    """``check_redis``'s test: the reference's row at the record's ``(as_of, offset)``,
    reflecting all of the entity's events."""
    if record is None:
        return False
    as_of, offset, values = record
    if as_of < ref.max_event_time[entity]:
        return False
    row = ref.row_at(entity, as_of, offset)
    return row is not None and row.values == values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, default=1_000_000,
                        help="records produced, over as many cards")  # fmt: skip
    parser.add_argument(
        "--kill-at", default="0.55",
        help="SIGKILL points, fractions of the records read: 0.55 (one kill) or 0.55,0.8",
    )  # fmt: skip
    parser.add_argument("--snapshot-interval", type=int, default=5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--batch-size", type=int, default=10_000,
        help="freshet run --batch-size (its default; smaller slows run A so that a small "
        "--entities is still killed mid-stream)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="bound of every wait for a flow process, s")  # fmt: skip
    args = parser.parse_args()
    args.kill_at = [float(f) for f in args.kill_at.split(",")]
    if not all(0 < f < 1 for f in args.kill_at) or args.kill_at != sorted(set(args.kill_at)):
        parser.error("--kill-at takes increasing fractions between 0 and 1")
    n = args.entities
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    with (
        topics(3, 1) as (topic, dlq),
        private_redis() as redis_a,
        private_redis() as redis_b,
        tempfile.TemporaryDirectory(prefix="bench-resume-") as tmpdir,
    ):
        tmp = Path(tmpdir)
        counts = produce(
            BOOTSTRAP, topic, view=VIEW, count=n, rate=50_000, pace=False,
            config=GeneratorConfig(cards=n, card_skew=0.0, seed=args.seed, late_fraction=0,
                                   bad_fraction=0),
            start_ms=time.time_ns() // 1_000_000 - n // 50,
        )  # fmt: skip
        args.total = counts.total
        print(
            f"{counts.total:,} records over {n:,} cards (uniform), event times over "
            f"{n / 50_000:,.0f} s, 3 partitions; produced in {counts.seconds:.1f} s",
            flush=True,
        )

        a = run_a(args, topic, dlq, redis_a, tmp)
        print(
            f"run A: freshet run -w 1 --recovery-dir --state-store segments "
            f"--snapshot-interval {args.snapshot_interval}",
            flush=True,
        )
        for i, (read, snaps, size) in enumerate(a.kills):
            print(
                f"  kill {i + 1}: SIGKILL after {read:,.0f} records read by that process "
                f"({snaps:,.0f} shard snapshots{f', {a.first_run_s:.1f} s' if i == 0 else ''});"
                f" recovery dir {size:,.0f} MB"
            )
            if read >= counts.total:
                print("  (that process had read every record: not a kill mid-stream; try a "
                      "smaller --batch-size or --snapshot-interval)")  # fmt: skip
            first = a.restarts[i]
            print(
                f"  restart {i + 1}: spawn to first record read "
                + ("-- (nothing left to read)" if first is None else f"{first:.1f} s")
            )
        # The last restart read from its resume point to the end; with one kill, the killed
        # process had read from the start, so the difference is what the restart read again.
        resumed_at = counts.total - a.resumed_read
        again = f", {a.kills[0][0] - resumed_at:,.0f} of them again" if len(a.kills) == 1 else ""
        print(
            f"  resumed run (--stop-at-end): spawn to exit {a.resumed_s:.1f} s, read "
            f"{a.resumed_read:,.0f} records (resumed at record {resumed_at:,.0f}{again})",
            flush=True,
        )
        ref_s = run_b(args, topic, dlq, redis_b, tmp)
        print(f"run B (reference, no recovery, --stop-at-end): spawn to exit {ref_s:.1f} s",
              flush=True)  # fmt: skip

        started = time.monotonic()
        ref = Reference.of(VIEW, read_topic(BOOTSTRAP, topic, timeout=600))
        entities = sorted(ref.applied)
        print(
            f"brute-force reference: {len(entities):,} entities, "
            f"{sum(map(len, ref.applied.values())):,} event rows, {ref.late} late, {ref.bad} bad "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )

        rec_a, keyed_a = redis_records(redis_a, entities)
        rec_b, keyed_b = redis_records(redis_b, entities)
        wanted = set(entities)
        bad_a = sum(not redis_valid(ref, e, rec_a.get(e)) for e in entities)
        bad_b = sum(not redis_valid(ref, e, rec_b.get(e)) for e in entities)
        extra_a, extra_b = len(keyed_a - wanted), len(keyed_b - wanted)
        same = sum(rec_a.get(e) == rec_b.get(e) for e in entities)
        redis_mismatches = bad_a + extra_a
        print(
            f"Redis: A {len(keyed_a):,} keys, B {len(keyed_b):,} keys; {same:,} entities hold "
            f"the same record in A and B, {len(entities) - same:,} differ by a later expiry row "
            f"(both the reference's rows); B: {bad_b + extra_b} mismatches",
            flush=True,
        )
        del rec_a, rec_b, keyed_a, keyed_b

        log_a = log_rows(tmp / "offline-a")
        log_b = log_rows(tmp / "offline-b")
        check_a, check_b = check_log(ref, log_a), check_log(ref, log_b)
        equal_logs = sum(log_a.get(e) == log_b.get(e) for e in entities)
        print(
            f"offline log: A {check_a.rows:,} rows ({check_a.expiry_rows:,} expiry rows, "
            f"{check_a.twice_by_design} shown twice by design), B {check_b.rows:,} rows "
            f"({check_b.expiry_rows:,} expiry rows, {check_b.twice_by_design} twice by design); "
            f"{equal_logs:,} entities have the same rows in A and B, the others differ by "
            f"expiry rows only; B: {check_b.bad_entities} bad entities"
        )
        log_bad = check_a.lost + check_a.duplicated + check_a.invented
        print(
            f"Redis equal: {len(entities):,} entities, {redis_mismatches} mismatches; "
            f"offline log: {check_a.rows:,} rows, {check_a.lost} lost, "
            f"{check_a.duplicated} duplicated, {check_a.invented} invented"
        )
        failed = redis_mismatches or log_bad or bad_b or extra_b or check_b.bad_entities
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
