"""``freshet run --recovery-dir`` keeps engine state in segment files that each snapshot only
points into (``freshet.stream.state_store``). Killed with SIGKILL twice while its shards append
and compact, then restarted: the offline reader shows each reference row once and Redis holds
what an uninterrupted run leaves; the snapshots Bytewax stores are pointers, not states.

Four shards (not 256) make each shard's file big enough to be compacted during the run.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path

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

from freshet.stream.state_store import StatePointer


def has_read(port: int, records: int) -> bool:
    return scrape(port).get(f"freshet_events_in_total{LABEL}", 0) >= records


def committed_epoch(recovery: Path) -> int:
    """The newest epoch Bytewax committed in the recovery partitions (-1: none yet)."""
    newest = -1
    for part in recovery.glob("part-*.sqlite3"):
        db = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5)
        try:
            (epoch,) = db.execute("SELECT max(commit_epoch) FROM commits").fetchone()
        except sqlite3.OperationalError:  # the partition is still being created
            epoch = None
        finally:
            db.close()
        if epoch is not None:
            newest = max(newest, epoch)
    return newest


def has_read_and_committed(port: int, records: int, recovery: Path, since: list[int]) -> bool:
    """``records`` read by the process on ``port``, and an epoch committed since it started
    (``since``: the committed epoch at its start, filled on the first call)."""
    if not since:
        since.append(committed_epoch(recovery))
    return has_read(port, records) and committed_epoch(recovery) > since[0]


def engine_snapshots(recovery: Path) -> list[object]:
    """Every engine-shard snapshot Bytewax holds in the recovery partitions, unpickled."""
    found: list[object] = []
    for part in recovery.glob("part-*.sqlite3"):
        db = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5)
        try:
            found += [
                pickle.loads(change)
                for (change,) in db.execute(
                    "SELECT ser_change FROM snaps WHERE step_id LIKE '%\\_engine' ESCAPE '\\'"
                )
                if change is not None
            ]
        finally:
            db.close()
    return found


def test_sigkill_twice_with_state_segments_resumes_to_an_uninterrupted_run(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(3), topic_factory(1)
    counts = produce_stream(kafka_bootstrap, topic, 40_000, seed=33, cards=8_000)
    ref = Reference.of(VIEW, read_topic(kafka_bootstrap, topic))
    env = flow_env(kafka_bootstrap, redis_url, offline_dir)
    recovery = tmp_path / "recovery"
    extra = ["--recovery-dir", str(recovery), "--batch-size", "50", "--shards", "4"]

    for share in (3, 2):  # killed after a third of the records, then after half
        port = free_port()
        with FlowProcess(
            flow_args(topic, dlq, *extra, metrics_port=port), env=env, log=tmp_path / "flow.log"
        ) as flow:
            # Killed once it has read its share and committed an epoch of its own (a fast run
            # could read its share within its first 1 s epoch: nothing new to resume from).
            assert wait_until(
                partial(has_read_and_committed, port, counts.total // share, recovery, []),
                timeout=120,
                what=f"{counts.total // share} records read and an epoch committed",
                interval=0.02,
            )
            assert flow.proc.poll() is None, flow.output()
            # Leaving the block SIGKILLs the process group.

    snapshots = engine_snapshots(recovery)
    assert snapshots
    assert all(isinstance(s, StatePointer) for s in snapshots)
    assert any(s.entities for s in snapshots if isinstance(s, StatePointer))
    assert any((recovery / "freshet-state" / VIEW.name).glob("*.seg"))

    port = free_port()
    with FlowProcess(
        flow_args(topic, dlq, *extra, metrics_port=port), env=env, log=tmp_path / "flow.log"
    ):
        wait_until(
            passes(lambda: ref.check_rows(offline_rows(offline_dir, VIEW))),
            timeout=120,
            what="the offline log to hold every row once",
        )
        wait_until(passes(lambda: check_redis(redis_client, ref)), timeout=30, what="Redis")
