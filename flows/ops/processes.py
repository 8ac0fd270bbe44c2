"""Local processes and ports: liveness and memory through pid files and Linux ``/proc``, who
listens on a port, a free port, starting a program detached from us and stopping it by pid,
and a group of child processes that stand or fall together (``freshet run -p``, backfill
workers).

    group = ProcessGroup([argv_0, argv_1], preexec_fn=die_with_parent)
    sys.exit(group.supervise())  # forwards SIGTERM/SIGINT; the first failure stops them all

Used by ``freshet.ops.devstack``, ``freshet run`` and the backfill; nothing here knows about
Kafka or Redis.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Literal

__all__ = [
    "LOOPBACK",
    "ProcessGroup",
    "cluster_addresses",
    "describe_port_holder",
    "die_with_parent",
    "free_port",
    "is_our_process",
    "listening_pid",
    "parse_listening_inodes",
    "port_is_open",
    "process_cmdline",
    "read_pid",
    "rss_bytes",
    "spawn_detached",
    "stop_pid",
    "tail_lines",
    "wait_until",
]

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1  # prctl(2), <linux/prctl.h>


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def process_cmdline(pid: int) -> list[str] | None:
    """The argv of a live (non-zombie) process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The state letter follows the parenthesised command name; zombies are already dead.
    if stat.rsplit(")", 1)[-1].split()[0] in {"Z", "X"} or not raw:
        return None
    return [part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")]


def is_our_process(pid: int | None, marker: str) -> bool:
    """True when ``pid`` is alive and its command line contains ``marker``."""
    if pid is None:
        return False
    argv = process_cmdline(pid)
    return argv is not None and any(marker in part for part in argv)


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def port_is_open(port: int, *, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def parse_listening_inodes(proc_net_tcp: str, port: int) -> set[str]:
    """Socket inodes listening on ``port`` in the text of /proc/net/tcp or /proc/net/tcp6."""
    inodes: set[str] = set()
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            inodes.add(inode)
    return inodes


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` (Linux /proc; None when unknown)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            inodes |= parse_listening_inodes(Path(table).read_text(), port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        return int(proc.name)
    return None


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a text file (empty when it does not exist)."""
    if count <= 0 or not path.is_file():
        return []
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block = 64 * 1024
        data = b""
        while size > 0 and data.count(b"\n") <= count:
            step = min(block, size)
            size -= step
            handle.seek(size)
            data = handle.read(step) + data
    return data.decode(errors="replace").splitlines()[-count:]


def wait_until(
    check: Callable[[], bool], *, timeout: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if not alive():
            return False
        time.sleep(0.2)
    return check()


def describe_port_holder(port: int) -> str:
    pid = listening_pid(port)
    if pid is None:
        return "an unknown process"
    argv = process_cmdline(pid) or ["?"]
    return f"pid {pid} ({shlex.join(argv)[:120]})"


def spawn_detached(argv: Sequence[str], out_file: Path) -> int:
    """Start ``argv`` in its own session, detached from us, and return its pid.

    A shell starts it in the background and exits at once, so no Popen object outlives this
    call (pytest would flag it as a leaked resource) and the process survives our exit.
    """
    script = f"exec {shlex.join(argv)} </dev/null >>{shlex.quote(str(out_file))} 2>&1 & echo $!"
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    return int(result.stdout.strip())


def stop_pid(pid: int, marker: str, *, timeout: float) -> Literal["term", "kill", "gone"]:
    """SIGTERM ``pid`` (if it is still ours), wait for it, SIGKILL after ``timeout``."""
    if not is_our_process(pid, marker):
        return "gone"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_until(lambda: not is_our_process(pid, marker), timeout=timeout):
        return "term"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not is_our_process(pid, marker), timeout=10.0)
    return "kill"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on now (the OS picks it; another process may take it later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def cluster_addresses(count: int) -> str:
    """``"127.0.0.1:port;…"`` with ``count`` free ports: a local Bytewax cluster's addresses."""
    return ";".join(f"{LOOPBACK}:{free_port()}" for _ in range(count))


def die_with_parent() -> None:
    """In a child process: get SIGKILL when the parent dies, so no child outlives it.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); where there is no such call (another system, a C
    library that cannot be loaded) it does nothing. Safe as a ``preexec_fn``.
    """
    with contextlib.suppress(OSError, AttributeError):
        # The symbols already loaded into this process: the C library, whatever its file name.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ProcessGroup:
    """Child processes started together that stand or fall together.

    Each child runs in its own process group, so a Ctrl-C in the terminal reaches it once,
    through :meth:`signal` (a second signal means "exit at once" to a freshet flow).
    ``poll()`` is None while any runs, else the first failing exit code (in child order) or 0;
    ``stop()`` ends what still runs (SIGTERM, then SIGKILL after ``timeout``). A context
    manager: leaving it stops what still runs.
    """

    def __init__(
        self,
        argvs: Sequence[Sequence[str]],
        *,
        env: dict[str, str] | None = None,
        stdouts: Sequence[IO[bytes]] | None = None,
        preexec_fn: Callable[[], Any] | None = None,
    ) -> None:
        self.processes = [
            subprocess.Popen(
                list(argv),
                env=env,
                stdout=stdouts[i] if stdouts is not None else None,
                stderr=subprocess.STDOUT if stdouts is not None else None,
                preexec_fn=preexec_fn,
                process_group=0,
            )
            for i, argv in enumerate(argvs)
        ]

    def poll(self) -> int | None:
        codes = [p.poll() for p in self.processes]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        return None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every child still running."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM what still runs, SIGKILL what is left after ``timeout`` seconds each; returns
        the first non-zero exit code in child order, else 0."""
        self.signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return next((c for c in (p.returncode for p in self.processes) if c), 0)

    def supervise(self, *, poll_s: float = 0.2) -> int:
        """Forward SIGTERM and SIGINT to the children until one fails or all exit 0, then stop
        the rest; returns the first non-zero exit code (0 when all succeeded). Main thread only
        (it installs signal handlers)."""

        def forward(signum: int, _frame: Any) -> None:
            self.signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        while self.poll() is None:
            time.sleep(poll_s)
        return self.stop()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
