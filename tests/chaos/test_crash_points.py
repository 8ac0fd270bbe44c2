"""SIGKILL ``freshet run --recovery-dir`` at six distinct moments, restarting after each: the
offline reader shows every row exactly once and Redis holds what an uninterrupted run leaves.

Moments a ``kill`` from outside cannot hit reliably are hit from inside with the crash points of
``freshet.sinks.faults`` (``FRESHET_FAULT=<point>:<n>``: the flow SIGKILLs itself the n-th time it
gets there); the others are observed from the flow's files and ``/metrics``. All runs share one
topic, one recovery dir, one offline dir and one Redis database, so each run resumes what the
crashed one left, and the last run (no fault) must end where an uninterrupted run ends: the
engine reference of ``pipeline_harness`` (``ViewEngine`` over the records as Kafka holds them).

After every crash, before the next start, nothing in the offline log or Redis may be outside
the reference (a crash may lose what was not yet acknowledged, never invent or corrupt).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from pipeline_harness import (
    LABEL,
    VIEW,
    FlowProcess,
    Reference,
    check_redis,
    flow_args,
    flow_env,
    offline_rows,
    passes,
    produce_stream,
    read_topic,
    redis_records,
    scrape,
    wait_until,
)
from redis_servers import free_port

from freshet.sinks.faults import FAULT_ENV, parse_fault
from freshet.sinks.parquet_log import log_dir, segment_paths

# Every run: small polls (a run lasts long enough to crash in the middle of it), small segments
# (rolls happen between snapshots too), 1 s snapshots (flow_args).
COMMON = ["--batch-size", "50", "--segment-rows", "400"]


@dataclass(frozen=True)
class Moment:
    """One crash: a fault point (the flow kills itself) or an observed condition (we kill it)."""

    name: str
    fault: str | None = None  # FRESHET_FAULT value
    kill_when: Callable[[FlowContext], bool] | None = None
    extra: tuple[str, ...] = ()


@dataclass
class FlowContext:
    port: int
    offline: Path
    total: int
    started: float = field(default_factory=time.monotonic)
    caught_up_at: float | None = None

    def events_in(self) -> float:
        return scrape(self.port).get(f"freshet_events_in_total{LABEL}", 0.0)

    def caught_up(self) -> bool:
        """Consumer lag 0 on each of the topic's 3 partitions."""
        lags = [v for k, v in scrape(self.port).items() if k.startswith("freshet_consumer_lag")]
        return len(lags) == 3 and not any(lags)


def _segments_committed(ctx: FlowContext) -> bool:
    return len(segment_paths(ctx.offline, VIEW.name)) >= 2


def _idle_after_catching_up(ctx: FlowContext) -> bool:
    # Caught up (every record read), then idle for 2 s: expiry timers fire meanwhile.
    if ctx.caught_up_at is None:
        if ctx.caught_up():
            ctx.caught_up_at = time.monotonic()
        return False
    return time.monotonic() - ctx.caught_up_at >= 2.0


MOMENTS = [
    # Segments committed, no snapshot yet (the first epoch lasts 30 s): the restart has no
    # resume state, re-reads from the start and writes the same rows again; the reader's
    # dedupe shows them once.
    Moment(
        "before the first snapshot",
        kill_when=_segments_committed,
        extra=("--snapshot-interval", "30"),
    ),
    # Mid segment roll: the temporary file is written and fsynced, not renamed.
    Moment("segment roll, before the rename", fault="parquet.segment_tmp_written:3"),
    # A segment renamed into place, which the next snapshot would have covered.
    Moment("segment roll, after the rename", fault="parquet.segment_renamed:4"),
    # In the middle of a snapshot: some engine shards pickled, the epoch not committed.
    Moment("during a snapshot", fault="engine.shard_snapshot:400"),
    # A Redis batch has landed, the sink has not returned: the replay writes it again.
    Moment("during a Redis write batch", fault="redis.batch_written:25"),
    # Caught up and idle, expiry timers firing: the resumed clock must not emit them twice.
    Moment("idle, with expiry timers due", kill_when=_idle_after_catching_up),
]


def _check_nothing_invented(
    ref: Reference, offline: Path, client: redis.Redis, entities: list[str]
) -> None:
    """Whatever a crashed run left is a subset of the reference (rows and Redis records)."""
    reference = {row for rows in ref.applied.values() for row in rows}
    reference |= {row for rows in ref.flushed.values() for row in rows}
    rows = offline_rows(offline, VIEW)
    assert len(rows) == len(set(rows)), "the offline reader shows a row twice"
    invented = [row for row in rows if row not in reference]
    assert not invented, f"{len(invented)} offline rows not in the reference, e.g. {invented[0]}"
    for entity, (as_of, offset, values) in redis_records(client, VIEW, entities).items():
        row = ref.row_at(entity, as_of, offset)
        assert row is not None, f"Redis holds {entity}@{as_of}/{offset}, not a reference row"
        assert row.values == values, entity


def test_faults_env_names_a_known_point_a_count_and_a_signal() -> None:
    assert parse_fault("") is None
    assert parse_fault("redis.batch_written") == ("redis.batch_written", 1, signal.SIGKILL)
    assert parse_fault("parquet.segment_renamed:4") == (
        "parquet.segment_renamed",
        4,
        signal.SIGKILL,
    )
    assert parse_fault("engine.shard_snapshot:2:SIGTERM") == (
        "engine.shard_snapshot",
        2,
        signal.SIGTERM,
    )
    with pytest.raises(ValueError, match="the signal must be SIGKILL, SIGTERM or SIGINT"):
        parse_fault("engine.shard_snapshot:2:SIGHUP")
    with pytest.raises(ValueError, match=re.escape("unknown point 'parquet.nope'")):
        parse_fault("parquet.nope:1")
    with pytest.raises(ValueError, match="the count '0' must be an integer >= 1"):
        parse_fault("redis.batch_written:0")


def test_sigkill_at_six_moments_then_resume_equals_an_uninterrupted_run(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(3), topic_factory(1)
    counts = produce_stream(kafka_bootstrap, topic, 20_000, seed=31, cards=1_500)
    ref = Reference.of(VIEW, read_topic(kafka_bootstrap, topic))
    entities = sorted(ref.applied)
    env = flow_env(kafka_bootstrap, redis_url, offline_dir)
    recovery = tmp_path / "recovery"
    log = tmp_path / "flow.log"
    figures: list[str] = []

    for moment in MOMENTS:
        port = free_port()
        args = flow_args(topic, dlq, "--recovery-dir", str(recovery), *COMMON, metrics_port=port)
        args += list(moment.extra)  # a later --snapshot-interval wins over flow_args' 1 s
        run_env = {**env, FAULT_ENV: moment.fault or ""}
        ctx = FlowContext(port, offline_dir, counts.total)
        with FlowProcess(args, env=run_env, log=log) as flow:
            if moment.kill_when is not None:
                wait_until(
                    lambda ctx=ctx, when=moment.kill_when, flow=flow: (
                        when(ctx) or flow.proc.poll() is not None
                    ),
                    timeout=90,
                    what=f"the moment '{moment.name}'",
                    interval=0.05,
                )
                assert flow.proc.poll() is None, flow.output()
                read = ctx.events_in()
                flow.kill()
            else:
                code = flow.wait(timeout=90)  # the crash point SIGKILLs the flow
                assert code == -signal.SIGKILL, f"{moment.name}: exit {code}\n{flow.output()}"
                read = float("nan")
        leftovers = sorted(p.name for p in log_dir(offline_dir, VIEW.name).glob("date=*/.*.tmp"))
        if moment.fault == "parquet.segment_tmp_written:3":
            assert leftovers, "the crash mid-roll left no temporary segment"
        _check_nothing_invented(ref, offline_dir, redis_client, entities)
        figures.append(
            f"{moment.name}: killed after {time.monotonic() - ctx.started:.1f} s "
            f"(records read: {read:.0f}), {len(segment_paths(offline_dir, VIEW.name))} segments, "
            f"{len(leftovers)} tmp files"
        )

    # The last run, no fault: it must end where an uninterrupted run ends.
    port = free_port()
    args = flow_args(topic, dlq, "--recovery-dir", str(recovery), *COMMON, metrics_port=port)
    with FlowProcess(args, env={**env, FAULT_ENV: ""}, log=log) as flow:
        wait_until(
            passes(lambda: ref.check_rows(offline_rows(offline_dir, VIEW))),
            timeout=90,
            what="the offline log to hold every row once",
        )
        wait_until(passes(lambda: check_redis(redis_client, ref)), timeout=30, what="Redis")
        resumed_read = scrape(port).get(f"freshet_events_in_total{LABEL}", 0.0)
        assert flow.proc.poll() is None, flow.output()
    # A crashed writer's temporary file is removed when its writer starts again.
    assert not list(log_dir(offline_dir, VIEW.name).glob("date=*/.*.tmp"))
    physical = len(offline_rows(offline_dir, VIEW, dedupe=False))
    distinct = len(offline_rows(offline_dir, VIEW))
    # The last run resumed from a snapshot rather than re-reading the topic from the start.
    assert resumed_read < counts.total, log.read_text()[-3000:]
    # Dead letters are at-least-once: every refused record is on the DLQ topic.
    letters = read_topic(kafka_bootstrap, dlq)
    origins = [dict(m.headers or []) for m in letters]
    refused = {(h["freshet.source.partition"], h["freshet.source.offset"]) for h in origins}
    assert len(refused) == ref.bad + ref.late
    print(
        "\n".join(
            [
                *figures,
                f"final run read {resumed_read:.0f} of {counts.total} records; offline rows: "
                f"{distinct} distinct, {physical} on disk ({physical - distinct} duplicates "
                f"hidden by the reader); {len(letters)} dead letters for "
                f"{ref.bad + ref.late} refused records",
            ]
        )
    )
