"""Graceful stop of the long-running commands (``run``, ``backfill``, ``demo``) on SIGTERM/SIGINT.

Usage, first thing in a command, in the main thread::

    from freshet.stream.shutdown import STOP

    STOP.install(drain_timeout_s=30)
    ...                            # build and run the flow
    if STOP.requested:             # the flow ended because of a signal
        log.info("stopped on %s ...", STOP.reason)

What a signal does:

* **First signal**: :attr:`Stop.requested` turns true. The flow's Kafka sources end at their
  next poll, so Bytewax sees the end of its input: the batch in hand still goes through the
  engine to Redis and to the offline log, every sink commits (Parquet segments, queued Redis
  writes, dead letters), and with ``--recovery-dir`` Bytewax takes a final snapshot (the next
  start resumes exactly there). The engine does **not** flush future expiry boundaries on
  such an end (``freshet.stream.pipeline.ShardLogic.on_eof``): those rows belong to a later run. The
  command then returns normally and exits 0.
* **Second signal** during the drain: the process ends at once with ``128 + signal number``
  (130 for SIGINT, 143 for SIGTERM). Everything committed stays consistent: segments are
  renamed into place only when complete, the recovery store commits whole epochs, Redis writes
  are newer-wins. Rows not yet committed are replayed by the next start with
  ``--recovery-dir``; without it they are missing from the offline log (``freshet verify``
  reports them).
* **Drain bound**: if the drain is still running ``drain_timeout_s`` after the first signal
  (a Redis or disk that does not answer), the process logs that and exits with
  :data:`EXIT_DRAIN_TIMEOUT` (124), with the same consequences as a second signal.

Signals reach Python only between bytecodes, and Bytewax checks for them in its run loop, so
the handler runs on the main thread within milliseconds; it only sets flags (no I/O, no locks).
Installing the handler also keeps SIGINT from raising ``KeyboardInterrupt`` inside Bytewax's
Rust worker loop, which used to print a panic.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType

__all__ = ["EXIT_DRAIN_TIMEOUT", "STOP", "Stop", "block_stop_signals", "exit_code_of"]

log = logging.getLogger("freshet.stop")

EXIT_DRAIN_TIMEOUT = 124  # like coreutils' timeout(1)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def block_stop_signals() -> None:
    """``preexec_fn`` of a child that installs :data:`STOP` itself (``freshet run -p``, backfill
    workers): a signal forwarded before its handler exists waits, blocked, instead of killing
    it; :meth:`Stop.install` unblocks it (the mask is inherited across ``exec``)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


def exit_code_of(signum: int) -> int:
    """The exit code of a process ended at once by a second ``signum``: 128 + its number."""
    return 128 + signum


class Stop:
    """A process-wide stop request, set by a signal (or by :meth:`request`)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.requested_at: float | None = None  # time.monotonic() of the first request
        self._drain_timeout_s = 30.0

    @property
    def requested(self) -> bool:
        """True once a stop was asked for: sources end at their next poll."""
        return self._event.is_set()

    def request(self, reason: str) -> None:
        """Ask the flow to stop (what the first signal does)."""
        if self._event.is_set():
            return
        self.reason = reason
        self.requested_at = time.monotonic()
        self._event.set()
        threading.Thread(target=self._watchdog, name="freshet-drain-bound", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested (or ``timeout`` passes); returns :attr:`requested`."""
        return self._event.wait(timeout)

    def install(self, *, drain_timeout_s: float = 30.0) -> None:
        """Handle SIGTERM and SIGINT as described in the module docstring (main thread only)."""
        self._drain_timeout_s = drain_timeout_s
        for signum in _SIGNALS:
            signal.signal(signum, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # see block_stop_signals

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._event.is_set():
            # Second signal: no clean-up at all. os.write, not logging: a handler may run
            # while the logging lock is held by the interrupted code.
            os.write(2, f"freshet: second {name}: exiting at once\n".encode())
            os._exit(exit_code_of(signum))
        self.request(name)

    def _watchdog(self) -> None:
        bound = f"up to {self._drain_timeout_s:g} s" if self._drain_timeout_s > 0 else "unbounded"
        log.info(
            "%s: stopping: reading stops, the batch in hand is committed (%s; a second signal "
            "exits at once)",
            self.reason,
            bound,
        )
        if self._drain_timeout_s > 0:
            time.sleep(self._drain_timeout_s)
            log.error(
                "the drain did not finish within %g s of %s: exiting with %d; what was "
                "committed is consistent, the rest is replayed by the next start with "
                "--recovery-dir",
                self._drain_timeout_s,
                self.reason,
                EXIT_DRAIN_TIMEOUT,
            )
            logging.shutdown()
            os._exit(EXIT_DRAIN_TIMEOUT)


STOP = Stop()
