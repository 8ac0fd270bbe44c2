"""``freshet run --recovery-dir``: SIGKILL at any moment, start again: nothing lost or doubled.

The flow is killed twice mid-stream (no clean-up at all: the whole process group gets SIGKILL)
and restarted with the same command; once it has caught up, the offline reader must show each
of the reference's rows exactly once and Redis must hold, for every card, the reference's value
as of its newest events — what an uninterrupted run leaves.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

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
    scrape,
    wait_until,
)
from redis_servers import free_port


class ResumePoint(NamedTuple):
    """Where a restart on a recovery dir would resume: the newest execution recorded there
    (-1: none yet), the epoch it started from and the epoch a restart would resume from, and
    how many entity states that restart would load from snapshots this execution took."""

    execution: int
    started: int
    epoch: int
    entity_states: int


def resume_point(recovery: Path) -> ResumePoint:
    """Read from Bytewax 0.21's recovery partitions as its resume does: the resume epoch is the
    slowest worker's frontier in the newest execution (tables ``exs``, ``fronts``), and each
    state key resumes from its newest snapshot before that epoch (``snaps``). An engine shard's
    snapshot pickles ``{entity: (next expiry, pickled state)}``."""
    executions: dict[int, tuple[int, int]] = {}  # ex_num -> (worker_count, resume_epoch)
    fronts: dict[tuple[int, int], int] = {}  # (ex_num, worker) -> frontier
    snaps: list[tuple[str, str, int, bytes | None]] = []
    for part in recovery.glob("part-*.sqlite3"):
        # Read-only and closed at once: the flow keeps writing to these files.
        db = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5)
        try:
            for ex_num, workers, resume in db.execute(
                "SELECT ex_num, worker_count, resume_epoch FROM exs"
            ):
                executions[ex_num] = (workers, resume)
            for ex_num, worker, frontier in db.execute(
                "SELECT ex_num, worker_index, worker_frontier FROM fronts"
            ):
                fronts[ex_num, worker] = max(frontier, fronts.get((ex_num, worker), frontier))
            snaps += db.execute(
                "SELECT step_id, state_key, snap_epoch, ser_change FROM snaps"
                " WHERE step_id LIKE '%\\_engine' ESCAPE '\\'"
            ).fetchall()
        finally:
            db.close()
    if not executions:
        return ResumePoint(-1, 0, 0, 0)
    ex_num = max(executions)
    workers, started = executions[ex_num]
    epoch = min(max(started, fronts.get((ex_num, w), started)) for w in range(workers))
    newest: dict[tuple[str, str], tuple[int, bytes | None]] = {}
    for step, key, snap_epoch, change in snaps:
        if snap_epoch < epoch and snap_epoch > newest.get((step, key), (-1, None))[0]:
            newest[step, key] = (snap_epoch, change)
    states = sum(
        len(pickle.loads(change))
        for snap_epoch, change in newest.values()
        if snap_epoch >= started and change is not None
    )
    return ResumePoint(ex_num, started, epoch, states)


def state_resumable(recovery: Path, after_execution: int) -> bool:
    """An execution newer than ``after_execution`` committed a snapshot of engine state that a
    restart would load (not only state an earlier execution saved)."""
    point = resume_point(recovery)
    return point.execution > after_execution and point.entity_states > 0


def has_read(port: int, records: int) -> bool:
    """The flow serving /metrics on ``port`` has read at least ``records`` records."""
    return scrape(port).get(f"freshet_events_in_total{LABEL}", 0) >= records


def test_sigkill_twice_and_resume_loses_and_duplicates_no_row(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(3), topic_factory(1)
    counts = produce_stream(kafka_bootstrap, topic, 30_000, seed=21, cards=2_000)
    ref = Reference.of(VIEW, read_topic(kafka_bootstrap, topic))
    env = flow_env(kafka_bootstrap, redis_url, offline_dir)
    recovery = tmp_path / "recovery"
    # Small polls keep the first run busy long enough to be killed while it reads (most likely
    # before its first snapshot). The second run is killed once the recovery dir holds a
    # committed snapshot of its engine state (one a restart would load), so the third run must
    # resume from it rather than start over, however fast the flow reads.
    extra = ["--recovery-dir", str(recovery), "--batch-size", "50"]

    for run in ("first", "second"):
        before = resume_point(recovery).execution
        port = free_port()
        args = flow_args(topic, dlq, *extra, metrics_port=port)
        with FlowProcess(args, env=env, log=tmp_path / "flow.log") as flow:
            if run == "first":
                read = wait_until(
                    partial(has_read, port, counts.total // 4),
                    timeout=60,
                    what=f"{counts.total // 4} records read before the kill",
                    interval=0.02,
                )
            else:
                read = wait_until(
                    partial(state_resumable, recovery, before),
                    timeout=60,
                    what="a committed snapshot of the engine state before the kill",
                    interval=0.05,
                )
            assert read
            assert flow.proc.poll() is None, flow.output()
            # Leaving the block SIGKILLs the process group: a crash mid-run.
    assert any(recovery.glob("part-*.sqlite3"))

    port = free_port()
    with FlowProcess(
        flow_args(topic, dlq, *extra, metrics_port=port), env=env, log=tmp_path / "flow.log"
    ) as flow:
        wait_until(
            passes(lambda: ref.check_rows(offline_rows(offline_dir, VIEW))),
            timeout=60,
            what="the offline log to hold every row once",
        )
        wait_until(passes(lambda: check_redis(redis_client, ref)), timeout=30, what="Redis")

        # It resumed: the third run did not start over from the first record (it read none
        # when the second run's last snapshot came after the end of the topic).
        def caught_up() -> bool:
            lags = [v for k, v in scrape(port).items() if k.startswith("freshet_consumer_lag{")]
            return len(lags) == 3 and not any(lags)

        wait_until(caught_up, timeout=30, what="the resumed flow to read to the end")
        read_again = scrape(port).get(f"freshet_events_in_total{LABEL}", 0)
        assert read_again < counts.total, flow.output()
