"""Run a backfill: spawn its replay processes (one Bytewax cluster), watch them, report their
progress, and replace the segments earlier runs of the same range wrote.

    from freshet.backfill.plan import ReplayJob, plan_backfill
    from freshet.backfill.runner import run_backfill

    tally = run_backfill(ReplayJob(plan=plan, workers=2), settings)

Each process runs :func:`freshet.backfill.replay.worker_main`. SIGTERM or SIGINT is forwarded
to them once: they stop reading and commit what they replayed (``freshet.stream.shutdown``); the
run's tally then says it is incomplete and the earlier segments stay.
"""

from __future__ import annotations

import json
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
    PartitionProgress,
    ReplayJob,
    Tally,
    previous_segments,
    range_lock,
    read_progress,
)
from freshet.ops.processes import ProcessGroup, cluster_addresses
from freshet.sinks.settings import Settings
from freshet.stream.shutdown import STOP, block_stop_signals

__all__ = ["Workers", "run_backfill"]


class Workers:
    """The worker processes of one backfill run (a Bytewax cluster), spawned and watched.

    ``poll()`` returns None while they run, else the first failing exit code or 0; ``stop()``
    ends them (SIGTERM, then SIGKILL). A context manager: leaving it stops what still runs.
    """

    def __init__(
        self, job: ReplayJob, *, workdir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        job_file = workdir / "job.json"
        job_file.write_text(json.dumps(job.to_json()))
        addresses = cluster_addresses(job.workers)
        entry = "from freshet.backfill.replay import worker_main; worker_main()"
        self._logs = [open(workdir / f"worker-{i}.log", "wb") for i in range(job.workers)]  # noqa: SIM115 - closed in stop()
        self._group = ProcessGroup(
            [
                [sys.executable, "-c", entry, str(job_file), str(workdir), str(i), addresses]
                for i in range(job.workers)
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
) -> Tally:
    """Run ``job`` to the end in ``job.workers`` processes and replace the segments earlier
    runs of the same range wrote; returns the summed tally. Raises :class:`BackfillFailed`."""
    plan = job.plan
    root = settings.offline_dir
    if plan.messages == 0:
        return Tally()  # no events, no state: nothing to write
    with range_lock(root, plan), tempfile.TemporaryDirectory(prefix="freshet-backfill-") as tmp:
        earlier = previous_segments(root, plan)
        workdir = Path(tmp)
        started = time.monotonic()
        with Workers(job, workdir=workdir) as workers:

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
