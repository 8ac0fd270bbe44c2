"""Run a backfill: spawn its replay processes (one Bytewax cluster), watch them, report their
progress, and replace the segments earlier runs of the same range wrote.

    from freshet.backfill.plan import ReplayJob, plan_backfill
    from freshet.backfill.runner import run_backfill, run_member

    tally = run_backfill(ReplayJob(plan=plan, processes=2), settings)   # freshet backfill -p 2
    tally = run_member(job, settings, process_id=i, addresses=hosts)   # freshet backfill -i -a

:func:`run_backfill` spawns ``job.processes`` local processes, each running
:func:`freshet.backfill.replay.worker_main`. SIGTERM or SIGINT is forwarded to them once: they
stop reading and commit what they replayed (``freshet.stream.shutdown``); the run's tally then
says it is incomplete and the earlier segments stay.

:func:`run_member` is one process of a cluster started elsewhere (one pod of a Kubernetes
Indexed Job). There is no parent, so the processes meet in the view's log directory, which
they share anyway: process 0 holds the range's lock and lists the earlier segments before the
cluster forms (no process writes before all have joined), every process leaves a marker with
its outcome when its sinks have closed, and process 0 deletes the earlier segments once every
marker says the range completed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from freshet.backfill.plan import (
    BackfillFailed,
    BackfillPlan,
    PartitionProgress,
    ReplayJob,
    Tally,
    previous_segments,
    range_lock,
    read_progress,
    writer_prefix,
)
from freshet.ops.processes import ProcessGroup, cluster_addresses
from freshet.sinks.parquet_log import log_dir
from freshet.sinks.settings import Settings
from freshet.stream.shutdown import STOP, block_stop_signals

__all__ = ["Workers", "run_backfill", "run_member"]

log = logging.getLogger("freshet.backfill")

# How long process 0 of a cluster waits for the others' markers after its own flow ended (they
# end together: a Bytewax cluster's input ends for all its workers at once).
_MEMBERS_TIMEOUT_S = 300.0


class Workers:
    """The worker processes of one backfill run (a Bytewax cluster), spawned and watched.

    ``poll()`` returns None while they run, else the first failing exit code or 0; ``stop()``
    ends them (SIGTERM, then SIGKILL). A context manager: leaving it stops what still runs.
    """

    def __init__(
        self,
        job: ReplayJob,
        *,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        metrics_port: int = 0,
    ) -> None:
        self.workdir = workdir
        job_file = workdir / "job.json"
        job_file.write_text(json.dumps(job.to_json()))
        n = job.processes
        addresses = cluster_addresses(n)
        entry = "from freshet.backfill.replay import worker_main; worker_main()"
        self._logs = [open(workdir / f"worker-{i}.log", "wb") for i in range(n)]  # noqa: SIM115 - closed in stop()
        self._group = ProcessGroup(
            [
                [
                    sys.executable,
                    "-c",
                    entry,
                    str(job_file),
                    str(workdir),
                    str(i),
                    addresses,
                    str(metrics_port + i if metrics_port else 0),
                ]
                for i in range(n)
            ],
            env=dict(os.environ if env is None else env),
            stdouts=self._logs,
            preexec_fn=block_stop_signals,
        )

    def poll(self) -> int | None:
        return self._group.poll()

    def failure(self) -> str:
        """The tail of the first failed worker's output."""
        for i, proc in enumerate(self._group.processes):
            if proc.poll() not in (None, 0):
                text = (self.workdir / f"worker-{i}.log").read_text(errors="replace")
                return f"worker {i} exited with {proc.returncode}:\n{text[-3000:]}"
        return "no worker failed"

    def signal(self, signum: int) -> None:
        self._group.signal(signum)

    def stop(self, timeout: float = 10.0) -> None:
        self._group.stop(timeout)
        for log in self._logs:
            log.close()

    def tallies(self) -> Tally:
        parts = []
        for path in sorted(self.workdir.glob("tally-*.json")):
            parts.append(json.loads(path.read_text()))
        return Tally.merge(parts)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_backfill(
    job: ReplayJob,
    settings: Settings,
    *,
    on_progress: Callable[[dict[int, PartitionProgress]], None] | None = None,
    poll_s: float = 0.2,
    timeout_s: float | None = None,
    metrics_port: int = 0,
) -> Tally:
    """Run ``job`` to the end in ``job.processes`` local processes (child ``i`` serves its
    metrics on ``metrics_port + i``; 0: off) and replace the segments earlier runs of the same
    range wrote; returns the summed tally. Raises :class:`BackfillFailed`."""
    plan = job.plan
    root = settings.offline_dir
    if plan.messages == 0:
        return Tally()  # no events, no state: nothing to write
    with range_lock(root, plan), tempfile.TemporaryDirectory(prefix="freshet-backfill-") as tmp:
        earlier = previous_segments(root, plan)
        workdir = Path(tmp)
        started = time.monotonic()
        with Workers(job, workdir=workdir, metrics_port=metrics_port) as workers:

            def forward(signum: int, _frame: Any) -> None:
                # First signal: the workers stop reading and commit what they read. A second
                # one, forwarded too, ends them at once (and this run with their exit code).
                STOP.request(signal.Signals(signum).name)
                workers.signal(signum)

            previous_handlers = (
                {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
                if threading.current_thread() is threading.main_thread()
                else {}
            )
            try:
                while (code := workers.poll()) is None:
                    if on_progress is not None:
                        on_progress(read_progress(workdir))
                    if timeout_s is not None and time.monotonic() - started > timeout_s:
                        raise BackfillFailed(f"the replay did not finish in {timeout_s:g} s")
                    time.sleep(poll_s)
            finally:
                for s, handler in previous_handlers.items():
                    signal.signal(s, handler)
            if code != 0:
                raise BackfillFailed(workers.failure())
            if on_progress is not None:
                on_progress(read_progress(workdir))
            tally = workers.tallies()
        if STOP.requested or tally.stopped_by:
            # Part of the range (this process or a worker was signalled): keep the earlier
            # runs' segments (the reader dedupes the rows both hold); running the same
            # backfill again completes the range.
            tally.stopped_by = tally.stopped_by or STOP.reason
            return tally
        for path in earlier:
            path.unlink(missing_ok=True)
        return tally


def _marker(root: Path, plan: BackfillPlan, process_id: int) -> Path:
    return log_dir(root, plan.view, plan.version) / f".{writer_prefix(plan)}done-{process_id}"


def run_member(
    job: ReplayJob,
    settings: Settings,
    *,
    process_id: int,
    addresses: list[str],
    echo_progress: bool = True,
    members_timeout_s: float = _MEMBERS_TIMEOUT_S,
) -> Tally:
    """Run process ``process_id`` of a backfill cluster (``addresses``: every process, in id
    order); returns this process's tally. Process 0 also replaces the range's earlier
    segments once every process has committed its part (see the module docstring)."""
    from freshet.backfill.replay import run_replay

    plan = job.plan
    root = settings.offline_dir
    directory = log_dir(root, plan.view, plan.version)
    directory.mkdir(parents=True, exist_ok=True)
    if process_id != 0:
        tally = run_replay(
            job, settings, process_id=process_id, addresses=addresses, echo_progress=echo_progress
        )
        _marker(root, plan, process_id).write_text(json.dumps(tally.to_json()))
        return tally
    with range_lock(root, plan):
        earlier = previous_segments(root, plan)
        for stale in directory.glob(f".{writer_prefix(plan)}done-*"):
            stale.unlink(missing_ok=True)
        tally = run_replay(
            job, settings, process_id=0, addresses=addresses, echo_progress=echo_progress
        )
        if STOP.requested:
            tally.stopped_by = STOP.reason
            return tally
        outcomes = _wait_for_members(root, plan, len(addresses), members_timeout_s)
        stopped = [o.get("stopped_by") for o in outcomes if o.get("stopped_by")]
        for path in directory.glob(f".{writer_prefix(plan)}done-*"):
            path.unlink(missing_ok=True)
        if stopped:
            tally.stopped_by = stopped[0]
            return tally
        for path in earlier:
            path.unlink(missing_ok=True)
        log.info("replaced %d segment(s) of earlier runs of this range", len(earlier))
        return tally


def _wait_for_members(
    root: Path, plan: BackfillPlan, processes: int, timeout_s: float
) -> list[dict[str, Any]]:
    """The outcome markers of processes 1..N-1; raises :class:`BackfillFailed` when one is
    still missing after ``timeout_s`` (the earlier segments then stay)."""
    deadline = time.monotonic() + timeout_s
    paths = [_marker(root, plan, i) for i in range(1, processes)]
    while True:
        missing = [p for p in paths if not p.exists()]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise BackfillFailed(
                f"processes {', '.join(p.name.rsplit('-', 1)[1] for p in missing)} did not "
                f"report the end of their replay within {timeout_s:g} s; the segments of "
                "earlier runs of this range were kept (the reader dedupes their rows)"
            )
        time.sleep(0.2)
    return [json.loads(p.read_text()) for p in paths]
