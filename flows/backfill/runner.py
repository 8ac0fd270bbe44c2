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
import socket
import subprocess
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
from freshet.sinks.settings import Settings
from freshet.stream.shutdown import STOP, block_stop_signals

__all__ = ["Workers", "run_backfill"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
        addresses = ";".join(f"127.0.0.1:{_free_port()}" for _ in range(job.workers))
        entry = "from freshet.backfill.replay import worker_main; worker_main()"
        self._logs = [open(workdir / f"worker-{i}.log", "wb") for i in range(job.workers)]  # noqa: SIM115 - closed in stop()
        self._procs = [
            subprocess.Popen(
                [sys.executable, "-c", entry, str(job_file), str(workdir), str(i), addresses],
                env=dict(os.environ if env is None else env),
                stdout=self._logs[i],
                stderr=subprocess.STDOUT,
                # Their own process group: a Ctrl-C in the terminal reaches them once, through
                # the parent's handler (a second signal means "exit at once").
                process_group=0,
                preexec_fn=block_stop_signals,
            )
            for i in range(job.workers)
        ]

    def poll(self) -> int | None:
        codes = [p.poll() for p in self._procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        return None

    def failure(self) -> str:
        """The tail of the first failed worker's output."""
        for i, proc in enumerate(self._procs):
            if proc.poll() not in (None, 0):
                text = (self.workdir / f"worker-{i}.log").read_text(errors="replace")
                return f"worker {i} exited with {proc.returncode}:\n{text[-3000:]}"
        return "no worker failed"

    def signal(self, signum: int) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> None:
        self.signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
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
