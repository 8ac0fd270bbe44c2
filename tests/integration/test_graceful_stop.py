"""SIGTERM and SIGINT stop ``freshet run`` cleanly at any moment, with and without recovery.

Each case sends one signal at one moment of a real flow over a real topic: before the first
batch, in the middle of reading, while a Parquet segment is being committed, while an engine
shard is being snapshotted (recovery only), and once the flow is idle with expiry timers
firing. Then:

* the process exits 0 within the drain bound (30 s by default) and logs its counts;
* the rows it emitted (its own counter, from that line) are exactly the rows in the offline
  log, each one a row of the reference (``pipeline_harness.Reference``: the engine run
  directly over the topic's records), none more often than the reference emits it;
* for every entity, the Redis record is the log's newest row of that entity;
* with ``--recovery-dir``, a second start of the same command finishes the topic and the two
  runs together equal an uninterrupted one: every reference row once, no row written twice.

"Twice" is counted against the reference, not as "any two equal rows": the engine emits one row
twice by design when an event lies exactly on an expiry boundary ``B`` of its card (its event
row as of ``B``, then the expiry row at ``B``, identical since nothing changed in between; the
offline reader shows it once). The stream is placed on the tile grid so that it has such an
event: with event times at arbitrary milliseconds, about one stream in ten had one, and a check
that took any two equal rows for a replayed one failed on those streams only.

A second signal during the drain ends the process at once with 128 + the signal's number, and
what was committed stays consistent (a restart with recovery completes it).
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient, NewTopic
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
    read_topic,
    redis_records,
    scrape,
    wait_until,
)
from redis_servers import free_port, free_port_block

from freshet.ops.generator import GeneratorConfig, produce
from freshet.sinks.faults import FAULT_ENV
from freshet.sinks.rows import Row

_EVENTS = 12_000
_CARDS = 300
# Event times span the 6 minutes before the flow reads them: each card's 5-minute windows
# have boundaries coming due in wall time while the flow is idle (timers firing).
_SPAN_MS = 6 * 60_000
# Where the stream starts on the 10 s tile grid of the 5-minute window: at this offset, with
# this seed, a card has an event exactly on one of its expiry boundaries, which the engine
# then emits twice (see the module docstring; the ``stream`` fixture checks it is so).
_GRID_MS = 10_000
_GRID_OFFSET_MS = 1_271
_DRAIN_BOUND_S = 30.0
_EMITTED = re.compile(r"stopped on (SIG\w+) after a [\d.]+ s drain: ([\d,]+) records read, "
                      r"([\d,]+) rows emitted")  # fmt: skip

MOMENTS = ("before_first_batch", "mid_batch", "segment_roll", "snapshot", "idle_timers_due")


@dataclass(frozen=True)
class Stream:
    topic: str
    dlq: str
    ref: Reference
    total: int


@pytest.fixture(scope="module")
def stream(kafka_bootstrap: str, kafka_admin: AdminClient) -> Iterator[Stream]:
    """One topic for the module (the flows only read it), with its reference."""
    stamp = f"{time.time_ns():x}"
    topic, dlq = f"test-graceful-stop-{stamp}", f"test-graceful-stop-dlq-{stamp}"
    futures = kafka_admin.create_topics([NewTopic(topic, 3, 1), NewTopic(dlq, 1, 1)])
    for future in futures.values():
        future.result(timeout=30)
    now = time.time_ns() // 1_000_000
    start = (now - _SPAN_MS - _GRID_OFFSET_MS) // _GRID_MS * _GRID_MS + _GRID_OFFSET_MS
    counts = produce(
        kafka_bootstrap,
        topic,
        view=VIEW,
        count=_EVENTS,
        rate=_EVENTS / (_SPAN_MS / 1000),
        pace=False,
        config=GeneratorConfig(cards=_CARDS, late_fraction=0.01, bad_fraction=0.005, seed=77),
        start_ms=start,
        max_seconds=60,
    )
    messages = read_topic(kafka_bootstrap, topic)
    assert len(messages) == counts.total
    ref = Reference.of(VIEW, messages)
    assert max(_reference_copies(ref).values()) > 1, (
        "the stream has no row the engine emits twice (an event exactly on an expiry "
        "boundary): the generator or the view changed; pick another _GRID_OFFSET_MS"
    )
    yield Stream(topic, dlq, ref, counts.total)
    for future in kafka_admin.delete_topics([topic, dlq]).values():
        future.result(timeout=30)


def _handles(pid: int, signum: int) -> bool:
    """The process has a handler installed for ``signum`` (/proc's SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(caught & (1 << (signum - 1)))


def _emitted(log: str, signame: str) -> int:
    found = _EMITTED.findall(log)
    assert len(found) == 1, f"expected one 'stopped on {signame}' line:\n{log[-3000:]}"
    (got_signal, _read, rows) = found[0]
    assert got_signal == signame
    return int(rows.replace(",", ""))


def _reference_rows(ref: Reference) -> set[Row]:
    rows: set[Row] = set()
    for entity, applied in ref.applied.items():
        rows.update(applied)
        rows.update(ref.flushed[entity])
    return rows


def _reference_copies(ref: Reference) -> Counter[Row]:
    """How many times an uninterrupted run emits each row (2 for a row that is both an event
    row and an expiry row; live timers emit a prefix of ``flushed``)."""
    copies: Counter[Row] = Counter()
    for entity, applied in ref.applied.items():
        copies.update(applied)
        copies.update(ref.flushed[entity])
    return copies


def _written_too_often(rows: list[Row], ref: Reference) -> list[Row]:
    """The rows in ``rows`` more often than an uninterrupted run emits them."""
    copies = _reference_copies(ref)
    return sorted(row for row, n in Counter(rows).items() if n > copies[row])


def _check_consistent(
    offline_dir: Path, client: redis.Redis, ref: Reference, emitted: int
) -> list[Row]:
    """What a stopped flow left: the emitted rows, all in the log, each a reference row; Redis
    holding each entity's newest logged row. Returns the raw log rows."""
    raw = offline_rows(offline_dir, VIEW, dedupe=False)
    assert len(raw) == emitted, f"{emitted} rows emitted, {len(raw)} in the offline log"
    twice = _written_too_often(raw, ref)
    assert not twice, f"{len(twice)} rows are in the offline log twice, e.g. {twice[0]}"
    invented = set(raw) - _reference_rows(ref)
    assert not invented, f"{len(invented)} logged rows are not reference rows, e.g. {min(invented)}"
    newest: dict[str, Row] = {}
    for row in raw:
        if row.entity not in newest or (row.as_of, row.offset) >= (
            newest[row.entity].as_of,
            newest[row.entity].offset,
        ):
            newest[row.entity] = row
    stored = redis_records(client, VIEW, sorted(ref.applied))
    assert set(stored) == set(newest), (
        f"Redis has {len(set(stored) - set(newest))} entities the log lacks and lacks "
        f"{len(set(newest) - set(stored))} the log has"
    )
    for entity, (as_of, offset, values) in stored.items():
        row = newest[entity]
        assert (as_of, offset, values) == (row.as_of, row.offset, row.values), entity
    return raw


def _bring_to(moment: str, flow: FlowProcess, port: int, sig: signal.Signals, total: int) -> None:
    """Wait for ``moment`` in ``flow`` and send ``sig`` (fault-injected moments signal
    themselves from inside the process)."""
    pid = flow.proc.pid
    if moment in ("segment_roll", "snapshot"):
        return
    if moment == "before_first_batch":
        # SIGTERM: Python itself already handles SIGINT while it starts.
        wait_until(
            lambda: _handles(pid, signal.SIGTERM),
            timeout=30,
            what="freshet's signal handlers",
            interval=0.01,
        )
        assert scrape(port).get(f"freshet_events_in_total{LABEL}", 0) == 0
    elif moment == "mid_batch":
        wait_until(
            lambda: scrape(port).get(f"freshet_events_in_total{LABEL}", 0) >= total // 4,
            timeout=60,
            what="a quarter of the topic read",
            interval=0.02,
        )
    elif moment == "idle_timers_due":
        wait_until(
            lambda: scrape(port).get(f"freshet_events_in_total{LABEL}", 0) >= total,
            timeout=90,
            what="the whole topic read",
        )
        rows_then = scrape(port)[f"freshet_rows_emitted_total{LABEL}"]
        wait_until(
            lambda: scrape(port).get(f"freshet_rows_emitted_total{LABEL}", 0) > rows_then,
            timeout=30,
            what="expiry rows from timers while idle",
        )
    flow.proc.send_signal(sig)


def _fault(moment: str, sig: signal.Signals) -> dict[str, str]:
    if moment == "segment_roll":
        return {FAULT_ENV: f"parquet.segment_tmp_written:2:{sig.name}"}
    if moment == "snapshot":
        return {FAULT_ENV: f"engine.shard_snapshot:1:{sig.name}"}
    return {}


CASES = [
    pytest.param(sig, recovery, moment, id=f"{sig.name}-{'recovery' if recovery else 'plain'}-{moment}")  # noqa: E501
    for sig in (signal.SIGTERM, signal.SIGINT)
    for recovery in (False, True)
    for moment in MOMENTS
    if recovery or moment != "snapshot"  # without recovery no state is snapshotted
]  # fmt: skip


@pytest.mark.parametrize(("sig", "recovery", "moment"), CASES)
def test_a_signal_at_any_moment_stops_cleanly_with_redis_and_the_log_in_step(
    sig: signal.Signals,
    recovery: bool,
    moment: str,
    stream: Stream,
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    env = {**flow_env(kafka_bootstrap, redis_url, offline_dir), **_fault(moment, sig)}
    extra = ["--batch-size", "100", "--segment-rows", "500"]
    if recovery:
        extra += ["--recovery-dir", str(tmp_path / "recovery")]
    port = free_port()
    args = flow_args(stream.topic, stream.dlq, *extra, metrics_port=port)
    log = tmp_path / "flow.log"
    with FlowProcess(args, env=env, log=log) as flow:
        _bring_to(moment, flow, port, sig, stream.total)
        signalled = time.monotonic()
        code = flow.wait(timeout=_DRAIN_BOUND_S + 30)
        took = time.monotonic() - signalled
    output = log.read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert took < _DRAIN_BOUND_S, f"the stop took {took:.1f} s"
    assert "Traceback" not in output, output[-3000:]
    assert "panicked" not in output, output[-3000:]
    raw = _check_consistent(offline_dir, redis_client, stream.ref, _emitted(output, sig.name))
    if not recovery:
        return

    # Started again with the same recovery dir, it continues where the stop left off: the two
    # runs together hold every reference row once, and no row was written twice.
    port = free_port()
    args = flow_args(stream.topic, stream.dlq, *extra, metrics_port=port)
    with FlowProcess(args, env=flow_env(kafka_bootstrap, redis_url, offline_dir), log=log):
        wait_until(
            passes(lambda: stream.ref.check_rows(offline_rows(offline_dir, VIEW))),
            timeout=90,
            what="the offline log to hold every reference row once",
        )
        wait_until(passes(lambda: check_redis(redis_client, stream.ref)), timeout=30, what="Redis")
        # It resumed from the final snapshot: only the records the first run had not read.
        wait_until(
            lambda: (
                scrape(port).get(f"freshet_events_in_total{LABEL}", 0)
                == stream.total - _read(output)
            ),
            timeout=30,
            what="the restart to read exactly the records the first run left",
        )
    resumed = offline_rows(offline_dir, VIEW, dedupe=False)
    twice = _written_too_often(resumed, stream.ref)
    assert not twice, f"{len(twice)} rows were written twice, e.g. {twice[0]}"
    assert set(raw) <= set(resumed)


def _read(log: str) -> int:
    return int(_EMITTED.findall(log)[0][1].replace(",", ""))


def _stop_stuck_in_redis(flow: FlowProcess, port: int, client: redis.Redis, *, second: bool) -> int:
    """Send SIGTERM while Redis holds every write (``CLIENT PAUSE``) and the flow has rows that
    must still reach it, so the drain cannot finish; with ``second``, send another once the
    first was handled. Returns the exit code."""
    rows = f"freshet_rows_emitted_total{LABEL}"
    wait_until(lambda: scrape(port).get(rows, 0) > 0, timeout=60, what="rows", interval=0.02)
    client.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
    try:
        # Rows emitted from now on cannot be written (new events, or expiry rows of the
        # stream's boundaries coming due): the drain has to wait for Redis.
        paused_at = scrape(port)[rows]
        wait_until(
            lambda: scrape(port).get(rows, 0) > paused_at,
            timeout=30,
            what="rows emitted while Redis is paused",
            interval=0.02,
        )
        flow.proc.send_signal(signal.SIGTERM)
        if second:
            wait_until(
                lambda: "SIGTERM: stopping" in flow.log.read_text(errors="replace"),
                timeout=10,
                what="the first signal to be handled",
                interval=0.005,
            )
            flow.proc.send_signal(signal.SIGTERM)
        return flow.wait(timeout=15)
    finally:
        client.execute_command("CLIENT", "UNPAUSE")


@pytest.mark.parametrize("how", ["second_signal", "drain_timeout"])
def test_a_second_signal_or_the_drain_bound_exits_at_once_and_leaves_the_commits_consistent(
    how: str,
    stream: Stream,
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    env = flow_env(kafka_bootstrap, redis_url, offline_dir)
    extra = ["--batch-size", "100", "--segment-rows", "500", "--recovery-dir", str(tmp_path / "r")]
    port = free_port()
    log = tmp_path / "flow.log"
    args = flow_args(stream.topic, stream.dlq, *extra, "--drain-timeout", "2", metrics_port=port)
    with FlowProcess(args, env=env, log=log) as flow:
        signalled = time.monotonic()
        code = _stop_stuck_in_redis(flow, port, redis_client, second=how == "second_signal")
        took = time.monotonic() - signalled
    output = log.read_text(errors="replace")
    if how == "second_signal":
        assert code == 128 + signal.SIGTERM, output[-3000:]
        assert "second SIGTERM: exiting at once" in output
    else:
        assert code == 124, output[-3000:]
        assert "the drain did not finish within 2 s of SIGTERM" in output
        assert 2 <= took < 10
    assert "Traceback" not in output, output[-3000:]
    # What it committed are reference rows; the restart completes them.
    raw = offline_rows(offline_dir, VIEW, dedupe=False)
    assert set(raw) <= _reference_rows(stream.ref)

    with FlowProcess(flow_args(stream.topic, stream.dlq, *extra, metrics_port=free_port()),
                     env=env, log=log):  # fmt: skip
        wait_until(
            passes(lambda: stream.ref.check_rows(offline_rows(offline_dir, VIEW))),
            timeout=90,
            what="the offline log to hold every reference row once",
        )
        wait_until(passes(lambda: check_redis(redis_client, stream.ref)), timeout=30, what="Redis")


def test_sigterm_to_a_multi_process_flow_stops_every_process_cleanly(
    stream: Stream,
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    env = flow_env(kafka_bootstrap, redis_url, offline_dir)
    port = free_port_block(2)  # process i serves its metrics on port + i
    log = tmp_path / "flow.log"
    args = flow_args(stream.topic, stream.dlq, "-p", "2", "--batch-size", "100", metrics_port=port)
    with FlowProcess(args, env=env, log=log) as flow:
        wait_until(
            lambda: scrape(port).get(f"freshet_events_in_total{LABEL}", 0) >= stream.total // 8,
            timeout=60,
            what="process 0 to read records",
            interval=0.02,
        )
        flow.proc.send_signal(signal.SIGTERM)
        code = flow.wait(timeout=_DRAIN_BOUND_S + 30)
    output = log.read_text(errors="replace")
    assert code == 0, output[-3000:]
    lines = _EMITTED.findall(output)
    assert len(lines) == 2, output[-3000:]  # one per process
    emitted = sum(int(rows.replace(",", "")) for _, _, rows in lines)
    _check_consistent(offline_dir, redis_client, stream.ref, emitted)
